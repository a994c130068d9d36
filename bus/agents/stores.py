"""Agent state that survives restarts and moves with its partitions.

Each store keeps, per input partition, what an agent needs to remember, and writes it to a
changelog topic with the same partition count, into the same partition number: when a
partition moves to another worker, that worker reads the partition's changelog and has the
state. The batch runtime (``bus.agents.runtime``) decides *when* changelog records are
written (after the batch's outputs are acknowledged); the stores decide *what* they say.

* ``SeenStore`` — ids already handled (de-duplication); one record per batch, time-retained.
* ``PartedStore`` — one object per key (an enterprise's record), written part by part
  (one changelog record per changed part per batch), compacted; held as those parts' bytes,
  the most recently used decoded.
* ``KeyedStore`` — one short text per key (who owns a decision), compacted.
"""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from aiokafka import ConsumerRecord, TopicPartition

from bus.agents.out import Out
from bus.settings import Settings
from bus.streaming.client import kafka_consumer

V = TypeVar("V")
Apply = Callable[["ConsumerRecord[bytes, bytes]"], None]


class Store(Protocol):
    """What the runtime needs from a store."""

    topic: str

    def take_pending(self) -> list[Out]:
        """Changelog records for every change since the last call."""
        ...

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (moved away, or to be re-read after a failed batch)."""
        ...

    async def restore(
        self, settings: Settings, partitions: Iterable[int], since: Mapping[int, int] = {}
    ) -> int:
        """Rebuild partitions from the changelog; returns how many records were applied.

        A partition in ``since`` is still held as it was at that changelog offset (or
        later): only the records from there on are applied to it.
        """
        ...


async def read_changelog(
    settings: Settings,
    topic: str,
    partitions: Iterable[int],
    apply: Apply,
    since: Mapping[int, int] = {},
) -> int:
    """Apply every record of ``topic``'s ``partitions``, oldest first, up to the end offsets
    (from offset ``since[p]`` where given, else from the start)."""
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return 0
    consumer = kafka_consumer(settings)
    await consumer.start()
    applied = 0
    try:
        consumer.assign(tps)
        if whole := [tp for tp in tps if tp.partition not in since]:
            await consumer.seek_to_beginning(*whole)  # (none given: every partition)
        for tp in tps:
            if tp.partition in since:
                consumer.seek(tp, since[tp.partition])
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=500)
            for records in batches.values():
                for r in records:
                    apply(r)
            applied += sum(len(rs) for rs in batches.values())
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return applied


class SeenStore:
    """Which ids each partition has handled, kept in a time-retained changelog topic.

    One changelog record per batch and partition (the 16-byte ids concatenated). The topic's
    retention is the de-duplication window: ids older than it are forgotten on restore.
    """

    ID_BYTES = 16

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._ids: dict[int, set[bytes]] = {}
        self._pending: dict[int, list[bytes]] = {}

    def seen(self, partition: int, key: bytes) -> bool:
        """True when ``key`` was handled on ``partition`` within the window."""
        return key in self._ids.get(partition, ())

    def add(self, partition: int, keys: Sequence[bytes]) -> None:
        """Remember ``keys`` now; they become durable with the batch's changelog record."""
        self._ids.setdefault(partition, set()).update(keys)
        self._pending.setdefault(partition, []).extend(keys)

    def take_pending(self) -> list[Out]:
        """The changelog records for everything added since the last call."""
        outs = [Out(self.topic, b"".join(k), partition=p) for p, k in self._pending.items() if k]
        self._pending = {}
        return outs

    def size(self) -> int:
        """Ids held in memory across all partitions."""
        return sum(len(s) for s in self._ids.values())

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions."""
        for p in partitions:
            self._ids.pop(p, None)
            self._pending.pop(p, None)

    async def restore(
        self, settings: Settings, partitions: Iterable[int], since: Mapping[int, int] = {}
    ) -> int:
        """Read the ids of ``partitions`` back from the changelog."""
        n = self.ID_BYTES

        def apply(r: ConsumerRecord[bytes, bytes]) -> None:
            v = r.value or b""
            self._ids.setdefault(r.partition, set()).update(
                v[i : i + n] for i in range(0, len(v), n)
            )

        parts = list(partitions)
        for p in parts:
            self._ids.setdefault(p, set())
        await read_changelog(settings, self.topic, parts, apply, since)
        return sum(len(self._ids[p]) for p in parts)


LIVE_OBJECTS = 20_000
"""Objects a ``PartedStore`` keeps decoded (the most recently used); the rest are held as their
changelog bytes, about a third of the memory (docs/benchmarks.md, state at city scale)."""


class PartedStore(Generic[V]):
    """One object per key, written to a compacted changelog part by part, held as those parts.

    An enterprise's record grows with its history; rewriting all of it whenever a penalty is
    added would write megabytes per batch. Here the caller says which parts changed
    (``put(partition, key, value, parts)``), and only those parts are written, each as its
    own changelog key ``<key> US <part>`` (compaction keeps the last of each).

    At rest an object is the bytes of its parts, as its changelog says them; ``live`` objects
    used last are kept decoded, and another is decoded from its parts when asked for, as a
    restore would have built it. A restore therefore only files bytes away.
    """

    SEP = "\x1f"

    def __init__(
        self,
        topic: str,
        new: Callable[[str], V],
        encode_part: Callable[[V, str], bytes | None],
        apply_part: Callable[[V, str, bytes | None], None],
        *,
        live: int = LIVE_OBJECTS,
    ) -> None:
        self.topic = topic
        self._new = new
        self._encode_part = encode_part
        self._apply_part = apply_part
        self.live = live
        self._packed: dict[int, dict[str, dict[str, bytes]]] = {}  # in changelog order
        self._live: OrderedDict[tuple[int, str], V] = OrderedDict()
        self._dirty: dict[int, dict[str, set[str]]] = {}

    def get(self, partition: int, key: str) -> V | None:
        """The object of ``key`` in ``partition``, if any."""
        obj = self._live.get((partition, key))
        if obj is not None:
            self._live.move_to_end((partition, key))
            return obj
        parts = self._packed.get(partition, {}).get(key)
        if parts is None:
            return None
        obj = self._new(key)
        for part, value in parts.items():
            self._apply_part(obj, part, value)
        self._live[partition, key] = obj
        if len(self._live) > 2 * self.live:  # many reads and no batch end: keep it bounded
            self._evict()
        return obj

    def put(self, partition: int, key: str, value: V, parts: Iterable[str]) -> None:
        """Hold ``value``; ``parts`` of it are written with the batch's changelog."""
        self._live[partition, key] = value
        self._live.move_to_end((partition, key))
        self._dirty.setdefault(partition, {}).setdefault(key, set()).update(parts)

    def items(self, partition: int | None = None) -> Iterator[tuple[int, str, V]]:
        """(partition, key, object) for one partition or all held here (each decoded)."""
        held = {*self._packed, *(p for p, _ in self._live)}
        for p in [partition] if partition is not None else sorted(held):
            packed = self._packed.get(p, {})
            keys = [*packed, *(k for q, k in self._live if q == p and k not in packed)]
            for k in keys:
                v = self.get(p, k)
                if v is not None:
                    yield p, k, v

    def __len__(self) -> int:
        unwritten = sum(1 for p, k in self._live if k not in self._packed.get(p, {}))
        return sum(len(d) for d in self._packed.values()) + unwritten

    def take_pending(self) -> list[Out]:
        """One changelog record per changed part (a tombstone for a removed one)."""
        outs = []
        for p, keys in self._dirty.items():
            packed = self._packed.setdefault(p, {})
            for key, parts in keys.items():
                value = self._live.get((p, key))
                held = packed.setdefault(key, {})
                for part in sorted(parts):
                    encoded = None if value is None else self._encode_part(value, part)
                    changelog_key = f"{key}{self.SEP}{part}".encode()
                    outs.append(Out(self.topic, encoded, key=changelog_key, partition=p))
                    held.pop(part, None)  # to the end, where compaction keeps it
                    if encoded is not None:
                        held[sys.intern(part)] = encoded
                if not held:  # every part removed: nothing left to hold, as after a restore
                    del packed[key]
                    self._live.pop((p, key), None)
        self._dirty = {}
        self._evict()
        return outs

    def _evict(self) -> None:
        """Decoded objects beyond ``live``, least recently used first, unless not yet written."""
        excess = len(self._live) - self.live
        for k in list(itertools.islice(self._live, max(excess, 0))):
            if k[1] not in self._dirty.get(k[0], ()) and k[1] in self._packed.get(k[0], ()):
                del self._live[k]

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions."""
        gone = set(partitions)
        for p in gone:
            self._packed.pop(p, None)
            self._dirty.pop(p, None)
        for k in [k for k in self._live if k[0] in gone]:
            del self._live[k]

    async def restore(
        self, settings: Settings, partitions: Iterable[int], since: Mapping[int, int] = {}
    ) -> int:
        """Rebuild ``partitions`` from their changelog: each object's parts, as bytes."""

        def apply(r: ConsumerRecord[bytes, bytes]) -> None:
            self.file(r.partition, r.key or b"", r.value)
            if r.partition in since:  # held decoded from before: decode it again when asked
                self._live.pop((r.partition, (r.key or b"").decode().partition(self.SEP)[0]), None)

        parts = list(partitions)
        self.drop(p for p in parts if p not in since)
        for p in parts:
            self._packed.setdefault(p, {})
        return await read_changelog(settings, self.topic, parts, apply, since)

    def file(self, partition: int, changelog_key: bytes, value: bytes | None) -> None:
        """Hold one changelog record as it was written (what a restore does with each)."""
        key, _, part = changelog_key.decode().partition(self.SEP)
        packed = self._packed.setdefault(partition, {})
        held = packed.setdefault(key, {})
        held.pop(part, None)
        if value is not None:
            held[sys.intern(part)] = value
        elif not held:
            del packed[key]


