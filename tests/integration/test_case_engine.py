"""The case engine's guarantee on Apache Kafka: a partition's new owner fences the old one.

Decisions are committed in one transaction per partition of ``cases`` (``FencedWriter``):
a worker that takes a partition over starts that partition's transactional producer, so the
previous owner, frozen and woken (a zombie), can neither commit a decision nor write state.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from contextlib import aclosing
from datetime import date
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced

from bus.agents.cases import FencedWriter, step_event_id
from bus.agents.out import Out
from bus.dev.brokers import free_port
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.settings import Settings
from bus.streaming.client import kafka_consumer, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.topics import CASES, CASES_TABLE, cases_changelog
from tests.conftest import TestBroker
from tests.integration.test_correlate import (
    CERTIFICATE,
    _deadletters,
    answer,
    outputs,
    publish,
    request,
)
from tests.integration.test_faust_metrics import settled, wait_for
from tests.integration.test_metrics import value

pytestmark = pytest.mark.integration
codec = EventCodec()


async def _read(settings: Settings, topic: str) -> list[bytes]:
    """Every value of a topic, as any reader of the bus sees it (committed records only)."""
    reading = read_topic(settings, topic, to_end=True, max_seconds=30)
    async with aclosing(reading) as records:
        return [r.value or b"" async for r in records]


def test_a_partitions_new_owner_fences_the_old_one_whose_decision_is_never_committed(
    settings: Settings,
) -> None:
    topic = settings.topic("events.certificate")
    changelog = settings.topic("fence-changelog")

    async def go() -> tuple[type[Exception] | None, list[bytes], list[bytes]]:
        from bus.streaming.topics import TopicSpec, create_topics

        await create_topics(
            settings, (TopicSpec("fence-changelog", "state", "test", partitions=1),)
        )
        old, new = FencedWriter(settings, changelog), FencedWriter(settings, changelog)
        try:
            await old.claim([0])
            await old.write(0, [Out(topic, b"before", key=b"k", partition=0)],
                            {"a": b'{"v":"before"}'})  # fmt: skip
            await new.claim([0])  # the partition moved: its producer fences the old one's
            fenced: type[Exception] | None = None
            try:
                await old.write(0, [Out(topic, b"zombie", key=b"k", partition=0)],
                                {"a": b'{"v":"zombie"}'})  # fmt: skip
            except (ProducerFenced, InvalidProducerEpoch) as exc:
                fenced = type(exc)
            await new.write(0, [Out(topic, b"after", key=b"k", partition=0)],
                            {"a": b'{"v":"after"}'})  # fmt: skip
            return (
                fenced,
                await _read(settings, topic),
                await _read(settings, changelog),
            )
        finally:
            await old.stop()
            await new.stop()

    fenced, decisions, states = asyncio.run(go())
    assert fenced is not None, "the old owner's write went through"
    assert decisions == [b"before", b"after"]  # the zombie's decision was never committed
    assert b"zombie" not in b"".join(states)  # nor its state
    assert len(states) == 2


def test_a_partition_given_away_with_a_write_in_hand_lets_the_write_end_first(
    settings: Settings,
) -> None:
    # aiokafka's commit waits for good when its producer is stopped under it: a revocation
    # that stopped the producer of a partition whose write was in hand left that partition's
    # lock held, and the case engine waited on it for good (seen in a take-over at a city's
    # size, 2026-12-06). The revocation now lets the write in hand end first.
    topic = settings.topic("events.certificate")
    changelog = settings.topic("fence-changelog")

    async def go() -> tuple[dict[str, int], list[bytes], bool]:
        from bus.streaming.topics import TopicSpec, create_topics

        await create_topics(
            settings, (TopicSpec("fence-changelog", "state", "test", partitions=1),)
        )
        writer = FencedWriter(settings, changelog)
        try:
            await writer.claim([0])
            out = Out(topic, b"in hand", key=b"k", partition=0)
            writing = asyncio.ensure_future(writer.write(0, [out], {"a": b'{"v":1}'}))
            await asyncio.sleep(0)  # the write has its partition's lock and is under way
            assert writer._writing[0].locked()
            await writer.release([0])
            saved = await asyncio.wait_for(writing, 30)
            return saved, await _read(settings, topic), writer._writing[0].locked()
        finally:
            await writer.stop()

    saved, decisions, locked = asyncio.run(go())
    assert decisions == [b"in hand"]  # committed before its producer stopped
    assert saved == {"a": 0}
    assert not locked


@pytest.mark.slow("two workers, one frozen past its session, the other taking its partitions over")
@pytest.mark.timeout(600)
def test_a_frozen_worker_woken_after_its_partitions_moved_commits_no_decision(
    settings: Settings, tmp_path: Path
) -> None:
    # Two workers share the case engine's partitions. One is frozen (SIGSTOP) past its
    # session while requests keep coming, the other takes every partition over, then the
    # frozen one is woken: whatever it had in hand it may decide again, but it cannot
    # commit it. Every request ends with one certificate, and no certificate id has two
    # contents, read as any consumer reads (committed records).
    quick = {"session_timeout": 6.0, "heartbeat_interval": 1.0, "rebalance_timeout": 10.0}
    s = settings.model_copy(update=quick)
    rng = random.Random(131)
    firms = [enterprise(rng) for _ in range(40)]
    publish(s, [registered(f, rng) for f in firms])
    a = WorkerProcess(s.model_copy(update={"data_dir": s.data_dir / "a"}), tmp_path / "a.log")
    b = WorkerProcess(s.model_copy(update={"data_dir": s.data_dir / "b"}), tmp_path / "b.log")
    requests = [request(f) for f in firms for _ in range(3)]
    rng.shuffle(requests)
    with a, b:
        publish(s, requests[:40])
        a.pause()  # frozen with what it fetched in hand
        try:
            publish(s, requests[40:80])
            deadline = time.monotonic() + 120
            while "is another worker's now" not in a.log() and time.monotonic() < deadline:
                if b.log().count("Setting newly assigned partitions") >= 2:
                    break  # the survivor was given the frozen worker's partitions
                time.sleep(0.5)
        finally:
            a.resume()
        publish(s, requests[80:])
        expected = {str(r.event_id) for r in requests}

        async def issued() -> dict[str, set[str]]:
            by_request: dict[str, set[str]] = {}
            topic = s.topic("events.certificate")
            async with aclosing(read_topic(s, topic, idle=3, max_seconds=60)) as records:
                async for r in records:
                    if r.headers.get("event_type") != "certificate.issued":
                        continue
                    cert = codec.decode(r.value or b"")
                    digest = hashlib.sha256(r.value or b"").hexdigest()
                    by_request.setdefault(cert.payload.request_event_id, set()).add(
                        f"{cert.event_id}/{digest}"
                    )
            return by_request

        deadline = time.monotonic() + 180
        while set(found := asyncio.run(issued())) != expected:
            assert time.monotonic() < deadline, f"{len(expected - set(found))} never decided"
        assert a.running  # the woken worker stepped aside; it did not crash
        assert b.running
    assert all(len(versions) == 1 for versions in found.values()), {
        k: v for k, v in found.items() if len(v) > 1
    }


async def _where(settings: Settings, ids: set[str]) -> list[str]:
    """Where each event of ``ids`` is on ``cases``, beside the engine's committed offset."""
    from bench.scaleout import committed

    found: list[str] = []
    topic = settings.topic(CASES.name)
    async with aclosing(read_topic(settings, topic, to_end=True, max_seconds=30)) as records:
        async for r in records:
            if r.value and (eid := step_event_id(r.value)) in ids:
                found.append(f"{eid[:8]} at cases/{r.partition}@{r.offset}")
    done = await committed(settings, settings.app_id, topic)
    return [*found, f"not on cases: {len(ids) - len(found)}", f"the group committed {done}"]


