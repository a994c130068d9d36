"""Where the case engine keeps each enterprise's cases: ``CaseState``, in a Faust table.

Values are the changelog's own JSON bytes; a batch's states reach the table only after its
transaction is committed (``FencedWriter``), through the store's changelog path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from bus.agents.runtime import key_hash
from bus.domain.record import TaskEntry
from bus.domain.tasks import TaskKey

KEEP_DONE = 32
"""Steps an enterprise's state remembers, so a re-delivered step is recognised."""
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "block_cache_size": 32 * 1024**2,
}
"""Per partition's database, at most ~48 MB in memory; Faust's defaults allow 2.2 GB."""


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

    def items(self, partitions: Collection[int]) -> Iterator[tuple[int, str, CaseState]]:
        """Every state of ``partitions``, with its partition, in one pass over the store."""
        ...


class MemoryCaseStore:
    """``CaseStore`` in a dict: for tests and ``bench``, where no table runs."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.data: dict[str, CaseState] = {}

    def get(self, uscc: str) -> CaseState | None:
        return self.data.get(uscc)

    def put(self, uscc: str, state: CaseState) -> None:
        self.data[uscc] = state

    def items(self, partitions: Collection[int]) -> Iterator[tuple[int, str, CaseState]]:
        wanted = set(partitions)
        for uscc, state in list(self.data.items()):
            if (p := key_hash(uscc.encode()) % self.partitions) in wanted:
                yield p, uscc, state


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

    def items(self, partitions: Collection[int]) -> Iterator[tuple[int, str, CaseState]]:
        wanted, n = set(partitions), self.partitions
        # A snapshot first, so the table may change while the states are decoded. A list
        # comprehension: list() would first count a RocksDB table, a walk of its own.
        rows = [row for row in self.table.items()]
        for key, raw in rows:
            if raw and (p := key_hash(key) % n) in wanted:
                yield p, key.decode(), CaseState.model_validate_json(raw)

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