class KeyedStore:
    """One short text per key, per partition, in a compacted changelog topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._data: dict[int, dict[str, str]] = {}
        self._pending: dict[int, dict[str, str]] = {}

    def get(self, partition: int, key: str) -> str | None:
        """The value of ``key`` in ``partition``, if any."""
        return self._data.get(partition, {}).get(key)

    def put(self, partition: int, key: str, value: str) -> None:
        """Hold ``value`` now; it becomes durable with the batch's changelog."""
        self._data.setdefault(partition, {})[key] = value
        self._pending.setdefault(partition, {})[key] = value

    def __len__(self) -> int:
        return sum(len(d) for d in self._data.values())

    def take_pending(self) -> list[Out]:
        """One changelog record per key written since the last call."""
        outs = [
            Out(self.topic, value.encode(), key=key.encode(), partition=p)
            for p, keys in self._pending.items()
            for key, value in keys.items()
        ]
        self._pending = {}
        return outs

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions."""
        for p in partitions:
            self._data.pop(p, None)
            self._pending.pop(p, None)

    async def restore(
        self, settings: Settings, partitions: Iterable[int], since: Mapping[int, int] = {}
    ) -> int:
        """Rebuild ``partitions`` from their changelog."""

        def apply(r: ConsumerRecord[bytes, bytes]) -> None:
            data = self._data.setdefault(r.partition, {})
            key = (r.key or b"").decode()
            if r.value is None:
                data.pop(key, None)
            else:
                data[key] = r.value.decode()

        parts = list(partitions)
        for p in parts:
            self._data.setdefault(p, {})
        return await read_changelog(settings, self.topic, parts, apply, since)