async def _registrations(settings: Settings, usccs: set[str]) -> str:
    """Where the registrations of ``usccs`` are, beside what correlate has committed there."""
    from bench.scaleout import committed

    topic = settings.topic("events.enterprise")
    found: list[str] = []
    async with aclosing(read_topic(settings, topic, to_end=True, max_seconds=30)) as records:
        async for r in records:
            if (r.key or b"").decode() in usccs:
                found.append(f"{r.headers.get('event_type')} at {r.partition}@{r.offset}")
    done = await committed(settings, f"{settings.app_id}.correlate", topic)
    return f"on events.enterprise: {found}; correlate committed {done}"


async def _folded(settings: Settings, counts: dict[str, int]) -> None:
    """Wait until ``counts`` records are on each canonical topic and correlate committed past."""
    from bench.scaleout import committed

    deadline = time.monotonic() + 300
    for family, n in counts.items():
        topic = settings.topic(family)
        while True:
            ends: dict[int, int] = {}
            found = 0
            async with aclosing(read_topic(settings, topic, to_end=True, max_seconds=30)) as rs:
                async for r in rs:
                    ends[r.partition] = r.offset + 1
                    found += 1
            done = await committed(settings, f"{settings.app_id}.correlate", topic)
            if found >= n and all(done.get(p, 0) >= end for p, end in ends.items()):
                break
            assert time.monotonic() < deadline, f"{family}: {found} of {n}, {ends}, {done}"
            await asyncio.sleep(0.5)


