"""Scale-out: several workers split the partitions, and hand them over when one stops or dies.

Runs real ``bus worker`` processes on the session's broker (Apache Kafka by default), or on
an embedded Tansu when the session runs noida, whose groups lock when a member dies
(docs/broker.md). The hand-over scenario and its checks live in ``bench/scaleout.py``, which
repeats them to give a rate; here each runs once.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from bench.scaleout import (
    AGENTS,
    Reader,
    agent_topics,
    group_settings,
    handover,
    owned,
    start_all,
    stop_all,
    wait_split,
    workers,
)
from bus.agents.app import Context
from bus.agents.out import Out
from bus.agents.runtime import BatchAgent, Record, and_since
from bus.agents.stores import SeenStore
from bus.dev.brokers import EmbeddedBroker
from bus.dev.samples import penalties
from bus.domain.departments import Directory
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import kafka_consumer, kafka_producer
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics
from tests.conftest import TestBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(
        "worker processes started, killed and frozen under load, with rebalances waited out"
    ),
]


@pytest.fixture(scope="module")
def group_broker(broker: TestBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker whose consumer groups rebalance: the session's, or Tansu beside noida."""
    if broker.groups_rebalance:
        yield broker.bootstrap
        return
    embedded = EmbeddedBroker("tansu", data_dir=tmp_path_factory.mktemp("tansu"))
    embedded.start()
    try:
        yield embedded.bootstrap
    finally:
        embedded.stop(timeout=1)  # workers are gone; Tansu waits 5 s for connected clients


async def members(settings: Settings, agent: str) -> dict[str, set[tuple[str, int]]]:
    """The broker's view of an agent's consumer group: member id -> partitions.

    Tansu 0.6 answers DescribeGroups with the members but without their assignments (empty
    bytes): the partitions then come from the workers' logs alone.
    """
    admin = AIOKafkaAdminClient(**settings.kafka())
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([f"{settings.app_id}.{agent}"])
    finally:
        await admin.close()
    out: dict[str, set[tuple[str, int]]] = {}
    for group in response.groups:
        for member_id, _, _, _, assignment in group[5]:
            out[member_id] = set()
            if assignment:
                decoded = ConsumerProtocolMemberAssignment.decode(assignment)
                out[member_id] = {(t, p) for t, ps in decoded.assignment for p in ps}
    return out


async def publish(settings: Settings, events: list[Envelope]) -> None:
    """Put events on ingress keyed by subject, as department systems do."""
    codec = EventCodec()
    producer = AIOKafkaProducer(**settings.kafka(), acks="all")
    await producer.start()
    try:
        for e in events:
            await producer.send(
                settings.topic("ingress"), codec.encode(e), key=e.subject.encode(),
                headers=e.kafka_headers(),
            )  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()


def assert_split(settings: Settings, logs: list[str], n: int) -> None:
    """Each of ``n`` workers owns its share; shares are disjoint and cover every partition."""
    for agent in AGENTS:
        topics = agent_topics(settings, agent)
        shares = [owned(log, agent) for log in logs]
        everything = {(t, p) for t in topics for p in range(settings.partitions)}
        assert set().union(*shares) == everything, agent
        assert sum(len(s) for s in shares) == len(everything), agent  # disjoint
        for share in shares:
            numbers = {t: {p for tt, p in share if tt == t} for t in topics}
            # Range assignment: the same partition numbers of every topic, so an
            # enterprise's state (keyed like its events) is where its events are.
            assert len({frozenset(ps) for ps in numbers.values()}) == 1, (agent, numbers)
            assert len(numbers[topics[0]]) == settings.partitions // n, (agent, numbers)


