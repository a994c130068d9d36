"""Batch agents: the bus's hot path, run inside the Faust worker.

Faust's stream iteration costs tens of microseconds per event before any work is done: on
this project's reference machine a Faust agent that only counts events peaks at ~6 000
events/s where a plain aiokafka loop that also decodes every event reaches ~16 000
(docs/benchmarks.md). So the agents that see every event are *batch agents*: a
``mode.Service`` started by the Faust worker (same process, lifecycle, logging, health) that
reads its topics with a plain aiokafka consumer in its own consumer group, handles whole
fetches at once, and commits offsets only after everything it produced is written.

Guarantees (``BUS_PROCESSING_GUARANTEE``):

* ``exactly_once`` (``auto`` on a broker with transactions): each batch's outputs, its
  stores' changelog records and its consumed offsets are one Kafka transaction per input
  partition number, under the transactional id ``<app_id>.<agent>.<partition>`` (under a
  backlog a transaction spans fetches, up to ``BUS_BATCH_SIZE`` events). The worker
  that is given a partition starts that id's producer before it restores the partition's
  state, which aborts what the previous owner left open and fences it: a zombie's later
  writes fail (aiokafka 0.14 sends no group generation with the offsets, KIP-447, so the
  transactional id is the fence, as in Kafka Streams' first exactly-once design).
* ``at_least_once`` (``auto`` on a broker without transactions): outputs are acknowledged
  before the changelog records are written and before offsets are committed, so a crash
  re-delivers, never loses, and a re-delivered event is recognised through the restored
  state (a crash between outputs and changelog re-forwards at most one batch).

Scale-out is Kafka's: every worker runs the same agents in the same consumer groups and the
broker splits partitions between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import (
    CommitFailedError,
    IllegalOperation,
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.partitioner import murmur2
from mode import Service

from bus.agents.out import Out
from bus.agents.stores import Store
from bus.errors import BusError, ConfigurationError
from bus.settings import Settings
from bus.streaming.client import NO_TRANSACTIONS, kafka_consumer, kafka_producer, start_or_close
from bus.streaming.metrics import AgentMetrics

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class Host(Protocol):
    """What a batch agent needs of the process it runs in: settings, and its metrics."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> AgentMetrics: ...


class BatchAbandoned(Exception):
    """``process`` gave its batch up on purpose (a sink stopping): not committed, re-read
    later, logged without a traceback."""


@dataclass(slots=True)
class _Txn:
    """The open transaction of one input partition number: what it holds so far."""

    producer: AIOKafkaProducer
    started: float  # monotonic
    first: dict[TopicPartition, int] = field(default_factory=dict)  # to re-read it from
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # to commit with it
    acks: list[asyncio.Future[object]] = field(default_factory=list)
    events: int = 0
    commit_s: float = 0.0  # how long its commit took, once committed


@dataclass(slots=True)
class _Batch:
    """A batch whose outputs are on their way: what to wait for, then write, then commit."""

    acks: list[asyncio.Future[object]]
    changelog: list[Out]
    first: dict[TopicPartition, int]
    commit: dict[TopicPartition, int]
    size: int


LAG_INTERVAL = 5.0  # seconds between consumer-lag updates

BUFFERED_S = 0.002  # a fetch answered within this was answered from aiokafka's buffer

FRESH_WAIT_MS = 5
"""How long a batch waits for the records that came while the one before it was committed.
aiokafka keeps one fetch per partition until it is taken and fetches again only then, so what
``getmany`` answers from that buffer was fetched before the last commit began; a record that
came later would wait for a whole batch more (under exactly once, a commit of a few round trips
each). One more fetch, answered in a round trip, takes it into this batch instead."""
SINCE_BOUND_S = 0.1
"""The longest that one more fetch may take (a round trip is a few ms; a rebalance, longer)."""

COMMIT_INTERVAL = 0.1
"""Seconds between offset commits at least once. A commit is a broker round trip that every
batch used to wait for before its next fetch; the offsets of the batches between two commits
wait in memory instead. Their outputs and state are durable, so a crash re-reads at most this
long a stretch, which the de-duplication drops (docs/architecture.md). Revocation and stop
commit at once."""

TXN_TIMEOUT_MS = 30_000
"""How long the broker keeps a transaction of a worker that died open (readers of its topics
wait behind it). The partition's next owner aborts it at once; this bounds the wait when no
worker takes over. A batch's transaction lasts well under a second."""

TXN_MAX_AGE = 1.0
"""Seconds a transaction stays open at most while a backlog lasts. Each one costs the broker a
few writes (transaction log, markers, offsets) whatever its size, so under a backlog (full
fetches) a partition's transaction spans fetches until it holds ``BUS_BATCH_SIZE`` events or
is this old; after a fetch that is not full, every open one is committed."""

FENCED = (ProducerFenced, InvalidProducerEpoch, InvalidProducerIdMapping, IllegalOperation)
"""A transactional producer that cannot go on: another worker started the same transactional
id (it owns the partition now), or the broker aborted the transaction after its timeout."""