def _certificates(settings: Settings) -> dict[str, set[str]]:
    """Request id -> every (certificate id / SHA-256 of its bytes) on the canonical topic."""

    async def go() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        topic = settings.topic("events.certificate")
        async with aclosing(read_topic(settings, topic, to_end=True, max_seconds=60)) as records:
            async for r in records:
                if r.headers.get("event_type") == "certificate.issued":
                    cert = codec.decode(r.value or b"")
                    digest = hashlib.sha256(r.value or b"").hexdigest()
                    found.setdefault(cert.payload.request_event_id, set()).add(
                        f"{cert.event_id}/{digest}"
                    )
        return found

    return asyncio.run(go())


@pytest.mark.slow("a worker is killed with SIGKILL three times while review cases are answered")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_kill_9_again_and_again_leaves_one_decision_per_case(
    settings: Settings, broker: TestBroker, tmp_path: Path, store: str
) -> None:
    # Every firm has a penalty, so every request opens a review for the bureau. The worker is
    # killed right after the requests, and after each of the first two thirds of the answers:
    # between triggers and their decisions. At the end every
    # request has one certificate with one content, and no answer was refused for want of
    # the task it answered (state lost or restored stale). With the table on disk, each
    # restart starts from the files the killed worker left.
    settings = settings.model_copy(update={"table_store": store})
    rng = random.Random(141)
    firms = [enterprise(rng) for _ in range(24)]
    publish(settings, [registered(f, rng) for f in firms])
    publish(settings, [penalty(f, rng, decided_on=date(2026, 4, 1)) for f in firms])
    requests = [request(f) for f in firms]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    # Every record holds its penalty before any request: events of different departments have
    # no order between them, and a request re-ingested ahead of its firm's registration and
    # penalty after a kill is decided on the record the log gives it then (a clean one).
    asyncio.run(_folded(settings, {"events.enterprise": len(firms), "events.penalty": len(firms)}))
    kills = 0

    def kill_and_restart() -> None:
        nonlocal kills
        worker.kill()  # SIGKILL: what was just published is in flight, not yet decided
        kills += 1
        broker.forget_dead_members()
        worker.start()

    answered: dict[str, str] = {}  # enterprise -> its answer's event id
    try:
        publish(settings, requests)
        kill_and_restart()
        tasks = outputs(settings, "task", "task.created", len(firms), CERTIFICATE)
        deadline = time.monotonic() + 300
        while len(tasks) < len(firms) and time.monotonic() < deadline:
            tasks = outputs(settings, "task", "task.created", len(firms), CERTIFICATE)
        if len(tasks) < len(firms):
            unopened = {f.uscc for f in firms} - {t.subject for t in tasks}
            why = asyncio.run(_registrations(settings, unopened))
            parked = [u for u in unopened if f"waits for the registration of {u}" in worker.log()]
            steps = asyncio.run(_where(settings, {str(r.event_id) for r in requests
                                                  if r.subject in unopened}))  # fmt: skip
            pytest.fail(f"{len(tasks)} of {len(firms)} reviews opened; of the others "
                        f"{len(parked)} were parked as unregistered; {why}; their requests' "
                        f"steps: {steps}")  # fmt: skip
        for i, chunk in enumerate((tasks[:8], tasks[8:16], tasks[16:])):
            answers = [answer(t, "task.completed", t.payload.assignee, outcome="confirmed")
                       for t in chunk]  # fmt: skip
            answered.update({a.subject: str(a.event_id) for a in answers})
            publish(settings, answers)
            if i < 2:
                kill_and_restart()
        deadline = time.monotonic() + 300
        while len(found := _certificates(settings)) < len(requests) and time.monotonic() < deadline:
            time.sleep(1)
        letters = asyncio.run(_deadletters(settings))
        if len(found) < len(requests):
            missing = {answered[r.subject] for r in requests if str(r.event_id) not in found}
            where = asyncio.run(_where(settings, missing))
            reasons = [d.headers.get("bus.reason") for d in letters]
            pytest.fail(f"{len(found)} of {len(requests)} decided; the answers missing: {where}; "
                        f"dead letters {reasons}")  # fmt: skip
    finally:
        worker.stop()
    assert kills == 3
    assert set(found) == {str(r.event_id) for r in requests}
    assert all(len(v) == 1 for v in found.values()), {k: v for k, v in found.items() if len(v) > 1}
    assert [d.headers.get("bus.reason") for d in letters] == []


