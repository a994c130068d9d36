"""Cases: matters, tasks, deadlines and decisions, as a Faust agent over a Faust table.

The flow (``bus.agents.correlate``) folds every event into its enterprise's record and hands
each case step (a matter's trigger, an answer to a task) to ``cases`` with the record as it
stood then and the time the log took the event. The agent decides on that alone, so a
decision depends only on the log before it and replays byte for byte.

Each enterprise's open cases and tasks (``CaseState``) live in a Faust ``Table``: changelog
and recovery are Faust's. Deadlines: a Faust timer puts a tick on every
partition this worker owns; the agent pops what is due from an index ordered by due time.

Guarantee: at least once, effects deterministic. A batch's outputs are acknowledged before
its table writes are made, and its offsets are committed only after both; a crash re-runs
steps on the state before them and produces the same records under the same ids, which
every consumer drops by ``event_id``. The engine commits its input offsets itself, with the
partition's transactional producer: Faust's acks are off for ``cases`` because its offset
bookkeeping committed past steps never decided across rebalances. Why not Faust's
exactly-once: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
)
from mode import Service
from pydantic import BaseModel, ConfigDict, Field

from bus.agents.gaps import GapCheck
from bus.agents.out import CRASH_REASONS, Headers, Out, rejection_headers
from bus.agents.route import Router, load_subscriptions
from bus.agents.runtime import key_hash
from bus.domain.certificates import Signer, UnsignedCertificate, new_serial
from bus.domain.decisions import sign_decision
from bus.domain.matters import (
    Closing,
    Emit,
    Matter,
    StepClosing,
    TaskTemplate,
    Timeout,
    assign,
    by_trigger,
    load_matters,
    next_steps,
)
from bus.domain.matters.facts import Facts
from bus.domain.record import EnterpriseRecord, TaskEntry
from bus.domain.reports import UnsignedReport, report_domains, sign_report
from bus.domain.tasks import TASK_STATES, TaskKey
from bus.domain.workdays import CHINA_TZ, WorkingCalendar
from bus.errors import BusError
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.client import NO_TRANSACTIONS, kafka_producer, start_or_close
from bus.streaming.topics import (
    CASE_PARTIES,
    CASES,
    CASES_TABLE,
    DEADLETTER,
    canonical_topic,
    cases_changelog,
)

if TYPE_CHECKING:
    import faust

    from bus.agents.app import Context
    from bus.streaming.metrics import AgentMetrics

log = logging.getLogger(__name__)

BUS = "ks.bus"
ANSWERS = ("task.accepted", "task.completed", "task.rejected")
"""Answers to any task; a matter may name other events that answer its tasks (``answered_by``)."""
STAGE = "cases"
"""``bus.stage`` of the dead letters this agent writes."""
KEEP_DONE = 32
"""Steps an enterprise's state remembers, so a re-delivered step is recognised."""
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 * 1024**2,
}
"""Per partition's database, at most ~48 MB in memory; Faust's defaults allow 2.2 GB."""
_IDS = uuid.UUID("0b5e7c1e-6a1d-4c55-9d0e-4b7573000001")  # namespace of derived ids

StepKind = Literal["trigger", "answer", "signal", "tick"]
"""A case step: a matter's trigger, an answer to a task, an event that may end cases (a
matter's ``cancel``), or a deadline tick."""

FENCED = (ProducerFenced, InvalidProducerEpoch)
"""Another worker took the partition over: this one is a zombie and must not write."""


class NotOwned(BusError):
    """A partition was given away while its batch was in hand: its writes are dropped."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} of cases is not this worker's now",
                         reason="cases.not_owned")  # fmt: skip


TXN_TIMEOUT_MS = 30_000
"""How long the broker keeps a dead worker's open transaction before aborting it."""
TXN_END_S = TXN_TIMEOUT_MS / 1000
"""Longest wait for a transaction of ``cases`` to end. aiokafka's commit waits for good when
its producer is stopped under it; one not ended by then is tried again with a new producer."""
RELEASE_WAIT_S = 3.0
"""How long a revocation waits for the writes in hand of the partitions it gives away."""
WRITE_RETRY_MAX_S = 5.0
"""Longest wait between tries of a partition's write. A retriable error is tried again until
the write succeeds or the partition is another worker's."""
COMMIT_S = 1.0
"""How often the offsets of steps decided and saved are committed when no transaction of the
partition carries them sooner. A crash re-runs at most this much, deciding the same."""


def derived_id(*parts: str) -> uuid.UUID:
    """A stable event id for an effect: the same cause always gives the same id."""
    return uuid.uuid5(_IDS, "/".join(parts))


def encode_step(
    kind: StepKind,
    at: datetime,
    value: bytes,
    headers: Headers,
    origin: str,
    record: EnterpriseRecord,
) -> bytes:
    """A case step for ``cases``: the canonical event's own bytes and the record as of it."""
    return json.dumps(
        {
            "kind": kind,
            "at": round(at.timestamp() * 1000),
            "origin": origin,
            "event": base64.b64encode(value).decode(),
            "headers": [[k, base64.b64encode(v).decode()] for k, v in headers],
            "record": record.model_dump(
                mode="json", include={"uscc", "status", "profile", "penalties", "licences"}
            ),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def case_id(matter: Matter, trigger: Envelope) -> str:
    """A case is named by its matter and its trigger: one trigger may open several matters."""
    return case_key(matter.name, str(trigger.event_id))


def case_key(matter: str, trigger_id: str) -> str:
    """``case_id`` from names: the matter's, and the trigger's event id."""
    return str(derived_id("case", matter, trigger_id))


def task_id_for(template: str, case: str, assignee: str) -> str:
    """A task's stable id: the same case and assignee always give the same task."""
    return f"task-{derived_id(template, case, assignee).hex[:16]}"


def starts_case(matter: Matter, trigger: Envelope, record: EnterpriseRecord) -> bool:
    """Whether ``matter``'s conditions hold for this trigger on this record, decided by the flow.

    Joint discipline reviews licences: a penalty on an enterprise holding none has nothing
    to review, and most penalties are such, so the flow does not hand them on.
    """
    return not matter.when or matter.facts(trigger, record).hold(matter.when)


def step_event_id(value: bytes) -> str | None:
    """The event id of the event a case step carries; ``None`` for a deadline tick."""
    step = json.loads(value)
    for name, encoded in step.get("headers", ()):
        if name == "event_id":
            return base64.b64decode(encoded).decode()
    return None


def tick_step(at: datetime) -> bytes:
    """A deadline tick: everything due at ``at`` in the partition it is put on fires."""
    return json.dumps({"kind": "tick", "at": round(at.timestamp() * 1000)}).encode()


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class CaseState(BaseModel):
    """One enterprise's cases as the engine holds them (one table value)."""

    model_config = ConfigDict(extra="forbid")

    reviews: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="open cases by the event id that opened them"
    )
    tasks: dict[str, TaskEntry] = Field(default_factory=dict, description="by task id")
    closed_tasks: dict[str, int] = Field(
        default_factory=dict,
        description="tasks of closed cases counted by 'matter|department|state', so the task "
        "counts stay whole after a case closes",
    )
    done: list[str] = Field(default_factory=list, description="the last steps handled, by id")

    def open_tasks(self) -> list[TaskEntry]:
        """Tasks still waiting for their assignee."""
        return [t for t in self.tasks.values() if not t.closed]

    def task_counts(self) -> Counter[TaskKey]:
        """Every task this enterprise ever had, by (matter, department, shown state)."""
        counts: Counter[TaskKey] = Counter(t.key for t in self.tasks.values())
        for key, n in self.closed_tasks.items():
            matter, department, state = key.split("|")
            counts[(matter, department, state)] += n
        return counts

    def forget_task(self, task_id: str) -> None:
        """Drop a closed task (its case closed), keeping it counted."""
        task = self.tasks.pop(task_id)
        key = "|".join(task.key)
        self.closed_tasks[key] = self.closed_tasks.get(key, 0) + 1

    def remember(self, step_id: str) -> None:
        """Note a step as handled (the oldest is forgotten past ``KEEP_DONE``)."""
        self.done = [*self.done[-(KEEP_DONE - 1) :], step_id]


class CaseStore(Protocol):
    """Where the engine reads and writes ``CaseState``: a Faust table, or a dict in tests."""

    def get(self, uscc: str) -> CaseState | None: ...

    def put(self, uscc: str, state: CaseState) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[str, CaseState]]: ...