@functools.lru_cache(maxsize=1 << 16)
def key_hash(key: bytes) -> int:
    """Kafka's default partitioner hash (murmur2, positive): a key's partition is this
    modulo the partition count, as any Kafka producer computes it. Cached: aiokafka's
    murmur2 is pure Python and the same enterprises come back again and again."""
    return int(murmur2(key)) & 0x7FFFFFFF


_timestamp = operator.attrgetter("timestamp")


class WorkerRangeAssignor(RangePartitionAssignor):
    """Range assignment with a group's members ordered by worker, the same in every group.

    The range assignor orders members by member id, which the broker makes up per group: one
    worker could own ingress 0-2 in the ingest group and the canonical topics' 3-5 in the
    correlate group, so its correlate would read none of the events its ingest decoded
    (``bus.streaming.codec.Recent``) and every event would cross between workers. Here each member
    names its worker in the group's member metadata (the protocol's user data) and members
    are ordered by that first: with the same workers in both groups, a worker gets the same
    partition numbers of ingress and of every canonical topic.
    """

    name = "bus-range"
    worker = uuid.uuid4().hex.encode()  # this process

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """Our subscription, and which worker we are."""
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), cls.worker)

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """The range assignment over members sorted by (worker, member id)."""
        order = sorted(members, key=lambda m: (bytes(members[m].user_data or b""), m))
        aliases = {f"{i:08d}": member for i, member in enumerate(order)}
        assigned = super().assign(cluster, {a: members[m] for a, m in aliases.items()})
        return {aliases[a]: assignment for a, assignment in assigned.items()}