def _persisted(settings: Settings) -> dict[int, int]:
    """The changelog offset each partition's RocksDB database says it holds, read from disk."""
    from rocksdict import AccessType, Options, Rdict

    found: dict[int, int] = {}
    for path in settings.data_dir.rglob(f"{CASES_TABLE}-*.db"):
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            if (raw := db.get(b"__faust\0offset__")) is not None:
                found[int(path.stem.rsplit("-", 1)[1])] = int(raw)
        finally:
            db.close()
    return found


def _changelog_ends(settings: Settings) -> dict[int, int]:
    async def go() -> dict[int, int]:
        topic = cases_changelog(settings)
        consumer = kafka_consumer(settings)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
            return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(go())


@pytest.mark.slow("a worker with its case table on disk, stopped, killed with SIGKILL, restarted")
@pytest.mark.timeout(600)
def test_a_table_on_disk_comes_back_from_its_files_and_reads_only_the_changelog_after_them(
    settings: Settings, broker: TestBroker, tmp_path: Path
) -> None:
    # Twelve firms with a penalty each: every request opens a review, which the table holds
    # until it is answered. The worker is stopped, then killed, with reviews open; each time
    # the restart rebuilds the table from its files and the changelog written after them.
    s = settings.model_copy(update={"table_store": "rocksdb", "metrics_port": free_port()})
    rng = random.Random(152)
    firms = [enterprise(rng) for _ in range(12)]
    publish(s, [registered(f, rng) for f in firms])
    publish(s, [penalty(f, rng, decided_on=date(2026, 4, 1)) for f in firms])
    worker = WorkerProcess(s, tmp_path / "worker.log").start()

    def recovered() -> float:
        samples = wait_for(s.metrics_port, settled, "the worker's recovery", worker.log)
        return value(samples, "faust_table_recovered_records_total", table=CASES_TABLE)

    try:
        asyncio.run(_folded(s, {"events.enterprise": len(firms), "events.penalty": len(firms)}))
        requests = [request(f) for f in firms]
        publish(s, requests)
        tasks = outputs(s, "task", "task.created", len(firms), CERTIFICATE, wait=120)
        assert len(tasks) == len(firms)
        worker.stop()
        # Each database remembers the offset of the last changelog record it holds: all of them.
        ends = _changelog_ends(s)
        assert sum(ends.values()) >= len(firms)
        assert _persisted(s) == {p: end - 1 for p, end in ends.items() if end}
        worker.start()
        assert recovered() == 0  # the memory store would read all of ends back

        # Half the reviews answered, then SIGKILL: what the files lack, the changelog has.
        answers = [answer(t, "task.completed", t.payload.assignee, outcome="confirmed")
                   for t in tasks]  # fmt: skip
        publish(s, answers[:6])
        deadline = time.monotonic() + 120
        while len(_certificates(s)) < 6 and time.monotonic() < deadline:
            time.sleep(0.5)
        worker.kill()
        broker.forget_dead_members()
        ends = _changelog_ends(s)
        worker.start()
        assert recovered() < sum(ends.values())
        # The other half is answered against the state the restart rebuilt: one certificate
        # per request, and no answer refused for want of its task.
        publish(s, answers[6:])
        deadline = time.monotonic() + 120
        while len(found := _certificates(s)) < len(firms) and time.monotonic() < deadline:
            time.sleep(0.5)
        letters = asyncio.run(_deadletters(s))
    finally:
        worker.stop()
    assert set(found) == {str(r.event_id) for r in requests}
    assert all(len(v) == 1 for v in found.values()), found
    assert [d.headers.get("bus.reason") for d in letters] == []
