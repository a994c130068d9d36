"""The batch runtime's own pieces that need no broker."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from bus.agents.runtime import key_hash
from bus.schemas.uscc import make_uscc
from bus.settings import Settings


def test_keyed_records_go_to_the_partition_any_kafka_producer_would_choose() -> None:
    # The runtime builds record batches itself; a record keyed by USCC must land where the
    # gateway's, a connector's or a Java producer's copy would (murmur2, Kafka's default).
    rng = random.Random(5)
    default = DefaultPartitioner()
    for _ in range(500):
        key = make_uscc(rng=rng).encode()
        for n in (1, 3, 6, 12):
            parts = list(range(n))
            assert parts[key_hash(key) % n] == default(key, parts, parts)
    assert key_hash(b"\xff" * 40) >= 0


def test_correlate_decides_the_same_with_the_events_ingest_handed_over() -> None:
    # In a worker running both agents, correlate takes the events ingest decoded instead of
    # decoding their bytes again: every one is taken, and the outputs are what decoding gives.
    import asyncio
    import tempfile
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

    from bus.agents.app import Context
    from bus.agents.correlate import CorrelateAgent
    from bus.agents.ingest import IngestAgent
    from bus.dev.samples import penalties, registrations
    from bus.domain.departments import Directory
    from bus.streaming.codec import EventCodec, Recent

    def record(topic: str, i: int, key: bytes, value: bytes, headers: list) -> ConsumerRecord:  # type: ignore[type-arg]
        # one log time for both runs: case steps carry it
        return ConsumerRecord(topic, 0, i, 1_790_000_000_000 + i, 0, key, value, None,
                              len(key), len(value), headers)  # fmt: skip

    events = [*registrations(seed=2, enterprises=20), *penalties(200, seed=2, enterprises=20)]

    async def run(recent: Recent) -> tuple[list[tuple[str, bytes | None]], Context]:
        s = Settings(app_id="t", topic_prefix="t", data_dir=Path(tempfile.mkdtemp()))
        ctx = Context(s, EventCodec(), Directory.load(None), recent=recent)
        ingest, correlate = IngestAgent(ctx), CorrelateAgent(ctx)
        raw = [record("t.ingress", i, e.subject.encode(), ctx.codec.encode(e), e.kafka_headers())
               for i, e in enumerate(events)]  # fmt: skip
        canonical = [record(o.topic, i, o.key or b"", o.value or b"", o.headers)
                     for i, o in enumerate(await ingest.process(raw))]  # fmt: skip
        outs = await correlate.process(canonical)
        return [(o.topic, o.value) for o in outs if ".task" not in o.topic], ctx

    handed, ctx = asyncio.run(run(Recent(1000)))
    decoded, _ = asyncio.run(run(Recent(0)))
    assert len(ctx.recent) == 0  # every event handed over was taken
    assert len(handed) > len(events)  # inbox deliveries, at least one per event
    assert handed == decoded


def test_every_group_gives_a_worker_the_same_partition_numbers() -> None:
    # The broker makes member ids up per group, so plain range assignment can give a worker
    # ingress 0-2 but canonical 3-5. Ordered by the worker named in the member metadata,
    # both groups agree whatever the member ids.
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    from bus.agents.runtime import WorkerRangeAssignor

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(6))

    def owned(members: dict[str, tuple[bytes, list[str]]]) -> dict[bytes, list[int]]:
        meta = {m: ConsumerProtocolMemberMetadata(0, topics, worker)
                for m, (worker, topics) in members.items()}  # fmt: skip
        got = WorkerRangeAssignor.assign(Cluster(), meta)  # type: ignore[arg-type]
        return {
            members[m][0]: sorted(p for _, ps in a.assignment for p in ps) for m, a in got.items()
        }

    ingest = owned({"c-9": (b"worker-a", ["ingress"]), "c-1": (b"worker-b", ["ingress"])})
    correlate = owned({"c-2": (b"worker-a", ["events.penalty", "events.task"]),
                       "c-7": (b"worker-b", ["events.penalty", "events.task"])})  # fmt: skip
    assert ingest == {b"worker-a": [0, 1, 2], b"worker-b": [3, 4, 5]}
    assert correlate == {b"worker-a": [0, 0, 1, 1, 2, 2], b"worker-b": [3, 3, 4, 4, 5, 5]}
    meta = WorkerRangeAssignor.metadata(["ingress"])
    assert meta.user_data == WorkerRangeAssignor.worker  # this process names itself


def test_a_tick_pops_what_is_due_and_never_walks_every_record() -> None:
    # Deadlines are kept in an index by due time: a tick costs what is due, not the city.
    import asyncio
    import json
    import tempfile
    import time
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

    from bus.agents.app import Context
    from bus.agents.cases import CaseEngine, MemoryCaseStore, tick_step
    from bus.agents.correlate import CorrelateAgent
    from bus.agents.ingest import IngestAgent
    from bus.dev.samples import penalties, registrations
    from bus.domain.certificates import Signer
    from bus.domain.departments import Directory
    from bus.streaming.codec import EventCodec, Recent

    def record(topic: str, i: int, key: bytes, value: bytes, headers: list) -> ConsumerRecord:  # type: ignore[type-arg]
        return ConsumerRecord(topic, 0, i, int(time.time() * 1000), 0, key, value, None,
                              len(key), len(value), headers)  # fmt: skip

    events = [*registrations(seed=4, enterprises=30), *penalties(300, seed=4, enterprises=300)]
    month = 40 * 86_400.0  # every deadline of a registration's tasks has passed

    def kinds(outs: list) -> list[str]:  # type: ignore[type-arg]
        return [dict(o.headers).get("event_type", b"").decode() for o in outs]

    async def run() -> tuple[list[str], list[str], int, int, int]:
        s = Settings(app_id="t", topic_prefix="t", data_dir=Path(tempfile.mkdtemp()))
        ctx = Context(s, EventCodec(), Directory.load(None), recent=Recent(0))
        ingest, correlate = IngestAgent(ctx), CorrelateAgent(ctx)
        engine, store = CaseEngine(ctx, Signer.generate("k")), MemoryCaseStore(s.partitions)
        raw = [record("t.ingress", i, e.subject.encode(), ctx.codec.encode(e), e.kafka_headers())
               for i, e in enumerate(events)]  # fmt: skip
        canonical = [record(o.topic, i, o.key or b"", o.value or b"", o.headers)
                     for i, o in enumerate(await ingest.process(raw))]  # fmt: skip
        steps = [o for o in await correlate.process(canonical) if o.topic == "t.cases"]
        created: list[str] = []
        for o in steps:
            created += kinds(engine.handle(key_hash(o.key or b"") % s.partitions, o.value or b"",
                                           store))  # fmt: skip
        walked = 0
        items = store.items

        def counted(partitions: object) -> object:
            nonlocal walked
            for item in items(partitions):  # type: ignore[arg-type]
                walked += 1
                yield item

        store.items = counted  # type: ignore[method-assign,assignment]
        tick = tick_step(datetime.now(UTC) + timedelta(seconds=month))
        first = [k for p in range(s.partitions) for k in kinds(engine.handle(p, tick, store))]
        second = [k for p in range(s.partitions) for k in kinds(engine.handle(p, tick, store))]
        assert json.loads(tick)["kind"] == "tick"
        return [k for k in created if k == "task.created"], first, len(second), walked, len(steps)

    created, first, again, walked, steps = asyncio.run(run())
    assert steps == 30  # one case step per registration; penalties on unlicensed firms: none
    assert len(created) >= 30 * 4  # a registration opens a task for each office
    assert first.count("task.overdue") == len(created)  # each passed deadline, once
    assert first.count("task.escalated") == len(created)  # the matter escalates late tasks
    assert again == 0  # nothing twice
    assert walked == 0  # the index was built as cases opened; no state was walked


def _cases_of(enterprises: int) -> tuple[Any, Any, Any, int]:
    """A context, a store holding the cases of ``enterprises`` registrations (each opens
    tasks), and the partition count: cases opened through ingest, correlate and the engine."""
    import asyncio
    import tempfile
    import time
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

    from bus.agents.app import Context
    from bus.agents.cases import CaseEngine, MemoryCaseStore
    from bus.agents.correlate import CorrelateAgent
    from bus.agents.ingest import IngestAgent
    from bus.dev.samples import registrations
    from bus.domain.certificates import Signer
    from bus.domain.departments import Directory
    from bus.streaming.codec import EventCodec, Recent

    def record(topic: str, i: int, key: bytes, value: bytes, headers: list) -> ConsumerRecord:  # type: ignore[type-arg]
        return ConsumerRecord(topic, 0, i, int(time.time() * 1000), 0, key, value, None,
                              len(key), len(value), headers)  # fmt: skip

    async def run() -> tuple[Any, Any, Any, int]:
        s = Settings(app_id="t", topic_prefix="t", data_dir=Path(tempfile.mkdtemp()))
        ctx = Context(s, EventCodec(), Directory.load(None), recent=Recent(0))
        ingest, correlate = IngestAgent(ctx), CorrelateAgent(ctx)
        engine, store = CaseEngine(ctx, Signer.generate("k")), MemoryCaseStore(s.partitions)
        events = registrations(seed=9, enterprises=enterprises)
        raw = [record("t.ingress", i, e.subject.encode(), ctx.codec.encode(e), e.kafka_headers())
               for i, e in enumerate(events)]  # fmt: skip
        canonical = [record(o.topic, i, o.key or b"", o.value or b"", o.headers)
                     for i, o in enumerate(await ingest.process(raw))]  # fmt: skip
        for o in await correlate.process(canonical):
            if o.topic == "t.cases":
                engine.handle(key_hash(o.key or b"") % s.partitions, o.value or b"", store)
        return ctx, engine, store, s.partitions

    return asyncio.run(run())


def test_a_worker_indexes_every_partition_in_one_pass_that_lets_the_loop_run() -> None:
    # A worker taking partitions over indexes their deadlines from the table. One pass for
    # all of them, yielding to the event loop as it goes: a pass per partition, blocking,
    # took a city's worker seconds at every assignment. A partition given away meanwhile
    # is left out, and indexed again (from the table) if it comes back.
    import asyncio
    import copy

    from bus.agents.cases import CaseEngine, MemoryCaseStore, tick_step
    from bus.agents.cases import engine as engine_module
    from bus.domain.certificates import Signer

    ctx, built, store, partitions = _cases_of(40)
    tick = tick_step(datetime.now(UTC) + timedelta(days=40))  # every deadline has passed

    def fired(engine: CaseEngine, store: MemoryCaseStore) -> list[tuple[int, str]]:
        return sorted((p, str(o.key)) for p in range(partitions)
                      for o in engine.handle(p, tick, store))  # fmt: skip

    passes: list[set[int]] = []

    class Counted(MemoryCaseStore):
        def items(self, partitions: Any) -> Any:
            passes.append(set(partitions))
            return super().items(partitions)

    def copied() -> Counted:
        other = Counted(partitions)
        other.data = copy.deepcopy(store.data)
        return other

    async def taken_over(give_away: int | None) -> tuple[CaseEngine, Counted, int]:
        engine, fresh, turns = CaseEngine(ctx, Signer.generate("k")), copied(), 0

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                if turns == 2 and give_away is not None:
                    engine.forget([give_away])  # a revocation while the index is built
                await asyncio.sleep(0)

        beside = asyncio.create_task(other_work())
        await engine.index(range(partitions), fresh)
        beside.cancel()
        return engine, fresh, turns

    engine_module.INDEX_YIELD_EVERY, every = 5, engine_module.INDEX_YIELD_EVERY
    try:
        engine, fresh, turns = asyncio.run(taken_over(None))
        assert passes == [set(range(partitions))]  # one pass, every partition
        assert turns >= 40 // 5 - 1  # the loop ran while the states were read
        expected = fired(built, copied())
        assert fired(engine, fresh) == expected  # the same deadlines fire
        assert len(passes) == 1  # the ticks walked nothing
        passes.clear()
        engine, fresh, _ = asyncio.run(taken_over(give_away=1))
        fired(engine, fresh)
        assert passes == [set(range(partitions)), {1}]  # the one given away, read again

        class Unreadable(Counted):
            def items(self, partitions: Any) -> Any:
                raise OSError("the table cannot be read")

        engine = CaseEngine(ctx, Signer.generate("k"))
        asyncio.run(engine.index(range(partitions), Unreadable(partitions)))  # logged, not raised
        assert fired(engine, copied()) == expected  # each partition indexed by its own step
    finally:
        engine_module.INDEX_YIELD_EVERY = every


def test_a_request_logged_with_its_firms_registration_and_penalty_is_decided_on_both() -> None:
    # A restarted worker's ingest can write a firm's registration, penalty and certificate
    # request in one transaction, all in one millisecond. Correlate must fold the facts first:
    # taken first, the request would wait for the registration and be handed on with the
    # record as of the registration, before the penalty: a clean certificate for a penalised
    # firm.
    import asyncio
    import json
    import random
    import tempfile
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord, TopicPartition

    from bus.agents.app import Context
    from bus.agents.cases import step_event_id
    from bus.agents.correlate import CorrelateAgent
    from bus.agents.runtime import _merged
    from bus.dev.samples import enterprise, penalty, registered
    from bus.domain.departments import Directory
    from bus.schemas.events import model_for
    from bus.streaming.codec import EventCodec

    rng = random.Random(7)
    firm = enterprise(rng)
    request = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": "2025-01-01", "period_end": "2026-12-31", "purpose": "ipo",
                 "requested_by": "ks.finance", "applicant": "张伟"},
    )  # fmt: skip
    events = {"enterprise": registered(firm, rng), "penalty": penalty(firm, rng),
              "certificate": request}  # fmt: skip

    async def run() -> dict:  # type: ignore[type-arg]
        s = Settings(app_id="t", topic_prefix="t", data_dir=Path(tempfile.mkdtemp()))
        ctx = Context(s, EventCodec(), Directory.load(None))
        correlate = CorrelateAgent(ctx)
        fetched = {}
        for family, e in events.items():
            value = ctx.codec.encode(e)
            r = ConsumerRecord(f"t.events.{family}", 0, 0, 1_790_000_000_000, 0,
                               e.subject.encode(), value, None, 0, len(value),
                               e.kafka_headers())  # fmt: skip
            fetched[TopicPartition(r.topic, 0)] = [r]
        records = _merged(fetched, list(fetched), correlate.topic_rank)
        outs = await correlate.process(records)
        (step,) = [o for o in outs if o.topic == "t.cases"
                   and step_event_id(o.value or b"") == str(request.event_id)]  # fmt: skip
        return json.loads(step.value or b"")["record"]  # type: ignore[no-any-return]

    record = asyncio.run(run())
    assert record["status"] != "unknown"
    assert len(record["penalties"]) == 1  # the penalty logged with the request is on it