class MemoryCaseStore:
    """``CaseStore`` in a dict: for tests and ``bench``, where no table runs."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.data: dict[str, CaseState] = {}

    def get(self, uscc: str) -> CaseState | None:
        return self.data.get(uscc)

    def put(self, uscc: str, state: CaseState) -> None:
        self.data[uscc] = state

    def items(self, partition: int) -> Iterator[tuple[str, CaseState]]:
        for uscc, state in self.data.items():
            if key_hash(uscc.encode()) % self.partitions == partition:
                yield uscc, state


class TableStore:
    """``CaseStore`` over a Faust table, written once a batch is committed.

    Values are kept as their JSON bytes, the changelog's own: a quarter of the memory of
    Faust's default (a dict per value), and a recovery that decodes nothing.

    Writes wait in ``pending`` until the batch's outputs and changelog records are committed
    (``FencedWriter``); only then do they reach the table in memory. A crash or a fenced
    write leaves the table as it was, so a re-run decides the same.
    """

    def __init__(self, table: Any, partitions: int) -> None:
        self.table = table
        self.partitions = partitions
        self.pending: dict[str, CaseState] = {}

    def get(self, uscc: str) -> CaseState | None:
        state = self.pending.get(uscc)
        if state is not None:
            return state
        raw = self.table.get(uscc.encode())
        return CaseState.model_validate_json(raw) if raw else None

    def put(self, uscc: str, state: CaseState) -> None:
        self.pending[uscc] = state

    def items(self, partition: int) -> Iterator[tuple[str, CaseState]]:
        for key, raw in list(self.table.items()):
            if raw and key_hash(key) % self.partitions == partition:
                yield key.decode(), CaseState.model_validate_json(raw)

    def take(self) -> dict[int, dict[str, bytes]]:
        """What the batch changed, by partition: enterprise -> state as JSON."""
        by_partition: dict[int, dict[str, bytes]] = {}
        for uscc, state in self.pending.items():
            p = key_hash(uscc.encode()) % self.partitions
            by_partition.setdefault(p, {})[uscc] = state.model_dump_json().encode()
        self.pending.clear()
        return by_partition

    def apply(self, partition: int, states: dict[str, bytes], offsets: dict[str, int]) -> None:
        """Committed states into the table, at the changelog offsets they were written to.

        Through the store's own changelog path, as Faust's recovery applies them: the RocksDB
        store then files them in the partition's database and remembers the last offset, so
        a restart or a standby taking over reads only what came after it.
        """
        topic = self.table.changelog_topic.get_topic_name()
        self.table.data.apply_changelog_batch(
            [_Written(topic, partition, offsets[u], u.encode(), v) for u, v in states.items()],
            to_key=_same,
            to_value=_same,
        )


def _same(raw: bytes) -> bytes:
    return raw


@dataclass(frozen=True)
class _Written:
    """A changelog record this worker wrote, shaped as the event Faust's stores apply."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes

    @property
    def message(self) -> _Written:
        return self

    @property
    def tp(self) -> TopicPartition:  # a tuple (topic, partition), as Faust's TP
        return TopicPartition(self.topic, self.partition)