def test_two_then_three_workers_split_the_partitions(group_broker: str, tmp_path: Path) -> None:
    """Two workers split both groups; a third joins and each gets a third; all three work."""
    s = group_settings(group_broker, tmp_path, "split")
    asyncio.run(create_topics(s))
    procs = workers(s, 3, tmp_path)

    async def go() -> tuple[dict[str, dict[str, Any]], Reader]:
        seen_by_broker: dict[str, dict[str, Any]] = {}
        try:
            await start_all(procs[:2])
            await wait_split(s, procs[:2], 60)
            assert_split(s, [p.log() for p in procs[:2]], 2)
            seen_by_broker["two"] = {a: await members(s, a) for a in AGENTS}
            await asyncio.to_thread(procs[2].start)  # joins the running pair
            await wait_split(s, procs, 60)
            assert_split(s, [p.log() for p in procs], 3)
            seen_by_broker["three"] = {a: await members(s, a) for a in AGENTS}
            # ... and the three of them do the work: every event through both agents.
            events = penalties(600, seed=31)
            await publish(s, events)
            async with Reader(s) as reader:
                ids = {str(e.event_id) for e in events}
                done = await reader.until(
                    lambda seen: ids <= set(seen.canonical) and ids <= seen.handled, 60, idle=0.5
                )
                assert done, "not every event reached its canonical topic and correlate"
        finally:
            await stop_all(procs)
        return seen_by_broker, reader

    by_broker, reader = asyncio.run(go())
    for count, groups in (("two", by_broker["two"]), ("three", by_broker["three"])):
        for agent, group in groups.items():
            assert len(group) == {"two": 2, "three": 3}[count], (count, agent, group)
            shares = list(group.values())
            assert sum(len(x) for x in shares) == len(set().union(*shares)), (count, agent)
    flow = {n for k, n in reader.seen.canonical.items() if k not in reader.seen.decided}
    assert flow == {1}  # no rebalance repeated anything the departments sent
    # (the case engine may decide a step twice across a hand-over, with the same id and bytes)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("action", "cycles"),
    [("stop", 2), ("kill", 3), ("pause", 1)],
    ids=["sigterm-rejoin-sigterm", "sigkill-three-times", "sigstop-past-session-sigcont"],
)
def test_worker_leaving_under_load_hands_over_nothing_lost_nothing_done_twice(
    group_broker: str, tmp_path: Path, action: str, cycles: int
) -> None:
    """Two workers; mid-stream one stops, dies or freezes, and the other takes over.

    SIGTERM: the stopped worker rejoins under load and the other one is stopped, so leaving,
    joining and leaving again are all covered. SIGKILL: three times, at random moments, each
    time the other worker, the killed one restarted in between. SIGSTOP: the worker is frozen
    past its session timeout, evicted, then woken with the batch it held; its outputs and
    commits for partitions it lost must not do anything twice or skip anything.
    Checked from what is on the topics, counted (not end offsets): every published event on
    its canonical topic; every canonical event made durable by the correlate agent (none
    skipped); one certificate id and serial per request, none missing; one task per case and
    assignee, four per registration; only duplicates dead-lettered; no request of a
    registered firm parked as unregistered; and every enterprise's record, as a next owner
    would restore it from the changelog, complete.
    """
    result = asyncio.run(
        handover(
            group_broker, tmp_path, action=action, cycles=cycles, firms=100,
            penalty_count=1600, seconds=8 + 6 * cycles, seed=random.randrange(1 << 16),
        )
    )  # fmt: skip
    assert result.lost == set(), result.summary()
    assert result.unhandled == set(), result.summary()
    assert result.missing_certificates == set(), result.summary()
    assert result.doubled_certificates == set(), result.summary()
    assert result.doubled_tasks == set(), result.summary()
    assert result.incomplete_cases == set(), result.summary()
    assert result.bad_records == {}, result.summary()
    assert result.parked == 0, result.summary()
    assert set(result.deadletters) <= {"duplicate.event_id"}, result.summary()
    assert len(result.takeover_s) == cycles, result.summary()
    assert max(result.takeover_s) < 60 + 10, result.summary()
    if action == "stop":  # a clean stop commits what it did: nothing to re-deliver
        assert result.duplicates == 0, result.summary()
    # The case engine is at least once: a hand-over before Faust committed a step's offset
    # decides it again, with the same id and bytes (checked as doubled_certificates above).


class SlowRestore:
    """A store whose restore takes a while, as a large changelog does; notes what it holds."""

    def __init__(self, topic: str, seconds: float) -> None:
        self.topic = topic
        self.seconds = seconds
        self.held: set[int] = set()
        self.restores = 0

    def take_pending(self) -> list[Out]:
        return []

    def drop(self, partitions: Any) -> None:
        self.held -= set(partitions)

    async def restore(self, kafka: dict[str, Any], partitions: Any, since: Any = None) -> int:
        parts = set(partitions)
        self.restores += 1
        await asyncio.sleep(self.seconds)
        self.held |= parts
        return 0


class Recorder(BatchAgent):
    """Handles nothing; records which records came before their partition's state."""

    name = "recorder"

    def __init__(self, ctx: Context, store: SlowRestore) -> None:
        super().__init__(ctx, [ctx.settings.topic("ingress")], stores=[store])
        self.store = store
        self.handled = 0
        self.early: list[tuple[int, int]] = []

    async def process(self, records: list[Record]) -> list[Out]:
        self.early += [
            (r.partition, r.offset) for r in records if r.partition not in self.store.held
        ]
        self.handled += len(records)
        return []