class _Listener(ConsumerRebalanceListener):
    def __init__(self, agent: BatchAgent) -> None:
        self.agent = agent

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.agent.stop_restoring()  # a restore not finished: its partitions go away
        async with self.agent.lock:  # let the batch in flight finish and commit
            settled = False
            try:
                await self.agent.settle()
                settled = True
            except Exception as exc:  # not committed: the partitions' next owner re-reads it
                self.agent._inflight = None
                log.warning("%s: batch in flight not committed at revocation: %r",
                            self.agent.name, exc)  # fmt: skip
            finally:
                served = {tp.partition for tp in self.agent.assignment}
                self.agent.assignment -= set(revoked)
                for tp in revoked:  # a commit that failed above: the next owner re-reads
                    self.agent._due.pop(tp, None)
                gone = {tp.partition for tp in revoked}
                stale = set(self.agent._kept)  # kept before, and not (wholly) restored since
                kept = await self.agent.keep(gone & served if settled else set())
                for store in self.agent.stores:
                    store.drop((gone | stale) - kept)
                await self.agent.close_transactions(gone)
        for tp in revoked:  # the new owner reports their lag; a stale series would lie
            with contextlib.suppress(KeyError):
                self.agent.ctx.metrics.lag.remove(self.agent.name, tp.topic, str(tp.partition))
        log.info("%s: partitions revoked %s", self.agent.name, _fmt(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Transactions first: starting a partition's producer aborts what its previous owner
        # left open, so the restore reads all that was committed and no more. The restore
        # itself runs after this returns: aiokafka sends no heartbeat while a listener runs,
        # and a restore longer than the session timeout got the member evicted, which
        # started the same restore again (1 000 000 enterprises: 8.7 s against 6 s).
        async with self.agent.lock:
            if not await self.agent.open_transactions({tp.partition for tp in assigned}):
                return
        self.agent.start_restoring(assigned)


async def and_since(
    consumer: AIOKafkaConsumer,
    fetched: dict[TopicPartition, list[Record]],
    limit: int,
    wait_ms: int = FRESH_WAIT_MS,
) -> dict[TopicPartition, list[Record]]:
    """``fetched`` (answered from aiokafka's buffer) and what came since, up to ``limit``.

    Waits at most ``wait_ms`` for one more fetch; a backlog (``limit`` reached) waits for none.
    Called under the agent's lock: in a rebalance getmany waits for the next assignment, and
    that waits for the listener, which waits for the lock; so the wait is bounded here too.
    """
    room = limit - sum(len(rs) for rs in fetched.values())
    if room <= 0:
        return fetched
    try:
        more = await asyncio.wait_for(
            consumer.getmany(timeout_ms=wait_ms, max_records=room), SINCE_BOUND_S
        )
    except TimeoutError:  # a rebalance began: this batch goes as it is
        return fetched
    for tp, records in more.items():
        fetched[tp] = fetched.get(tp, []) + records
    return fetched


def _merged(
    fetched: Mapping[TopicPartition, list[Record]],
    tps: list[TopicPartition],
    rank: Callable[[str], int] = lambda topic: 0,
) -> list[Record]:
    """Records of ``tps`` across partitions and topics, oldest first (each partition's order
    kept): a penalty published before a certificate request is folded in before it.

    Records of one millisecond are common (a batch's outputs are stamped as they are
    produced); among those, topics come in ``rank`` order, then by name.
    """
    lists = [fetched[tp] for tp in sorted(tps, key=lambda tp: (rank(tp.topic), tp))]
    return lists[0] if len(lists) == 1 else list(heapq.merge(*lists, key=_timestamp))


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(tps)) or "none"


class BatchAgent(Service):
    """Consume ``topics`` in batches, produce what ``process`` returns, then commit.

    Subclasses implement ``process``; it must not raise for bad input (turn it into a dead
    letter). An exception from ``process`` is a bug: the batch is not committed, the agent
    logs it and retries the same batch after a pause, so nothing is skipped.

    ``poll_every``: for a ``process`` that waits on the outside world (a connector's sink),
    seconds after which the agent pauses its partitions and keeps polling until it returns,
    so the group does not evict a member that stopped polling (``max_poll_interval_ms``).
    """

    name: str = "agent"
    tick_interval: float | None = None
    poll_every: float | None = None

    def __init__(
        self,
        ctx: Host,
        topics: Sequence[str],
        *,
        stores: Sequence[Store] = (),
        group: str | None = None,
        batch_size: int | None = None,
        batch_wait: float | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        s = ctx.settings
        self.topics = list(topics)
        self.stores = list(stores)
        self.kafka = s.kafka()
        self.group = group or f"{s.app_id}.{self.name}"
        self.batch_size = batch_size or s.batch_size
        self.batch_wait = s.batch_wait if batch_wait is None else batch_wait
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()  # set once the group gave this member its partitions
        self.assignment: set[TopicPartition] = set()
        self.processed = 0
        self.guarantee = s.processing_guarantee
        # ``auto`` tries transactions and falls back at the first assignment if refused.
        self.transactional = s.processing_guarantee != "at_least_once"
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._txn: dict[int, AIOKafkaProducer] = {}  # partition number -> its producer
        self._open: dict[int, _Txn] = {}  # partition number -> its open transaction
        self.committed = 0  # transactions
        self._partitions: dict[str, list[int]] = {}
        self._inflight: _Batch | None = None
        self._deadletter_topic = s.topic("deadletter")
        self._last_tick = 0.0
        self._last_lag = 0.0
        self._due: dict[TopicPartition, int] = {}  # settled, offsets not yet committed
        self._restoring: asyncio.Future[None] | None = None
        # Revoked partitions whose state is still held: number -> changelog -> offset.
        self._kept: dict[int, dict[str, int]] = {}
        self._last_commit = 0.0

    async def process(self, records: list[Record]) -> list[Out]:
        """Turn one batch of input records into output records."""
        raise NotImplementedError

    def consumer_options(self) -> dict[str, Any]:
        """Options of this agent's consumer that differ from the runtime's (none here)."""
        return {}

    def on_commit_refused(self, offsets: Mapping[TopicPartition, int], exc: KafkaError) -> None:
        """A batch's offsets were refused (the partitions moved on): their next owner re-reads
        them. Logged; subclasses count it."""
        log.warning("%s: commit failed after rebalance: %s", self.name, exc)

    async def on_start(self) -> None:
        """Connect the producer and join the consumer group."""
        s = self.ctx.settings
        self._producer = kafka_producer(
            s,
            linger_ms=s.producer_linger_ms,
            max_batch_size=s.producer_max_batch_size,
            client_id=f"{self.group}-producer",
        )
        await self._producer.start()
        options: dict[str, Any] = dict(
            group_id=self.group,
            client_id=f"{self.group}-consumer",
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=int(self.batch_wait * 1000),
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout * 1000),
            # Range assignment gives a member the same partition numbers of every topic with
            # the same partition count: state keyed by subject stays with its events; ordered
            # by worker, the same numbers in the ingest and the correlate group. One assignor
            # only: aiokafka 0.14 sends a JoinGroup per assignor offered (aio-libs/aiokafka
            # PR #1168), and on Kafka two members doing so re-trigger each other's rebalance
            # without end (seen starting two workers at once).
            partition_assignment_strategy=(WorkerRangeAssignor,),
        )
        self._consumer = kafka_consumer(s, **{**options, **self.consumer_options()})
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        await self._consumer.start()

    async def on_stop(self) -> None:
        """Finish the batch in flight, then leave the group cleanly."""
        await self.stop_restoring()
        async with self.lock:
            try:
                await self.settle()
            finally:
                if self.transactional:
                    log.info("%s: %d events in %d transactions", self.name, self.processed,
                             self.committed)  # fmt: skip
                await self.close_transactions(set(self._txn))
                if self._consumer is not None:
                    await self._consumer.stop()
                if self._producer is not None:
                    await self._producer.stop()

    @Service.task
    async def _consume(self) -> None:
        """Fetch, process and send batch N+1 while batch N's acknowledgements come in.

        Order per batch: outputs acknowledged -> changelog records written and acknowledged
        -> offsets committed. A changelog record therefore never names an event whose output
        was lost, and a committed offset never skips an event whose memory was not kept.
        """
        assert self._consumer is not None
        consumer = self._consumer
        while not self.should_stop:
            if time.monotonic() - self._last_lag > LAG_INTERVAL:
                self._last_lag = time.monotonic()
                await self._update_lag()
            asked = time.monotonic()
            fetched = await consumer.getmany(
                timeout_ms=int(self.batch_wait * 1000), max_records=self.batch_size
            )
            buffered = time.monotonic() - asked < BUFFERED_S
            # No await between the fetch and the lock: records fetched before a restore paused
            # their partition queue here ahead of that restore, and are sent back.
            async with self.lock:
                if fetched and buffered:
                    fetched = await and_since(consumer, fetched, self.batch_size)
                if self.transactional:
                    await self._transact(fetched)
                    continue
                current: _Batch | None = None
                try:
                    fetched = self._restored_only(fetched)
                    if fetched:
                        current = await self._start(fetched)
                    await self.settle(now=False)
                    self._inflight = current
                    if self._tick_due():
                        await self.settle(now=False)
                        self._inflight = await self._tick_batch()
                except Exception as exc:
                    failed = [b for b in (self._inflight, current) if b is not None]
                    self._inflight = None
                    if isinstance(exc, (KafkaError, OSError)):
                        log.warning("%s: broker trouble, re-reading: %r", self.name, exc)
                    elif isinstance(exc, BatchAbandoned):
                        log.warning("%s: batch given up, to be re-read: %s", self.name, exc)
                    else:
                        log.exception("%s: batch failed; it will be re-read", self.name)
                    await self._recover(failed)
                    await self.sleep(1.0)

    def _restored_only(
        self, fetched: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, list[Record]]:
        """Records of partitions whose state is restored; the others are fetched again.

        A fetch that completed around a rebalance can hold records of a partition this
        member no longer owns (its new owner reads them from the committed offset) or owns
        but has not restored yet (seek back: they come again once it has).
        """
        assert self._consumer is not None
        kept = {}
        for tp, records in fetched.items():
            if tp in self.assignment:
                kept[tp] = records
            elif tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)
        return kept

    async def _start(self, fetched: dict[TopicPartition, list[Record]]) -> _Batch:
        m = self.ctx.metrics
        records = _merged(fetched, list(fetched), self.topic_rank)
        t0 = time.perf_counter()
        outs = await self._processed(records)
        m.batch_seconds.labels(self.name).observe(time.perf_counter() - t0)
        for tp, rs in fetched.items():
            m.events_in.labels(self.name, tp.topic).inc(len(rs))
        self._count_out(outs)
        changelog = [o for store in self.stores for o in store.take_pending()]
        return _Batch(
            acks=await self._send(outs),
            changelog=changelog,
            first={tp: rs[0].offset for tp, rs in fetched.items()},
            commit={tp: rs[-1].offset + 1 for tp, rs in fetched.items()},
            size=len(records),
        )

    def start_restoring(self, assigned: list[TopicPartition]) -> None:
        """Restore the state of ``assigned`` in the background, their fetching paused.

        The consume loop handles only partitions in ``assignment``, which the restore sets
        when it is done; aiokafka returns no records of a paused partition, and drops those it
        fetched before the pause or before a seek.
        """
        assert self._consumer is not None
        if self._restoring is not None:  # a revocation cancels it; this is in case none came
            self._restoring.cancel()
        self._consumer.pause(*assigned)
        self._restoring = asyncio.ensure_future(self._restore(list(assigned)))

    async def stop_restoring(self) -> None:
        """Cancel a restore in progress (its partitions are being taken away)."""
        task, self._restoring = self._restoring, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def keep(self, partitions: set[int]) -> set[int]:
        """Hold the state of ``partitions`` (revoked, settled) in case they come back.

        Kafka's eager rebalance takes every partition away before it hands them out again,
        most of them to the members that had them. A partition given back is then read only
        from the changelog offsets noted here: what another member wrote meanwhile. They are
        the end offsets now, a reader of committed records' (a lower bound of what the state
        holds: records read twice are applied twice, the same way).
        """
        self._kept = {}
        if not partitions or not self.stores:
            return set()
        # A rebalance is waiting for this listener and gets no heartbeat: never long.
        fast = {"request_timeout_ms": 5000, "metadata_max_age_ms": 5000}
        tps = [TopicPartition(st.topic, p) for st in self.stores for p in sorted(partitions)]
        consumer = kafka_consumer(self.ctx.settings, **fast)
        try:
            await start_or_close(consumer)
            ends = await consumer.end_offsets(tps)
        except (KafkaError, OSError) as exc:  # the next assignment reads them whole
            log.info("%s: state of %s not kept (%r)", self.name, sorted(partitions), exc)
            return set()
        finally:
            await consumer.stop()
        for tp, end in ends.items():
            self._kept.setdefault(tp.partition, {})[tp.topic] = end
        return partitions

    async def _restore(self, assigned: list[TopicPartition]) -> None:
        assert self._consumer is not None
        t0 = time.monotonic()
        partitions = {tp.partition for tp in assigned}
        kept = dict(self._kept)  # cleared once restored; a revocation meanwhile drops them
        restored = 0
        try:
            async with self.lock:
                for store in self.stores:  # another's now, or to be read from the start
                    store.drop((kept.keys() - partitions) | (partitions - kept.keys()))
                for store in self.stores:
                    since = {p: kept[p][store.topic] for p in partitions & kept.keys()}
                    restored += await store.restore(self.ctx.settings, partitions, since)
                self._kept = {}
                self.assignment = set(assigned)
                if self.transactional:
                    await self.seek_committed(assigned)
                await self.on_assigned(partitions)
                self._consumer.resume(*(tp for tp in assigned if tp in self._consumer.assignment()))
        except Exception as exc:  # the next assignment restores again
            log.warning("%s: restore of %s failed (%r): rejoining", self.name, _fmt(assigned), exc)
            for store in self.stores:  # none of it is known to be whole
                store.drop(partitions | kept.keys())
            self._kept = {}
            self._rejoin()
            return
        self.ready.set()
        log.info(
            "%s: partitions assigned %s (%d ids restored in %.2fs; %d kept from before)",
            self.name, _fmt(assigned), restored, time.monotonic() - t0,
            len(partitions & kept.keys()),
        )  # fmt: skip

    async def _processed(self, records: list[Record]) -> list[Out]:
        """``process``, polling with every partition paused while it outlasts ``poll_every``."""
        if self.poll_every is None:
            return await self.process(records)
        assert self._consumer is not None
        consumer = self._consumer
        task = asyncio.ensure_future(self.process(records))
        held = consumer.paused()  # paused before (restoring, fenced): they stay paused
        try:
            while not (await asyncio.wait({task}, timeout=self.poll_every))[0]:
                consumer.pause(*consumer.assignment())
                polled: dict[TopicPartition, list[Record]] = {}
                # In a rebalance getmany waits for the next assignment, and that waits for
                # the listener, which waits for this batch: poll again rather than wait.
                with contextlib.suppress(TimeoutError):
                    polled = await asyncio.wait_for(consumer.getmany(), self.poll_every)
                for tp, fetched in polled.items():
                    consumer.seek(tp, fetched[0].offset)  # assigned meanwhile: read it later
        except BaseException:
            task.cancel()
            raise
        finally:
            consumer.resume(*(consumer.paused() - held))
        return task.result()

    def topic_rank(self, topic: str) -> int:
        """Where records of ``topic`` go among records of the same millisecond: lower first."""
        return 0

    async def on_assigned(self, partitions: set[int]) -> None:
        """Called after the stores of newly assigned partitions are restored."""

    async def tick(self) -> list[Out]:
        """Work that time, not an event, starts (deadlines); every ``tick_interval`` seconds.

        Runs between batches, under the same lock, and its outputs and state changes go
        through the same acknowledge-then-write path as a batch's.
        """
        return []

    def _tick_due(self) -> bool:
        if self.tick_interval is None:
            return False
        now = time.monotonic()
        if now - self._last_tick < self.tick_interval:
            return False
        self._last_tick = now
        return True

    def _count_out(self, outs: list[Out]) -> None:
        counts: dict[str, int] = {}
        for o in outs:
            counts[o.topic] = counts.get(o.topic, 0) + 1
            if o.topic == self._deadletter_topic:
                reason = dict(o.headers).get("bus.reason", b"unknown").decode()
                self.ctx.metrics.deadletters.labels(self.name, reason).inc()
        for topic, n in counts.items():
            self.ctx.metrics.events_out.labels(self.name, topic).inc(n)

    async def _update_lag(self) -> None:
        """Lag per assigned partition: the last fetch's high-water mark minus our position."""
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except IllegalStateError:  # revoked while we asked: the next update has it right
                continue
            lag = max(high - position, 0)
            self.ctx.metrics.lag.labels(self.name, tp.topic, str(tp.partition)).set(lag)

    async def _tick_batch(self) -> _Batch | None:
        outs = await self.tick()
        self._count_out(outs)
        changelog = [o for store in self.stores for o in store.take_pending()]
        if not outs and not changelog:
            return None
        return _Batch(await self._send(outs), changelog, {}, {}, 0)

    async def settle(self, *, now: bool = True) -> None:
        """Complete the batch in flight: wait for its outputs, write its state, commit.

        ``now=False`` (the consume loop): commit only once ``COMMIT_INTERVAL`` has passed.
        Exactly once: commit every open transaction.
        """
        if self._open:
            await self._commit({p: self._open[p] for p in sorted(self._open)})
        batch, self._inflight = self._inflight, None
        if batch is not None:
            try:
                await asyncio.gather(*batch.acks)
                if batch.changelog:
                    await asyncio.gather(*await self._send(batch.changelog))
            except BaseException:
                self._inflight = batch  # the caller recovers it
                raise
            self.processed += batch.size
            self._due.update(batch.commit)
        if self._due and (now or time.monotonic() - self._last_commit >= COMMIT_INTERVAL):
            await self._commit_offsets()

    async def _commit_offsets(self) -> None:
        """Commit the settled batches' offsets; a failure leaves them for the next commit."""
        assert self._consumer is not None
        due, self._due = self._due, {}
        self._last_commit = time.monotonic()
        try:
            await self._consumer.commit(due)
        except (CommitFailedError, IllegalStateError) as exc:  # their new owner re-reads them
            self.on_commit_refused(due, exc)
        except KafkaError as exc:  # outputs and state are durable: only the commit is late
            log.warning("%s: offsets not committed, trying again: %r", self.name, exc)
            self._due = due  # under the lock: nothing settled meanwhile

    async def _recover(self, failed: list[_Batch]) -> None:
        """Re-read failed batches from their first offsets, with state as last made durable."""
        assert self._consumer is not None
        first: dict[TopicPartition, int] = {}
        for b in failed:
            for tp, offset in b.first.items():
                first[tp] = min(offset, first.get(tp, offset))
        owned = {tp.partition for tp in self.assignment}
        partitions = {tp.partition for tp in first} & owned
        for store in self.stores:
            store.drop(partitions)
            await store.restore(self.ctx.settings, partitions)
        for tp, offset in first.items():
            if tp in self.assignment:
                self._consumer.seek(tp, offset)

    async def _send(
        self, outs: list[Out], producer: AIOKafkaProducer | None = None
    ) -> list[asyncio.Future[object]]:
        """Produce ``outs`` as one record batch per partition; returns the ack futures.

        Per-record ``send`` costs a future and an accumulator lookup each (a fifth of the
        ingest agent's time); building the batches here costs neither. Partitions are chosen
        as Kafka's default partitioner does (murmur2 of the key), so keyed records land
        where any other Kafka producer would put them.
        """
        producer = producer or self._producer
        assert producer is not None
        groups: dict[tuple[str, int], list[Out]] = {}
        for o in outs:
            p = o.partition
            if p is None:
                p = await self._partition_of(o, producer)
            groups.setdefault((o.topic, p), []).append(o)
        futures = []
        for (topic, partition), items in groups.items():
            batch = producer.create_batch()
            for o in items:
                if batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers):
                    continue
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if not batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers):
                    raise BusError(f"record for {topic} larger than the producer's batch size")
            # Closed: complete, so the producer sends it now instead of lingering for more
            # records that will never come (linger_ms is for ``send``'s one-by-one records).
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def _partition_of(self, o: Out, producer: AIOKafkaProducer) -> int:
        """The partition ``o`` goes to: its own, or by its key as Kafka's partitioner says."""
        if o.partition is not None:
            return o.partition
        parts = self._partitions.get(o.topic)
        if parts is None:
            parts = sorted(await producer.partitions_for(o.topic))
            self._partitions[o.topic] = parts
        if o.key is None:
            return parts[self.processed % len(parts)]
        return parts[key_hash(o.key) % len(parts)]

    # ---- exactly once: one transactional producer per input partition number -------------

    def _txn_any(self) -> AIOKafkaProducer:
        """Any started producer, for metadata."""
        producer = next(iter(self._txn.values()), None) or self._producer
        assert producer is not None
        return producer

    async def open_transactions(self, partitions: set[int]) -> bool:
        """Start the transactional producer of each newly assigned partition number.

        Starting ``<app_id>.<agent>.<partition>`` makes the broker abort that id's open
        transaction and refuse its earlier producer from now on: the partition's previous
        owner, alive or a zombie, can no longer write. Under ``auto``, a broker that refuses
        transactions (no InitProducerId) turns the agent to at least once, with one warning.
        Returns False when the partitions cannot be served now (a rejoin is requested).
        """
        if not self.transactional:
            return True
        todo = sorted(p for p in partitions if p not in self._txn)
        results = await asyncio.gather(
            *(self._start_txn_producer(p) for p in todo), return_exceptions=True
        )
        failure: BaseException | None = None
        for p, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                self._txn[p] = result
        if failure is None:
            return True
        await self.close_transactions(set(todo))
        if isinstance(failure, NO_TRANSACTIONS) and self.guarantee == "auto":
            log.warning(
                "%s: the broker refused transactions (%s on InitProducerId): processing at "
                "least once (BUS_PROCESSING_GUARANTEE=auto); after a crash a batch may be "
                "forwarded twice, and consumers drop copies by event_id",
                self.name, type(failure).__name__,
            )  # fmt: skip
            self.transactional = False
            return True
        if isinstance(failure, (*NO_TRANSACTIONS, TransactionalIdAuthorizationFailed)):
            why = (
                f"may not use the transactional ids {self.group}.<partition>: allow this "
                f"user Write on TransactionalId prefix {self.group}. (docs/operations.md)"
                if isinstance(failure, TransactionalIdAuthorizationFailed)
                else f"the broker refused transactions ({type(failure).__name__} on "
                "InitProducerId); BUS_PROCESSING_GUARANTEE=auto or at_least_once runs without"
            )
            await self.crash(ConfigurationError(f"{self.name}: exactly once impossible: {why}"))
            return False
        log.warning("%s: transactional producers not started (%r): rejoining the group",
                    self.name, failure)  # fmt: skip
        self._rejoin()
        return False

    async def _start_txn_producer(self, partition: int) -> AIOKafkaProducer:
        s = self.ctx.settings
        producer = kafka_producer(
            s,
            transactional_id=f"{self.group}.{partition}",
            transaction_timeout_ms=TXN_TIMEOUT_MS,
            linger_ms=s.producer_linger_ms,
            max_batch_size=s.producer_max_batch_size,
            client_id=f"{self.group}-{partition}",
        )
        await asyncio.wait_for(start_or_close(producer), 60)
        return producer

    async def close_transactions(self, partitions: set[int]) -> None:
        """Stop the producers of partitions given away (settled before, nothing open)."""
        stopping = [self._txn.pop(p) for p in sorted(partitions) if p in self._txn]
        await asyncio.gather(*(_stop_quietly(p) for p in stopping))

    async def seek_committed(self, assigned: Iterable[TopicPartition]) -> None:
        """Start from the offsets committed *now*, after the previous owner was fenced.

        aiokafka may have fetched them before (its issue #738), while that owner could still
        commit: the restored state would then be ahead of the position.
        """
        assert self._consumer is not None
        tps = list(assigned)
        committed = await asyncio.gather(*(self._consumer.committed(tp) for tp in tps))
        start = [tp for tp, offset in zip(tps, committed, strict=True) if offset is None]
        for tp, offset in zip(tps, committed, strict=True):
            if offset is not None:
                self._consumer.seek(tp, offset)
        if start:
            await self._consumer.seek_to_beginning(*start)

    async def _transact(self, fetched: dict[TopicPartition, list[Record]]) -> None:
        """Exactly once: add a fetch to its partitions' open transactions; commit the due ones.

        Each partition number's records are processed apart, so that their outputs and state
        changes belong to that partition's transaction, which commits them with its offsets.
        """
        touched: dict[TopicPartition, int] = {}
        # A full fetch means a backlog: the open transactions take the next fetch too.
        caught_up = sum(len(rs) for rs in fetched.values()) < self.batch_size
        try:
            fetched = self._restored_only(fetched)
            touched = {tp: rs[0].offset for tp, rs in fetched.items()}
            by_number: dict[int, list[TopicPartition]] = {}
            for tp in fetched:
                by_number.setdefault(tp.partition, []).append(tp)
            m = self.ctx.metrics
            t0 = time.perf_counter()
            for p, tps in sorted(by_number.items()):
                records = _merged(fetched, tps, self.topic_rank)
                outs = await self.process(records)
                self._count_out(outs)
                txn = await self._txn_of(p)
                for tp in tps:
                    txn.first.setdefault(tp, fetched[tp][0].offset)
                    txn.offsets[tp] = fetched[tp][-1].offset + 1
                txn.events += len(records)
                changelog = [o for store in self.stores for o in store.take_pending()]
                txn.acks += await self._send(outs + changelog, txn.producer)
            if fetched:
                m.batch_seconds.labels(self.name).observe(time.perf_counter() - t0)
                for tp, rs in fetched.items():
                    m.events_in.labels(self.name, tp.topic).inc(len(rs))
            ticked = self._tick_due()
            if ticked:
                await self._tick_in_transactions()
        except Exception as exc:
            self._log_failure(exc)
            await self._roll_back(dict(self._open), touched)
            await self.sleep(1.0)
            return
        now, size = time.monotonic(), self.batch_size
        due = {
            p: txn
            for p, txn in sorted(self._open.items())
            if caught_up or ticked or txn.events >= size or now - txn.started >= TXN_MAX_AGE
        }
        try:
            await self._commit(due)
        except Exception as exc:  # those that failed are rolled back already
            self._log_failure(exc)
            await self.sleep(1.0)

    def _log_failure(self, exc: Exception) -> None:
        if isinstance(exc, (KafkaError, OSError)):
            log.warning("%s: broker trouble, re-reading: %r", self.name, exc)
        else:
            log.exception("%s: batch failed; it will be re-read", self.name)

    async def _txn_of(self, p: int) -> _Txn:
        """Partition number ``p``'s open transaction; begun now if none is."""
        txn = self._open.get(p)
        if txn is None:
            producer = self._txn.get(p)
            if producer is None:  # given up (fenced) since the fetch: not ours to write
                raise ProducerFenced()
            await producer.begin_transaction()
            txn = self._open[p] = _Txn(producer, time.monotonic())
        return txn

    async def _tick_in_transactions(self) -> None:
        """A tick's records, each with the partition number whose state it comes from: a
        changelog record's own, an output's by its key (decisions are keyed by subject)."""
        outs = await self.tick()
        self._count_out(outs)
        owned = sorted({tp.partition for tp in self.assignment} & set(self._txn))
        groups: dict[int, list[Out]] = {}
        for o in [o for store in self.stores for o in store.take_pending()]:
            assert o.partition is not None  # a store writes into its partition's number
            groups.setdefault(o.partition, []).append(o)
        for o in outs:
            p = await self._partition_of(o, self._txn_any())
            groups.setdefault(p if p in owned or not owned else owned[0], []).append(o)
        for p, records in groups.items():
            txn = await self._txn_of(p)
            txn.acks += await self._send(records, txn.producer)

    async def _commit(self, due: dict[int, _Txn]) -> None:
        """Commit transactions side by side: outputs + state + offsets, each all or nothing.

        A fenced one belongs to another worker now: given up, not retried. Any other
        failure aborts that one and rolls its partition back (state restored, re-read from
        its first offsets), after the others are committed; the first such error is raised.
        """
        for p in due:
            self._open.pop(p, None)
        numbers = list(due)
        results = await asyncio.gather(
            *(self._commit_one(due[p]) for p in numbers), return_exceptions=True
        )
        failed: dict[int, _Txn] = {}
        failure: BaseException | None = None
        counter = self.ctx.metrics.transactions
        for p, result in zip(numbers, results, strict=True):
            if result is None:
                self.processed += due[p].events
                self.committed += 1
                counter.labels(self.name, "committed").inc()
                self.ctx.metrics.transaction_seconds.labels(self.name).observe(due[p].commit_s)
            elif isinstance(result, FENCED):
                counter.labels(self.name, "fenced").inc()
                await self._lost(p, result)
            elif isinstance(result, Exception):
                failed[p] = due[p]
                failure = failure or result
            else:
                raise result  # cancelled: the agent is stopping
        if failure is not None:
            await self._roll_back(failed, {})
            raise failure

    async def _commit_one(self, txn: _Txn) -> None:
        began = time.monotonic()
        # The offsets go in while the records are still on their way (two round trips fewer).
        if txn.offsets:
            await txn.producer.send_offsets_to_transaction(txn.offsets, self.group)
        results = await asyncio.gather(*txn.acks, return_exceptions=True)
        if failed := next((r for r in results if isinstance(r, BaseException)), None):
            raise failed
        await txn.producer.commit_transaction()
        txn.commit_s = time.monotonic() - began

    async def _roll_back(self, txns: dict[int, _Txn], touched: dict[TopicPartition, int]) -> None:
        """Abort ``txns``; their partitions (and ``touched``) get their state back as last
        committed and are read again from their first uncommitted offsets."""
        assert self._consumer is not None
        first = dict(touched)
        for p, txn in txns.items():
            self._open.pop(p, None)
            for tp, offset in txn.first.items():
                first[tp] = min(offset, first.get(tp, offset))
            self.ctx.metrics.transactions.labels(self.name, "aborted").inc()
            try:
                await asyncio.wait_for(txn.producer.abort_transaction(), 10)
            except Exception as exc:  # cannot end it: the next owner's producer will
                await self._lost(p, exc)
        # Partitions with a transaction still open keep their state (and its records).
        partitions = {tp.partition for tp in first} & {tp.partition for tp in self.assignment}
        partitions -= set(self._open)
        for store in self.stores:
            store.drop(partitions)
            await store.restore(self.ctx.settings, partitions)
        for tp, offset in first.items():
            if tp in self.assignment and tp.partition in partitions:
                self._consumer.seek(tp, offset)

    async def _lost(self, p: int, exc: BaseException) -> None:
        """Partition number ``p`` cannot be written by this worker: forget it until assigned.

        Fenced means another worker started its producer: it owns the partition and re-reads
        from the last commit. Paused here; a rejoin brings the group's view up to date (and
        the partition back, if it is still ours and only its transaction had timed out).
        """
        log.warning("%s: partition %d fenced or its transaction ended (%r): given up until "
                    "the group assigns it again", self.name, p, exc)  # fmt: skip
        producer = self._txn.pop(p, None)
        if producer is not None:
            txn = getattr(producer, "_txn_manager", None)
            if txn is not None:
                # fails with the fencing, already reported: not again as "never retrieved"
                txn.wait_for_transaction_end().add_done_callback(_retrieved)
            await _stop_quietly(producer)
        self.assignment = {tp for tp in self.assignment if tp.partition != p}
        for store in self.stores:
            store.drop([p])
        if self._consumer is not None:
            self._consumer.pause(*(tp for tp in self._consumer.assignment() if tp.partition == p))
        self._rejoin()

    def _rejoin(self) -> None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            coordinator.request_rejoin()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    """Stop a producer; a fenced one fails what it still held, already reported."""
    with contextlib.suppress(Exception):
        await producer.stop()