class FencedWriter:
    """Writes a batch's decisions for one partition in one Kafka transaction, then its state.

    One transactional producer per partition of ``cases`` (``<app_id>.cases.<p>``): the
    worker that takes a partition over starts its producer and so fences the one before it,
    whose open transaction is aborted and whose later commits fail. A zombie (a worker
    frozen past its session and woken) therefore cannot commit a decision, and writes no
    state either: the table's changelog records follow only a committed transaction. They
    are written outside it because Faust's recovery waits for a changelog's last offset,
    which a transaction's commit marker never delivers; a crash between the two re-runs the
    steps, which decide the same. On a broker without transactions (an embedded development
    broker) plain producers, and a warning.
    """

    def __init__(
        self,
        settings: Settings,
        changelog: str,
        topic: str | None = None,
        commit_plain: Callable[[dict[TopicPartition, int]], Awaitable[Any]] | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics  # its transactions, as the batch agents count theirs
        self.changelog = changelog
        self.topic = topic  # the input whose offsets are committed, under group ``app_id``
        self.commit_plain = commit_plain  # how offsets are committed without transactions
        # Offsets whose steps' outputs and state are written, not yet committed, by partition.
        self.done: dict[int, int] = {}
        self._writing: dict[int, asyncio.Lock] = {}  # one transaction at a time per producer
        self.producers: dict[int, AIOKafkaProducer] = {}
        self.state: AIOKafkaProducer | None = None  # changelog records, after a commit
        self.owned: set[int] = set()  # claimed on assignment, released on revocation
        self.transactions: bool | None = None  # unknown until the first producer starts
        self._starting = asyncio.Lock()
        # One start at a time per partition: the claim and a first write may both start one,
        # and the later of two producers with one transactional id fences the earlier.
        self._claiming: dict[int, asyncio.Lock] = {}

    def transactional_id(self, partition: int) -> str:
        """The transactional id of a partition's producer: the same on every worker."""
        return f"{self.settings.app_id}.cases.{partition}"

    async def claim(self, partitions: Iterable[int]) -> None:
        """Start the producers of partitions just assigned, fencing their previous owners.

        All are owned at once: a producer that cannot start now starts on its first write.
        """
        claimed = sorted(partitions)
        self.owned.update(claimed)
        for p in claimed:
            try:
                await self._producer(p)
            except KafkaError as exc:
                log.warning("cases: partition %s's producer did not start (%r); its first "
                            "write starts it", p, exc)  # fmt: skip

    async def release(self, partitions: Iterable[int]) -> None:
        """Stop the producers of partitions given away, each once its write in hand is done.

        Waits ``RELEASE_WAIT_S`` at most, in all: a producer stopped under a commit leaves
        that commit waiting (aiokafka) until ``TXN_END_S`` ends it.
        """
        deadline = asyncio.get_running_loop().time() + RELEASE_WAIT_S
        given = sorted(set(partitions))
        self.owned.difference_update(given)  # nothing new starts on them
        for p in given:
            lock = self._writing.setdefault(p, asyncio.Lock())
            try:
                async with asyncio.timeout_at(deadline):
                    await lock.acquire()
            except TimeoutError:
                await self._give_up(p)
                continue
            try:
                await self._give_up(p)
            finally:
                lock.release()

    async def _give_up(self, partition: int) -> None:
        self.owned.discard(partition)
        self.done.pop(partition, None)
        await self._renew(partition)

    async def stop(self) -> None:
        """Commit what is done and stop every producer (the worker is stopping)."""
        try:
            await self.commit()
        except Exception as exc:  # the next owner re-runs those steps, deciding the same
            log.info("cases: offsets not committed on stop: %r", exc)
        await self.release(list(self.producers))
        if self.state is not None:
            await self.state.stop()
            self.state = None

    async def _producer(self, partition: int) -> AIOKafkaProducer:
        if partition not in self.owned:
            # Starting one would fence the partition's new owner.
            raise NotOwned(partition)
        producer = self.producers.get(partition)
        if producer is not None:
            return producer
        async with self._claiming.setdefault(partition, asyncio.Lock()):
            producer = self.producers.get(partition)  # started while this one waited
            if producer is not None:
                return producer
            if partition not in self.owned:
                raise NotOwned(partition)
            producer = await self._start(partition)
            if partition not in self.owned:  # given away while it started
                await producer.stop()
                raise NotOwned(partition)
            self.producers[partition] = producer
            return producer

    async def _start(self, partition: int) -> AIOKafkaProducer:
        producer: AIOKafkaProducer | None = None
        if self.transactions is not False:
            producer = kafka_producer(
                self.settings,
                transactional_id=self.transactional_id(partition),
                transaction_timeout_ms=TXN_TIMEOUT_MS,
            )
            try:
                await start_or_close(producer)
                self.transactions = True
            except NO_TRANSACTIONS as exc:
                log.warning("cases: the broker refused transactions (%s): decisions are "
                            "written at least once, and a zombie worker is not fenced",
                            type(exc).__name__)  # fmt: skip
                self.transactions = False
        if not self.transactions:
            producer = kafka_producer(self.settings)
            await start_or_close(producer)
        assert producer is not None
        return producer

    async def write(
        self,
        partition: int,
        outs: list[Out],
        encoded: dict[str, bytes],
        offset: int | None = None,
    ) -> dict[str, int]:
        """Outputs and changelog records of one partition, committed together or not at all.

        ``offset`` (the next step to read) is committed once both are written: in the
        partition's next transaction, or by ``commit`` within ``COMMIT_S``. Raises ``FENCED``
        when another worker took the partition over, ``NotOwned`` when it was given away
        meanwhile, a Kafka error that is not retriable as it is; retriable ones are tried
        again, for as long as it takes (the same records: the transaction before was aborted).
        Returns the changelog offset of each state written.
        """
        async with self._writing.setdefault(partition, asyncio.Lock()):
            saved = await self._write(partition, outs, encoded)
            if offset is not None and self.topic is not None:
                self.done[partition] = max(offset, self.done.get(partition, 0))
            return saved

    async def _write(
        self, partition: int, outs: list[Out], encoded: dict[str, bytes]
    ) -> dict[str, int]:
        attempt = 0
        while True:
            attempt += 1
            producer = await self._producer(partition)
            try:
                if not encoded:
                    # Nothing of the state changed, so these outputs come from their steps
                    # alone (a clean certificate): any worker makes the same bytes, nothing
                    # to fence, and a transaction's round trips would only add latency.
                    if outs:
                        await asyncio.gather(*await self._send(await self._plain(), outs))
                elif self.transactions:
                    began = time.monotonic()
                    async with asyncio.timeout(TXN_END_S), producer.transaction():
                        await self._send(producer, outs)
                        committed = await self._offsets(producer, partition)
                    self._committed(partition, committed)
                    self._count("committed", began)
                else:
                    await asyncio.gather(*await self._send(producer, outs))
                return await self._save(partition, encoded) if encoded else {}
            except FENCED:
                self._count("fenced")
                await self._give_up(partition)
                raise
            except (KafkaError, TimeoutError) as exc:
                if encoded and self.transactions:
                    self._count("aborted")
                if partition not in self.owned:
                    raise NotOwned(partition) from exc
                if isinstance(exc, KafkaError) and not (
                    exc.retriable or isinstance(exc, KafkaTimeoutError)
                ):
                    raise
                log.warning("cases: writing partition %s failed (%r); try %s",
                            partition, exc, attempt + 1)  # fmt: skip
                await self._renew(partition)  # a new producer: the old one may be stuck
                await asyncio.sleep(min(0.5 * attempt, WRITE_RETRY_MAX_S))

    async def commit(self, partitions: Iterable[int] | None = None) -> None:
        """Commit the offsets of steps decided and saved, partition by partition.

        Each is committed by the partition's transactional producer, so a zombie cannot
        commit; a partition given away meanwhile is skipped (its owner re-runs those steps).
        """
        for partition in sorted(self.done if partitions is None else set(partitions)):
            if partition not in self.owned:
                self.done.pop(partition, None)
                continue
            async with self._writing.setdefault(partition, asyncio.Lock()):
                if partition not in self.done:
                    continue
                try:
                    producer = await self._producer(partition)
                except NotOwned:
                    continue
                if self.transactions:
                    began = time.monotonic()
                    try:
                        async with asyncio.timeout(TXN_END_S), producer.transaction():
                            committed = await self._offsets(producer, partition)
                    except FENCED:
                        self._count("fenced")
                        await self._give_up(partition)
                        continue
                    except TimeoutError:  # the next commit, with a new producer
                        self._count("aborted")
                        log.warning("cases: committing partition %s did not end in %.0f s",
                                    partition, TXN_END_S)  # fmt: skip
                        await self._renew(partition)
                        continue
                    self._committed(partition, committed)
                    self._count("committed", began)
                elif self.commit_plain is not None and self.topic is not None:
                    offset = self.done[partition]
                    await self.commit_plain({TopicPartition(self.topic, partition): offset})
                    self._committed(partition, offset)

    def _count(self, outcome: str, began: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.transactions.labels(STAGE, outcome).inc()
            if began is not None:
                self.metrics.transaction_seconds.labels(STAGE).observe(time.monotonic() - began)

    async def _offsets(self, producer: AIOKafkaProducer, partition: int) -> int | None:
        """Add the partition's finished offset to the transaction open on ``producer``."""
        offset = self.done.get(partition)
        if offset is None or self.topic is None:
            return None
        tp = TopicPartition(self.topic, partition)
        await producer.send_offsets_to_transaction({tp: offset}, self.settings.app_id)
        return offset

    def _committed(self, partition: int, offset: int | None) -> None:
        if offset is not None and self.done.get(partition) == offset:
            del self.done[partition]

    async def _renew(self, partition: int) -> None:
        """Drop a partition's producer but keep the partition: the next try starts another.

        (``release`` would also give the partition up, and every later batch of it would be
        dropped as another worker's until the next rebalance.)
        """
        producer = self.producers.pop(partition, None)
        if producer is not None:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, outs: list[Out]) -> list[asyncio.Future[Any]]:
        return [
            await producer.send(o.topic, o.value, key=o.key, partition=o.partition,
                                headers=o.headers)
            for o in outs
        ]  # fmt: skip

    async def _plain(self) -> AIOKafkaProducer:
        """The worker's one non-transactional producer: state, and stateless decisions."""
        async with self._starting:  # partitions are written side by side: start one producer
            if self.state is None:
                producer = kafka_producer(self.settings, enable_idempotence=True)
                await start_or_close(producer)
                self.state = producer
        return self.state

    async def _save(self, partition: int, states: dict[str, bytes]) -> dict[str, int]:
        """Write the changelog records; returns each one's offset."""
        producer = await self._plain()
        sent = [
            await producer.send(self.changelog, value, key=uscc.encode(), partition=partition)
            for uscc, value in states.items()
        ]
        written = await asyncio.gather(*sent)
        return {uscc: meta.offset for uscc, meta in zip(states, written, strict=True)}


def _only_step(closing: Closing) -> str:
    """The task template of a case kept before its tasks' templates were (it had one)."""
    return next(iter(closing.steps), "")


@functools.lru_cache(maxsize=4)
def _legacy(rule: str) -> Closing | None:
    """How a case opened before cases kept their closing is decided: by the rule it kept, as
    the shipped matter of that rule decides (the same outcomes, written in the language)."""
    name = {"clean_record": "compliance-certificate", "all_opinions": "parallel-approval"}
    matter = load_matters().get(name.get(rule, ""))
    return matter.closing() if matter is not None else None


class CaseEngine:
    """The matters: triggers decided, answers taken, deadlines fired, on ``CaseState``."""

    def __init__(
        self, ctx: Context, signer: Signer, calendar: WorkingCalendar | None = None
    ) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.signer = signer
        self.calendar = calendar or WorkingCalendar.load(s.calendar_dir)
        self.matters: dict[str, Matter] = load_matters(s.matters_dir)  # by name
        self.triggers = by_trigger(self.matters)
        self.codec = ctx.codec
        self.deadletter = s.topic(DEADLETTER.name)
        self.router = Router(
            s, ctx.directory, load_subscriptions(s.subscriptions_file, ctx.directory)
        )
        self.decided = 0  # certificates issued + review cases opened, for tests and metrics
        self.steps = 0  # case steps handled (triggers, answers, tasks past their deadline)
        self._at = datetime.fromtimestamp(0, UTC)  # the log time of the step in hand
        # Deadlines by due time, per partition: (due, enterprise), one entry per open task.
        self._due: dict[int, list[tuple[datetime, str]]] = {}
        self._task_counts: dict[int, Counter[TaskKey]] = {}  # by partition indexed
        self._task_series: set[TaskKey] = set()
        self._recounted = False
        self._closings: dict[str, Closing] = {}
        self._partition = (
            0  # the partition of the step in hand  # parsed once per distinct kept definition
        )

    # -- the steps ---------------------------------------------------------------------------

    def handle(self, partition: int, value: bytes, store: CaseStore) -> list[Out]:
        """One record of ``cases``: a trigger, an answer or a tick.

        Never raises: a step the engine fails on (a bug, a record it cannot read) leaves its
        case as it was and goes to dead letters with reason ``cases.crash`` and the error, so
        the partition goes on and the step is kept where operators look. A tick that fails
        is logged, and the partition's deadlines are read again from the table on its next
        step; the next tick fires what is due.
        """
        try:
            self._index(partition, store)
            step = json.loads(value)
            if step["kind"] == "tick":
                return self._tick(partition, _from_ms(step["at"]), store)
            return self._step(partition, step, store)
        except Exception as exc:
            self.forget([partition])  # its index may be half popped: rebuilt next time
            log.exception("cases: a step of partition %s failed: a dead letter", partition)
            return self._crashed(value, exc)

    def _crashed(self, value: bytes, exc: Exception) -> list[Out]:
        try:
            step = json.loads(value)
            if step.get("kind") == "tick":
                return []
            raw = base64.b64decode(step["event"])
            headers = [(k, base64.b64decode(v)) for k, v in step["headers"]]
            origin = str(step.get("origin", ""))
        except Exception:  # not even a step: the record itself is the letter
            raw, headers, origin = value, [], ""
        text = f"{type(exc).__name__}: {exc}"
        letter = rejection_headers(headers, CRASH_REASONS[STAGE], text, STAGE, origin)
        return [Out(self.deadletter, raw, headers=letter)]

    def _step(self, partition: int, step: dict[str, Any], store: CaseStore) -> list[Out]:
        self._at = _from_ms(step["at"])
        self._partition = partition
        raw = base64.b64decode(step["event"])
        headers = [(k, base64.b64decode(v)) for k, v in step["headers"]]
        origin = str(step.get("origin", ""))
        try:
            event = self.codec.decode(raw)
        except BusError as exc:  # e.g. a schema this worker does not know (a rollback)
            return [self._letter(raw, None, headers, origin, exc)]
        record = EnterpriseRecord.model_validate(step["record"])
        state = store.get(event.subject)
        step_id = str(event.event_id)
        if state is not None and step_id in state.done:
            return []  # re-delivered: its effects and state were made already
        # A copy: a step that fails half-way must leave the state as it was.
        state = state.model_copy(deep=True) if state is not None else CaseState()
        before = state.task_counts()
        self.steps += 1
        if step["kind"] == "answer" and event.source == BUS:
            outs = self._timed_out(record, state, event)  # the bus's own task.overdue
            if not outs:
                return []
        elif step["kind"] == "answer":
            try:
                outs = self._answer(record, state, event)
            except BusError as exc:
                state.remember(step_id)
                store.put(event.subject, state)
                return [self._letter(raw, event, headers, origin, exc)]
            outs += self._route(event, raw, headers, record, event.source)  # taken: confirm
        else:
            outs = self._cancel(record, state, event)  # what it ends, before what it starts
            ended = bool(outs)
            matters = self.triggers.get(event.event_type, ()) if step["kind"] == "trigger" else ()
            for matter in matters:  # several matters may start from one event
                outs += self._trigger(matter, record, state, event, partition)
            if not ended and not any(case_id(m, event) in state.reviews for m in matters):
                return outs  # decided at once, nothing to remember: a re-run decides the same
        state.remember(step_id)
        store.put(event.subject, state)
        self._recount(partition, before, state.task_counts())
        return outs

    def _letter(
        self,
        raw: bytes,
        event: Envelope | None,
        headers: Headers,
        origin: str,
        exc: BusError,
    ) -> Out:
        key = event.subject.encode() if event is not None else None
        field = getattr(exc, "field", None)
        letter = rejection_headers(headers, exc.reason, str(exc), STAGE, origin, field)
        return Out(self.deadletter, raw, key=key, headers=letter)

    def _trigger(
        self,
        matter: Matter,
        record: EnterpriseRecord,
        state: CaseState,
        event: Envelope,
        partition: int,
    ) -> list[Out]:
        """Run ``matter`` for its trigger event: open its tasks, or decide at once."""
        facts = matter.facts(event, record)
        if not facts.hold(matter.when):
            return []
        if matter.outcomes:
            self.decided += 1
        opened = self._open_case(matter, facts, record, state, partition)
        if opened is not None:
            return opened
        closing = matter.closing()  # no task to wait for: decided on the record alone
        outs = self._decide(matter.name, closing, closing.facts(event, record, {}), event, ())
        if not outs:
            return []
        parties = {event.source, getattr(event.payload, "requested_by", None)}
        return [self._parties(event.correlation_id, self._with_cases(state, event, parties)), *outs]

    def _known(self, code: str) -> bool:
        return self.ctx.directory.get(code) is not None

    def _decide(
        self,
        matter: str,
        closing: Closing,
        facts: Facts,
        trigger: Envelope,
        assignees: Iterable[str],
    ) -> list[Out]:
        """What a case's outcome issues or emits (nothing if no outcome holds)."""
        outcome = closing.outcome(facts)
        if outcome is None:
            return []
        outs: list[Out] = []
        if outcome.issue == "certificate":
            listed = facts.items(outcome.listing) if outcome.listing else []
            outs.append(self._certificate(trigger, facts.record, listed, result=outcome.result))
        elif outcome.issue == "report":
            listed = facts.items(outcome.listing) if outcome.listing else []
            outs.append(self._report(matter, trigger, facts.record, listed))
        if outcome.emit is not None:
            signed = outcome.issue == "decision"
            outs.append(self._emit(matter, outcome.emit, facts, trigger, assignees, signed))
        return outs

    def _emit(
        self,
        matter: str,
        emit: Emit,
        facts: Facts,
        trigger: Envelope,
        assignees: Iterable[str],
        signed: bool = False,
    ) -> Out:
        """An event the outcome names, its payload built from the facts, its id from the
        trigger; ``signed``: the decision document signed into its payload."""
        event = model_for(emit.event)(
            event_type=emit.event,
            event_id=derived_id(emit.event, str(trigger.event_id)),
            source=BUS,
            occurred_at=self._at,
            subject=trigger.subject,
            correlation_id=trigger.correlation_id,
            causation_id=trigger.event_id,
            payload=facts.build(emit.payload),
        )
        if signed:
            event = sign_decision(self.signer, event)
        self.ctx.metrics.decision_seconds.labels(matter).observe(
            max((datetime.now(UTC) - trigger.occurred_at).total_seconds(), 0.0)
        )
        return self._out(event, trigger.source, *assignees)

    def _report(
        self,
        matter: str,
        request: Envelope,
        record: EnterpriseRecord,
        listed: list[dict[str, Any]],
    ) -> Out:
        """A special credit report: every domain of the directory, signed, from the log alone."""
        p = request.payload
        domains = report_domains(self.ctx.directory, listed)
        draft = UnsignedReport(
            uscc=request.subject,
            serial=new_serial(BUS, f"report/{request.event_id}", requested_at=request.occurred_at),
            request_event_id=str(request.event_id),
            enterprise_name=record.name or record.uscc,
            period_start=p.period_start,
            period_end=p.period_end,
            purpose=p.purpose,
            result="records" if listed else "clean",
            domains=domains,
            issuing_authority=BUS,
            issued_at=self._at,
        )
        signed = sign_report(self.signer, draft).to_payload()
        self.ctx.metrics.decision_seconds.labels(matter).observe(
            max((datetime.now(UTC) - request.occurred_at).total_seconds(), 0.0)
        )
        issued = model_for("report.issued")(
            event_type="report.issued",
            event_id=derived_id("report", str(request.event_id)),
            source=BUS,
            occurred_at=self._at,
            subject=request.subject,
            correlation_id=request.correlation_id,
            causation_id=request.event_id,
            payload=signed,
        )
        return self._out(issued, request.source, p.requested_by)

    def _certificate(
        self,
        request: Envelope,
        record: EnterpriseRecord,
        listed: list[dict[str, Any]],
        *,
        result: str,
    ) -> Out:
        p = request.payload
        issued_at = self._at
        draft = UnsignedCertificate(
            uscc=request.subject,
            serial=new_serial(BUS, str(request.event_id), requested_at=request.occurred_at),
            request_event_id=str(request.event_id),
            enterprise_name=record.name or record.uscc,
            period_start=p.period_start,
            period_end=p.period_end,
            purpose=p.purpose,
            result=result,
            record=[
                {
                    "case_number": e["case_number"],
                    "agency": e.get("agency") or "unknown.agency",
                    "state": e.get("state", "active"),
                    "decided_on": e.get("decided_on"),
                }
                for e in listed
            ],
            issuing_authority=BUS,
            issued_at=issued_at,
        )
        signed = self.signer.sign(draft).to_payload()
        self.ctx.metrics.decision_seconds.labels("compliance-certificate").observe(
            max((datetime.now(UTC) - request.occurred_at).total_seconds(), 0.0)
        )
        issued = model_for("certificate.issued")(
            event_type="certificate.issued",
            event_id=derived_id("certificate", str(request.event_id)),
            source=BUS,
            occurred_at=issued_at,
            subject=request.subject,
            correlation_id=request.correlation_id,
            causation_id=request.event_id,
            payload=signed,
        )
        return self._out(issued, request.source, request.payload.requested_by)

    def _open_case(
        self,
        matter: Matter,
        facts: Facts,
        record: EnterpriseRecord,
        state: CaseState,
        partition: int,
    ) -> list[Out] | None:
        """Open a case with the tasks whose turn has come; ``None`` if there were none."""
        trigger = facts.trigger
        case = case_id(matter, trigger)
        if case in state.reviews:
            return []  # open already: a step re-delivered after it left ``done``
        review: dict[str, Any] = {
            # what decides the case later, as its version said when it was opened:
            # a changed or removed definition never changes a running case
            "matter": matter.name, "version": matter.version, "late": matter.late,
            "opened_at": self._at.timestamp(), "tasks": {}, "steps": {},
            "request": trigger.model_dump(mode="json"),
        }  # fmt: skip
        outs = self._start(case, review, matter.tasks, matter.lead, facts, state)
        if not review["tasks"]:
            return None
        started = set(review["steps"].values()) | set(review.get("skipped", ()))
        later = tuple(t for t in matter.tasks if t.name not in started)
        if matter.outcomes or later or matter.cancel:
            review["closing"] = matter.closing(later).model_dump(
                mode="json", by_alias=True, exclude_defaults=True
            )
        state.reviews[case] = review
        parties = {trigger.source, getattr(trigger.payload, "requested_by", None)}
        parties |= {t.assignee for t in state.tasks.values() if t.case == case}
        parties |= {t.supervisor for t in state.tasks.values() if t.case == case}
        outs.append(
            self._parties(trigger.correlation_id, self._with_cases(state, trigger, parties))
        )
        self._index_due(partition, review, state, record.uscc)
        return outs

    def _start(
        self,
        case: str,
        review: dict[str, Any],
        templates: Iterable[TaskTemplate],
        lead: str,
        facts: Facts,
        state: CaseState,
    ) -> list[Out]:
        """Create the tasks of every step whose turn has come, until no more can start; a
        step with nobody to ask (its list empty, its conditions not met) counts as answered."""
        templates = tuple(templates)
        skipped: list[str] = review.setdefault("skipped", [])
        outs: list[Out] = []
        while True:
            started = set(review["steps"].values()) | set(skipped)
            closed = set(skipped) | {
                name for name in started
                if all(state.tasks[t].closed for t, n in review["steps"].items()
                       if n == name and t in state.tasks)
            }  # fmt: skip
            ready = next_steps(templates, started, closed)
            if not ready:
                break
            for template in ready:
                plan = assign(template, facts, self._known, lead)
                if not plan:
                    skipped.append(template.name)
                    continue
                outs += self._create(case, review, template, plan, lead, facts, state)
        if not skipped:
            del review["skipped"]
        return outs

    def _create(
        self,
        case: str,
        review: dict[str, Any],
        template: TaskTemplate,
        plan: dict[str, list[str]],
        lead: str,
        facts: Facts,
        state: CaseState,
    ) -> list[Out]:
        """The tasks of one step: one per assignee of ``plan`` (assignee -> evidence)."""
        trigger = facts.trigger
        now = self._at.astimezone(CHINA_TZ)
        due = self.calendar.add_working_days(now, template.working_days)
        named = {"requester": getattr(trigger.payload, "requested_by", None) or lead, "lead": lead}
        supervisor = named.get(template.supervisor or "", template.supervisor)
        chain, when = [], due  # after the supervisor, each office a period after the last
        for office in template.escalation:
            when = self.calendar.add_working_days(when, template.working_days)
            chain.append((named.get(office, office), when))
        outs: list[Out] = []
        for assignee, evidence in sorted(plan.items()):
            task_id = task_id_for(template.name, case, assignee)
            review["tasks"][task_id] = evidence
            review["steps"][task_id] = template.name
            state.tasks[task_id] = TaskEntry(
                task_id=task_id, matter=review["matter"], case=case, assignee=assignee,
                supervisor=supervisor, due_at=due, chain=chain,
            )  # fmt: skip
            title = facts.but(evidence=evidence).render(template.title)
            created = model_for("task.created")(
                event_type="task.created",
                event_id=derived_id("task.created", task_id),
                source=BUS,
                occurred_at=now,
                subject=trigger.subject,
                correlation_id=trigger.correlation_id,
                causation_id=trigger.event_id,  # every task of a case: its trigger's
                payload={
                    "task_id": task_id, "matter": review["matter"], "title": title[:500],
                    "assignee": assignee, "due_at": due,
                    "working_days": template.working_days, "supervisor": supervisor,
                    "evidence": evidence,
                },
            )  # fmt: skip
            outs.append(self._out(created, assignee))
        return outs

    def _index_due(
        self, partition: int, review: dict[str, Any], state: CaseState, uscc: str
    ) -> None:
        """Put the case's open tasks in the deadline index of their partition."""
        due_index = self._due.setdefault(partition, [])
        for task_id in review["tasks"]:
            task = state.tasks.get(task_id)
            if task is not None and not task.closed:
                heapq.heappush(due_index, (task.due_at, uscc))

    def _answer(self, record: EnterpriseRecord, state: CaseState, event: Envelope) -> list[Out]:
        """A department accepts, completes or rejects a task, or sends an event a matter says
        answers one (an opinion).

        Only the task's assignee may answer it; anything else is a dead letter.
        """
        p = event.payload
        by: tuple[str, str | None] | None = None  # (answer, note) an event gave
        if event.event_type in ANSWERS:
            task = state.tasks.get(p.task_id)
        else:
            task, by = self._answered_by(record, state, event)
        if task is None:
            key = getattr(p, "task_id", None) or getattr(p, "application_number", "?")
            raise BusError(f"no open task {key} for {record.uscc}", reason="task.unknown")
        if event.source != task.assignee:
            raise BusError(
                f"{event.source} may not answer task {task.task_id}: it is assigned to "
                f"{task.assignee}",
                reason="task.not_assignee",
            )
        if task.closed:
            raise BusError(f"task {task.task_id} is already {task.state}", reason="task.closed")
        if event.event_type == "task.accepted":
            task.state = "accepted"
            return []
        outs: list[Out] = []
        if by is not None:
            task.state, task.outcome = "completed", by[0]
            task_notes = state.reviews.get(task.case, {}).setdefault("notes", {})
            task_notes[task.assignee] = by[1]
            # The event is the answer: its task is completed, and says so on the task topic
            # like any other, or the assignee's and the operators' views keep it open.
            completed = {"task_id": task.task_id, "outcome": task.outcome, "note": by[1]}
            outs.append(self._task_event(record, state, task, "task.completed", completed, event))
        elif event.event_type == "task.completed":
            task.state, task.outcome = "completed", p.outcome
        else:
            task.state, task.outcome = "rejected", "rejected"
        return outs + self._close_case_if_done(record, state, task.case)

    def _timeout_of(self, state: CaseState, task: TaskEntry) -> Timeout | None:
        """What ``task`` counts as if no answer comes by its deadline, as its case keeps it."""
        review = state.reviews.get(task.case)
        how = self._closing_of(review) if review is not None else None
        if review is None or how is None:
            return None
        name = (review.get("steps") or {}).get(task.task_id, "")
        return how.steps.get(name, StepClosing()).timeout

    def _timed_out(self, record: EnterpriseRecord, state: CaseState, event: Envelope) -> list[Out]:
        """The bus's ``task.overdue`` came back through the flow, with the record as of it: a
        task whose template says ``timeout`` ends (``task.cancelled``) counted as its answer,
        and its case goes on. Anything else the bus says about tasks is not a step."""
        if event.event_type != "task.overdue":
            return []
        task = state.tasks.get(event.payload.task_id)
        timeout = self._timeout_of(state, task) if task is not None else None
        if task is None or timeout is None or task.closed:
            return []
        task.state, task.outcome = "cancelled", timeout.answer
        state.reviews[task.case].setdefault("notes", {})[task.assignee] = timeout.note
        due = task.due_at.astimezone(UTC)
        why = f"no answer by {due:%Y-%m-%d %H:%M} UTC: counted as {timeout.answer}"
        body = {"task_id": task.task_id, "reason": why}
        ended = self._task_event(record, state, task, "task.cancelled", body, event)
        return [ended, *self._close_case_if_done(record, state, task.case)]

    def _answered_by(
        self, record: EnterpriseRecord, state: CaseState, event: Envelope
    ) -> tuple[TaskEntry | None, tuple[str, str | None] | None]:
        """The task ``event`` answers, as its matter's ``answered_by`` says, and the answer
        and note it gives; a case that matches but asked another department: refused."""
        for case, review in state.reviews.items():
            how = self._closing_of(review)
            if how is None:
                continue
            steps = review.get("steps") or dict.fromkeys(review["tasks"], _only_step(how))
            trigger = model_for(review["request"]["event_type"]).model_validate(review["request"])
            seen = how.facts(trigger, record, {}).seeing(event)
            asked = False
            for task_id, name in steps.items():
                by = how.steps.get(name, StepClosing()).answered_by
                if by is None or by.event != event.event_type or not seen.hold(by.match):
                    continue
                asked = True
                task = state.tasks.get(task_id)
                if task is not None and task.case == case and task.assignee == event.source:
                    note = seen.resolve(by.note) if by.note else None
                    return task, (seen.render(by.answer), note)
            if asked:
                raise BusError(
                    f"{event.source} was not asked for this {event.event_type} "
                    f"(case {review['matter']} of {record.uscc})",
                    reason="task.not_assignee",
                )
        return None, None

    def _close_case_if_done(
        self, record: EnterpriseRecord, state: CaseState, case: str
    ) -> list[Out]:
        """A task was answered: start the steps whose turn came; decide once all are done."""
        review = state.reviews.get(case)
        if review is None:
            return []
        how = self._closing_of(review)
        tasks = [state.tasks[t] for t in review["tasks"] if t in state.tasks]
        if how is None:
            if not all(t.closed for t in tasks):
                return []
            self._forget_case(state, case, tasks)
            return []
        trigger = model_for(review["request"]["event_type"]).model_validate(review["request"])
        facts = how.facts(trigger, record, self._answered(review, how, tasks))
        if how.later and (more := self._start(case, review, how.later, how.lead, facts, state)):
            self._index_due(self._partition, review, state, record.uscc)
            return more  # the case goes on with the steps whose turn came
        if not all(t.closed for t in tasks):
            return []
        closing = self._decide(review["matter"], how, facts, trigger, (t.assignee for t in tasks))
        self._forget_case(state, case, tasks)
        return closing

    def _answered(
        self, review: dict[str, Any], how: Closing, tasks: list[TaskEntry]
    ) -> dict[str, list[dict[str, Any]]]:
        """A case's tasks by step, with their answers as the matter counts them."""
        steps = review.get("steps") or dict.fromkeys(review["tasks"], _only_step(how))
        notes = review.get("notes", {})
        answered: dict[str, list[dict[str, Any]]] = {}
        for t in sorted(tasks, key=lambda t: t.assignee):
            step = how.steps.get(steps.get(t.task_id, ""), StepClosing())
            answered.setdefault(steps.get(t.task_id, ""), []).append({
                "task_id": t.task_id, "assignee": t.assignee, "answer": step.answer(t.outcome),
                "note": notes.get(t.assignee), "evidence": review["tasks"].get(t.task_id, []),
            })  # fmt: skip
        return answered

    def _forget_case(self, state: CaseState, case: str, tasks: list[TaskEntry]) -> None:
        del state.reviews[case]
        for t in tasks:
            state.forget_task(t.task_id)

    def _cancel(self, record: EnterpriseRecord, state: CaseState, event: Envelope) -> list[Out]:
        """End the cases ``event`` cancels: their open tasks get ``task.cancelled``."""
        outs: list[Out] = []
        for case, review in list(state.reviews.items()):
            how = self._closing_of(review)
            if how is None or not how.cancel:
                continue
            trigger = model_for(review["request"]["event_type"]).model_validate(review["request"])
            spec = how.cancelled_by(how.facts(trigger, record, {}), event)
            if spec is None:
                continue
            tasks = [state.tasks[t] for t in review["tasks"] if t in state.tasks]
            for task in tasks:
                if task.closed:
                    continue
                task.state = "cancelled"
                reason = f"case {spec.result}: {event.event_type} {event.event_id}"
                body = {"task_id": task.task_id, "reason": reason}
                outs.append(self._task_event(record, state, task, "task.cancelled", body, event))
            log.info("cases: %s %s of %s ended by %s", review["matter"], spec.result,
                     record.uscc, event.event_type)  # fmt: skip
            self._forget_case(state, case, tasks)
        return outs

    def _closing_of(self, review: dict[str, Any]) -> Closing | None:
        """What decides a case, as kept with it (a case from before it was kept: its rule's)."""
        if kept := review.get("closing"):
            key = json.dumps(kept, sort_keys=True)
            if (found := self._closings.get(key)) is None:
                found = self._closings[key] = Closing.model_validate(kept)
            return found
        return _legacy(str(review.get("rule")))

    def _late_of(self, review: dict[str, Any], name: str) -> str:
        """What a case's late tasks get, as its version said (an older case: today's)."""
        if late := review.get("late"):
            return str(late)
        matter = self.matters.get(name)
        return matter.late if matter is not None else "escalate_to_supervisor"

    # -- deadlines ---------------------------------------------------------------------------

    def _tick(self, partition: int, now: datetime, store: CaseStore) -> list[Out]:
        """Tasks past their deadline: ``task.overdue`` once, then ``task.escalated`` once."""
        outs: list[Out] = []
        due = self._due.get(partition, [])
        touched: set[str] = set()
        while due and due[0][0] <= now:
            _, uscc = heapq.heappop(due)
            if uscc in touched:
                continue  # done in this tick already
            touched.add(uscc)
            state = store.get(uscc)
            if state is None:
                continue
            before = state.task_counts()
            changed = False
            for task in state.open_tasks():
                if task.due_at > now:
                    continue
                late = self._late_of(state.reviews.get(task.case, {}), task.matter)
                if not task.overdue:
                    task.overdue = changed = True
                    self.steps += 1
                    overdue = {"task_id": task.task_id, "assignee": task.assignee,
                               "due_at": task.due_at}  # fmt: skip
                    outs.append(self._task_event(None, state, task, "task.overdue", overdue, uscc))
                if late != "escalate_to_supervisor" or self._timeout_of(state, task) is not None:
                    continue  # a task that times out ends when its task.overdue comes back
                why = f"not completed by {task.due_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                if not task.escalated and task.supervisor:
                    task.escalated = changed = True
                    self.steps += 1
                    escalated = {"task_id": task.task_id, "escalated_to": task.supervisor,
                                 "reason": why}  # fmt: skip
                    outs.append(
                        self._task_event(None, state, task, "task.escalated", escalated, uscc)
                    )
                while (step := task.next_escalation) is not None and step[1] <= now:
                    office, when = step
                    task.escalations += 1
                    task.escalated = changed = True
                    self.steps += 1
                    escalated = {"task_id": task.task_id, "escalated_to": office, "reason": why}
                    outs.append(self._task_event(None, state, task, "task.escalated", escalated,
                                                 uscc, key=office, at=when))  # fmt: skip
                if (step := task.next_escalation) is not None:
                    heapq.heappush(due, (step[1], uscc))  # the chain goes on
            if changed:
                store.put(uscc, state)
                self._recount(partition, before, state.task_counts())
        self._recounted = True  # a tick refreshes the gauge whatever moved
        self.ctx.metrics.calendar_fallback_years.set(len(self.calendar.fallback_years))
        return outs

    def _index(self, partition: int, store: CaseStore) -> None:
        """Deadlines and task counts of a partition, built the first time it is handled here."""
        if partition in self._due:
            return
        due: list[tuple[datetime, str]] = []
        counts: Counter[TaskKey] = Counter()
        for uscc, state in store.items(partition):
            for task in state.open_tasks():
                if not (task.overdue and task.escalated):
                    due.append((task.due_at, uscc))
                elif (step := task.next_escalation) is not None:
                    due.append((step[1], uscc))
            counts.update(state.task_counts())
        heapq.heapify(due)
        self._due[partition] = due
        self._task_counts[partition] = counts
        self._recounted = True

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions given away: their deadlines and counts are another worker's now."""
        for p in partitions:
            self._due.pop(p, None)
            self._task_counts.pop(p, None)
        self._recounted = True
        self.export_task_counts()

    # -- metrics -----------------------------------------------------------------------------

    def _recount(self, partition: int, before: Counter[TaskKey], after: Counter[TaskKey]) -> None:
        if before == after:
            return
        counts = self._task_counts.setdefault(partition, Counter())
        counts.update(after)
        counts.subtract(before)
        self._task_counts[partition] = +counts  # drop what fell to zero
        self._recounted = True

    def export_task_counts(self) -> None:
        """Set the task gauge from the partitions this worker holds, if anything moved.

        Every matter has a series for every state (with an empty department) even while it
        has no task, so a dashboard tells "none" from "not reported"; a combination that
        emptied goes back to zero rather than keeping its last value.
        """
        if not self._recounted:
            return
        self._recounted = False
        gauge = self.ctx.metrics.tasks
        total: Counter[TaskKey] = Counter()
        for counts in self._task_counts.values():
            total.update(counts)
        for name in self.matters:
            for state in TASK_STATES:
                gauge.labels(name, "", state).set(0)
        for key in self._task_series - total.keys():
            gauge.labels(*key).set(0)
        for key, n in total.items():
            gauge.labels(*key).set(n)
        self._task_series |= total.keys()

    # -- outputs -----------------------------------------------------------------------------

    def _route(
        self,
        event: Envelope,
        value: bytes,
        headers: Headers,
        record: EnterpriseRecord,
        notify: str,
    ) -> list[Out]:
        profile = {**record.profile, "status": record.status}
        registered = record.status != "unknown"
        return self.router.outs(event, value, headers, profile, notify, registered=registered)

    def _task_event(
        self,
        record: EnterpriseRecord | None,
        state: CaseState,
        task: TaskEntry,
        event_type: str,
        payload: dict[str, Any],
        cause: Envelope | str,
        *,
        key: str = "",
        at: datetime | None = None,
    ) -> Out:
        """A lifecycle event the bus publishes about ``task``, caused by an event or a deadline
        (``key`` tells apart several of one type, such as the escalations of a chain).

        Dated by its cause in the log, or, for a deadline passing, by the deadline itself.
        """
        review = state.reviews.get(task.case, {})
        request = review.get("request", {})
        caused = isinstance(cause, Envelope)
        event = model_for(event_type)(
            event_type=event_type,
            event_id=derived_id(event_type, task.task_id, *((key,) if key else ())),
            source=BUS,
            subject=record.uscc if record is not None else str(cause),
            occurred_at=self._at if caused else (at or task.due_at),
            correlation_id=request.get("correlation_id") or task.case,
            # a deadline's cause is the case's trigger
            causation_id=cause.event_id
            if isinstance(cause, Envelope)
            else uuid.UUID(request.get("event_id") or task.case),
            payload=payload,
        )
        notify = [task.assignee]
        if event_type == "task.escalated":
            notify.append(str(payload["escalated_to"]))
        return self._out(event, *notify)

    @staticmethod
    def _with_cases(
        state: CaseState, trigger: Envelope, parties: set[str | None]
    ) -> set[str | None]:
        """``parties`` and those of the other open cases one correlation id names: the parties
        record is kept per correlation id, and one trigger may open several matters."""
        named = trigger.correlation_id
        others = {c for c, r in state.reviews.items()
                  if r.get("request", {}).get("correlation_id") == named}  # fmt: skip
        for t in state.tasks.values():
            if t.case in others:
                parties |= {t.assignee, t.supervisor}
        return parties

    def _parties(self, correlation_id: str, parties: set[str | None]) -> Out:
        """Who takes part in a case, for the gateway's access check (``state.case-parties``)."""
        names = sorted(p for p in parties if p)
        return Out(
            self.ctx.settings.topic(CASE_PARTIES.name),
            json.dumps(names).encode(),
            key=correlation_id.encode(),
        )

    def _out(self, event: Envelope, *notify: str | None) -> Out:
        """A decision of the bus for its canonical topic; ``notify``: who must receive it."""
        from bus.agents.route import NOTIFY

        headers = event.kafka_headers()
        recipients = ",".join(dict.fromkeys(n for n in notify if n))
        if recipients:
            headers.append((NOTIFY, recipients.encode()))
        return Out(
            canonical_topic(self.ctx.settings, event.event_type),
            self.codec.encode(event),
            key=event.subject.encode(),
            headers=headers,
        )


def install(app: faust.App, ctx: Context, signer: Signer) -> CaseEngine:
    """Register the case agent, its table and its deadline timer on ``app``."""
    s = ctx.settings
    engine = CaseEngine(ctx, signer)
    # acks=False: Faust neither tracks nor commits this topic's offsets; the writer commits
    # each partition's, after its steps' outputs and state are written.
    topic = app.topic(
        s.topic(CASES.name),
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        acks=False,
    )  # fmt: skip
    # Keyed by the raw USCC bytes and placed by the producer's partitioner, as the topic is:
    # an enterprise's changelog record lands in its steps' partition number. (Faust's default,
    # "the current event's partition", is a batch's last event inside take().)
    table = app.Table(
        CASES_TABLE, default=None, key_type=bytes, value_type=bytes,  # bytes: "raw", no decoding
        use_partitioner=True, partitions=s.partitions,
        options=ROCKSDB_OPTIONS if s.table_store == "rocksdb" else None,
    )  # fmt: skip
    store = TableStore(table, s.partitions)
    name = topic.get_topic_name()
    assert table.changelog_topic.get_topic_name() == cases_changelog(s)  # read by verdicts

    async def commit_plain(offsets: dict[TopicPartition, int]) -> None:
        # Without transactions (an embedded development broker): the group's own commit.
        from faust.types import TP

        consumer: Any = app.consumer  # ``_commit``: the group commit of offsets given, not acked
        await consumer._commit({TP(tp.topic, tp.partition): o for tp, o in offsets.items()})

    writer = FencedWriter(s, cases_changelog(s), name, commit_plain, ctx.metrics)

    gaps = GapCheck(s, name, s.app_id, on_filled=ctx.metrics.case_steps_refetched.inc)

    @app.agent(topic, name="cases")
    async def cases(stream: Any) -> None:
        async for batch in stream.take_events(s.batch_size, within=s.case_batch_wait):
            delivered: dict[int, dict[int, bytes]] = {}
            for event in batch:
                delivered.setdefault(event.message.partition, {})[event.message.offset] = (
                    event.value
                )
            outs: dict[int, list[Out]] = {}
            firsts: dict[int, int] = {}  # the first offset decided, by partition
            ends: dict[int, int] = {}  # the next offset to read, by partition
            for p, records in delivered.items():
                steps = await gaps.complete(p, sorted(records.items()))
                if not steps:  # nothing new, or not read in time: the next delivery reads it
                    continue
                firsts[p], ends[p] = steps[0][0], steps[-1][0] + 1
                gaps.advance(p, ends[p])
                for _, value in steps:
                    outs.setdefault(p, []).extend(engine.handle(p, value, store))
            states = store.take()
            # The partitions' transactions run side by side: each is several round trips.
            parts = sorted(ends.keys() | states.keys())
            results = await asyncio.gather(
                *(writer.write(p, outs.get(p, []), states.get(p, {}), ends.get(p)) for p in parts),
                return_exceptions=True,
            )
            for p, result in zip(parts, results, strict=True):
                if isinstance(result, (*FENCED, NotOwned)):
                    # Another worker owns the partition: nothing of this batch is kept here.
                    # Its offsets are not committed, so the owner decides these steps again,
                    # the same way, on committed state.
                    log.warning("cases: partition %s is another worker's now (%s): its steps "
                                "in hand are dropped here", p, type(result).__name__)  # fmt: skip
                    engine.forget([p])
                    gaps.forget([p])
                elif isinstance(result, BaseException):
                    # Nothing of it was kept: its steps are read and decided again.
                    log.error("cases: writing partition %s failed (%r); its steps are read "
                              "again from offset %s", p, result, firsts.get(p))  # fmt: skip
                    engine.forget([p])
                    if p in firsts:  # the next record delivered reads them again from there
                        gaps.rewind(p, firsts[p], ends[p])
                    await asyncio.sleep(1.0)
                else:
                    store.apply(p, states.get(p, {}), result)
            engine.export_task_counts()
            ctx.metrics.case_steps.inc(len(batch))

    @app.timer(s.task_check_interval)
    async def deadlines() -> None:
        at = datetime.fromtimestamp(time.time() + s.clock_skew, UTC)
        mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name)
        for p in mine:
            try:
                await app.producer.send(name, None, tick_step(at), p, None, None)
            except Exception as exc:  # a partition lost while ticking: its new owner ticks
                log.info("cases: tick to partition %s skipped: %r", p, exc)

    @app.timer(COMMIT_S)
    async def commit_offsets() -> None:
        await writer.commit()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        got = args[0] if args else kwargs.get("assigned", ())
        # Fence the partitions' previous owners now, before their state is restored: their
        # open transactions are aborted, so the restore does not wait for them.
        mine = [tp.partition for tp in got if tp.topic == name]
        gaps.forget(mine)  # their next offset is the group's committed one
        await writer.claim(mine)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        lost = {tp.partition for tp in (args[0] if args else kwargs.get("revoked", ()))
                if tp.topic == name}  # fmt: skip
        engine.forget(lost)
        gaps.forget(lost)
        if lost:
            # What is done is committed now, or the next owner decides those steps again (the
            # same way, but twice). A zombie's commit is fenced; their owner re-decides them.
            try:  # bounded: a write stuck in retries must not hold the rebalance
                await asyncio.wait_for(writer.commit(lost), timeout=s.session_timeout / 2)
            except Exception as exc:
                log.info("cases: offsets not committed on revocation: %r", exc)
        await writer.release(lost)

    @app.service
    class _Writers(Service):  # stops the producers with the worker
        async def on_stop(self) -> None:
            await writer.stop()
            await gaps.stop()

    return engine