def recorder(settings: Settings, restore_s: float) -> Recorder:
    """A ``Recorder`` on ingress whose restore takes ``restore_s`` seconds."""
    ctx = Context(settings, EventCodec(), Directory.load(settings.departments_file))
    return Recorder(ctx, SlowRestore(settings.topic("state.ingest-seen"), restore_s))


async def until_handled(agent: Recorder, n: int, within: float = 60) -> None:
    """Wait until ``agent`` has handled ``n`` records, or ``within`` seconds have passed."""
    for _ in range(int(within / 0.05)):
        if agent.handled >= n:
            return
        await asyncio.sleep(0.05)


async def test_no_batch_is_handled_before_its_partitions_state_is_restored(
    group_broker: str, tmp_path: Path
) -> None:
    """The runtime's own guarantee, without the timing luck an end-to-end run depends on."""
    s = group_settings(group_broker, tmp_path, "restore")
    await create_topics(s)
    await publish(s, penalties(300, seed=32))
    agent = recorder(s, 1.5)
    await agent.start()
    try:
        await until_handled(agent, 300, within=30)
    finally:
        await agent.stop()
    assert agent.handled >= 300
    assert agent.early == []


async def test_a_restore_longer_than_the_session_timeout_keeps_the_member_in_its_group(
    group_broker: str, tmp_path: Path
) -> None:
    """A city's state takes longer to read than the session timeout: it is read once.

    aiokafka sends no heartbeat while a rebalance listener runs; a restore inside it got the
    member evicted, which restored again, and again with a state that always takes longer.
    """
    s = group_settings(group_broker, tmp_path, "long-restore")
    await create_topics(s)
    await publish(s, penalties(100, seed=33))
    agent = recorder(s, 1.5 * s.session_timeout)
    await agent.start()
    try:
        await until_handled(agent, 100)
        # Guards what must not happen (a second restore): cannot fail when the machine is slow.
        await asyncio.sleep(s.session_timeout)
    finally:
        await agent.stop()
    assert agent.handled >= 100
    assert agent.early == []
    assert agent.store.restores == 1


class NotingSeen(SeenStore):
    """The de-duplication store, noting where each restore starts."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.restores: list[tuple[set[int], dict[int, int]]] = []

    async def restore(
        self, settings: Settings, partitions: Iterable[int], since: Mapping[int, int] = {}
    ) -> int:
        parts = set(partitions)
        self.restores.append((parts, dict(since)))
        return await super().restore(settings, parts, since)


def record_id(partition: int, offset: int) -> bytes:
    return hashlib.blake2b(f"{partition}:{offset}".encode(), digest_size=16).digest()


class Keeper(BatchAgent):
    """Remembers each record it handles, by partition and offset, in a real ``SeenStore``."""

    name = "keeper"

    def __init__(self, settings: Settings) -> None:
        ctx = Context(settings, EventCodec(), Directory.load(settings.departments_file))
        self.seen = NotingSeen(settings.topic("state.ingest-seen"))
        super().__init__(ctx, [settings.topic("ingress")], stores=[self.seen])

    async def process(self, records: list[Record]) -> list[Out]:
        for r in records:
            self.seen.add(r.partition, [record_id(r.partition, r.offset)])
        return []

    def holds(self) -> dict[int, set[bytes]]:
        mine = {tp.partition for tp in self.assignment}
        return {p: ids for p, ids in self.seen._ids.items() if p in mine}


async def _ingress_ids(s: Settings) -> dict[int, set[bytes]]:
    """The id of every record on ingress now, by partition."""
    consumer = kafka_consumer(s)
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic("ingress"), p) for p in range(s.partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {
        tp.partition: {record_id(tp.partition, o) for o in range(end)} for tp, end in ends.items()
    }


async def _until(what: str, ok: Callable[[], bool], within: float = 90) -> None:
    for _ in range(int(within / 0.05)):
        if ok():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s: {what}")


async def test_a_rebalance_keeps_the_state_of_the_partitions_a_worker_keeps(
    group_broker: str, tmp_path: Path
) -> None:
    """Kafka's eager rebalance takes every partition away and gives most of them back: those
    are read from where their state stood, not from the start; a partition that moved is
    read whole, with what its other owner wrote."""
    s = group_settings(group_broker, tmp_path, "keep", partitions=3)
    await create_topics(s)
    await publish(s, penalties(300, seed=35))
    first = await _ingress_ids(s)
    a, b = Keeper(s), Keeper(s)
    await a.start()
    try:
        await _until("the first worker has every record", lambda: a.holds() == first)
        assert a.seen.restores == [({0, 1, 2}, {})]  # alone: every partition read from the start

        await b.start()  # a rebalance: the partitions are split
        await _until(
            "the second worker is given partitions",
            lambda: bool(b.assignment) and len(a.seen.restores) == 2 and bool(a.assignment),
        )
        mine = {tp.partition for tp in a.assignment}
        parts, since = a.seen.restores[1]
        assert parts == mine
        assert set(since) == mine  # each read from where it stood: the changelog's end then
        assert all(offset > 0 for offset in since.values())
        assert a.holds() == {p: first[p] for p in mine}  # and nothing of it was lost

        await publish(s, penalties(150, seed=36))
        whole = await _ingress_ids(s)
        await _until(
            "both have the new records",
            lambda: {**a.holds(), **b.holds()} == whole,
        )
        await b.stop()  # its partitions come back to the first worker, with what it wrote
        await _until("the first worker has every partition", lambda: a.holds() == whole)
        parts, since = a.seen.restores[-1]
        assert parts == {0, 1, 2}
        assert set(since) == mine  # its own kept; the one that moved read from the start
    finally:
        await b.stop()
        await a.stop()


async def test_at_least_once_the_last_offsets_are_committed_once_the_stream_is_quiet(
    group_broker: str, tmp_path: Path
) -> None:
    """Offsets are committed every 100 ms, not every batch; the last ones too, with no new batch."""
    s = group_settings(group_broker, tmp_path, "quiet-commit").model_copy(
        update={"processing_guarantee": "at_least_once"}
    )
    await create_topics(s)
    events = penalties(200, seed=34)
    agent = recorder(s, 0)
    admin = AIOKafkaAdminClient(**s.kafka())
    await agent.start()
    await admin.start()
    try:
        await asyncio.wait_for(agent.ready.wait(), 60)
        await publish(s, events[:100])
        await until_handled(agent, 100)
        await publish(s, events[100:])  # its batch comes within the interval of a commit
        committed = 0
        for _ in range(300):
            offsets = await admin.list_consumer_group_offsets(agent.group)
            committed = sum(om.offset for om in offsets.values() if om.offset > 0)
            if committed >= 200:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
        await agent.stop()
    assert agent.handled >= 200
    assert committed == 200


async def _append(producer: AIOKafkaProducer, topic: str, n: int) -> int:
    """``n`` records in one record batch (a fetch sees all or none); returns the end offset."""
    batch = producer.create_batch()
    for i in range(n):
        batch.append(key=b"k", value=b"%d" % i, timestamp=None)
    batch.close()
    return (await (await producer.send_batch(batch, topic, partition=0))).offset + n


async def _fetched_until(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> None:
    """Wait until ``consumer`` has fetched up to ``end`` (its buffer holds it, not yet taken)."""
    await _until(f"the consumer fetched up to {end}", lambda: consumer.highwater(tp) == end, 30)


async def test_a_batch_from_the_fetch_buffer_also_takes_the_records_that_came_since(
    group_broker: str, tmp_path: Path
) -> None:
    """aiokafka holds one fetch per partition until it is taken, and fetches again only then.

    A batch answered from that buffer would leave what came after it for the batch after
    next: under exactly once, a whole commit later (docs/benchmarks.md, "Certificate latency
    beside its raw limit").
    """
    s = group_settings(group_broker, tmp_path, "since")
    await create_topics(s)
    topic = s.topic("ingress")
    tp = TopicPartition(topic, 0)
    consumer = kafka_consumer(s, fetch_max_wait_ms=50)
    producer = kafka_producer(s)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([tp])
        await _append(producer, topic, 3)
        assert len((await consumer.getmany(tp, timeout_ms=30_000)).get(tp, [])) == 3
        await _fetched_until(consumer, tp, await _append(producer, topic, 4))
        await _append(producer, topic, 5)  # came after the buffered fetch
        buffered = await consumer.getmany(tp, timeout_ms=0)
        assert [r.offset for r in buffered[tp]] == [3, 4, 5, 6]  # the buffer is behind
        batch = await and_since(consumer, buffered, limit=100, wait_ms=30_000)
        assert [r.offset for r in batch[tp]] == list(range(3, 12))
        await _append(producer, topic, 1)
        full = await and_since(consumer, {tp: batch[tp][:2]}, limit=2, wait_ms=30_000)
        assert [r.offset for r in full[tp]] == [3, 4]  # a full batch fetches nothing more
    finally:
        await consumer.stop()
        await producer.stop()
