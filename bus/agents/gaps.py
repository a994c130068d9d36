"""Every step of a partition reaches the case engine, in order: what a delivery skipped is read.

Faust 0.15 can drop records before any agent sees them (docs/architecture.md, "every step
reaches the engine"; its cost in docs/benchmarks.md). The engine commits its own offsets, so
it checks that a partition's records follow on; a skipped range is read again with a
read-committed consumer of its own, and Faust is never sought. One skipped offset is taken
for a commit marker unread, except where drops happen: below the partition's end offset at
its assignment, and after a failed write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bus.settings import Settings
from bus.streaming.client import kafka_admin, kafka_consumer

log = logging.getLogger(__name__)

CHECK_S = 10.0
"""Longest a read of a range takes before the range is left for its records' next delivery."""

Record = tuple[int, bytes]
"""A record of the partition: its offset and value."""


class GapCheck:
    """The next offset each partition of ``topic`` should deliver, and its records read again."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group: str,
        on_filled: Callable[[int], object] | None = None,
    ) -> None:
        self.settings = settings
        self.on_filled = on_filled  # told how many skipped records a read found
        self.topic = topic
        self.group = group
        self.next: dict[int, int] = {}  # by partition; unknown until its first batch
        # Below this offset a single skipped offset is read too (see the module docstring).
        self.suspect: dict[int, int] = {}
        self.reads = 0  # ranges read because offsets were skipped
        self.filled = 0  # records found by those reads that the delivery had skipped
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions assigned or revoked: their next offset is the group's committed one."""
        for p in partitions:
            self.next.pop(p, None)
            self.suspect.pop(p, None)

    def advance(self, partition: int, end: int) -> None:
        """Records before ``end`` were decided."""
        self.next[partition] = end

    def rewind(self, partition: int, start: int, end: int) -> None:
        """Records from ``start`` to ``end`` were not decided after all (a write failed): the
        next delivery reads them again, a single skipped offset among them included."""
        self.next[partition] = start
        self.suspect[partition] = max(end, self.suspect.get(partition, 0))

    async def complete(self, partition: int, delivered: Sequence[Record]) -> list[Record] | None:
        """The partition's records from its next offset up to the last of ``delivered``.

        ``delivered`` (in offset order) when it skips nothing; otherwise the committed records
        of that range as a read returns them, the skipped ones included. Records before the
        next offset were decided already and are left out. ``None`` when the broker does not
        answer the read in time: nothing of the range may be decided yet.
        """
        expected = self.next.get(partition)
        if expected is None:
            expected = await self._committed(partition)
            self.suspect[partition] = await self._end(partition)
        records = [r for r in delivered if r[0] >= expected]
        if not records:
            return []
        offsets = [expected - 1, *(o for o, _ in records)]
        suspect = self.suspect.get(partition, 0)
        if all(b - a == 1 or (b - a == 2 and a + 1 >= suspect) for a, b in pairwise(offsets)):
            return records
        self.reads += 1
        read = await self._read(partition, expected, records[-1][0])
        if read is None:
            return None
        have = {o for o, _ in records}
        if skipped := [o for o, _ in read if o not in have]:
            self.filled += len(skipped)
            if self.on_filled is not None:
                self.on_filled(len(skipped))
            log.warning("cases: partition %s: %d record(s) from offset %s never reached the "
                        "engine; read again", partition, len(skipped), skipped[0])  # fmt: skip
        return read

    async def stop(self) -> None:
        """Close the clients."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _committed(self, partition: int) -> int:
        if self._admin is None:
            admin = kafka_admin(self.settings)
            await admin.start()
            self._admin = admin
        tp = TopicPartition(self.topic, partition)
        deadline = time.monotonic() + CHECK_S
        while True:
            try:
                offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=[tp])
                break
            except KafkaError as exc:  # e.g. no coordinator yet on a new cluster
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        meta = offsets.get(tp)
        if meta is not None and meta.offset >= 0:
            return meta.offset
        consumer = await self._reader()
        return (await consumer.beginning_offsets([tp]))[tp]  # nothing committed: the start

    async def _end(self, partition: int) -> int:
        consumer = await self._reader()
        tp = TopicPartition(self.topic, partition)
        return (await consumer.end_offsets([tp]))[tp]  # read committed: the last stable offset

    async def _read(self, partition: int, start: int, last: int) -> list[Record] | None:
        """The committed records from ``start`` through ``last``; ``None`` if not read in time."""
        consumer = await self._reader()
        tp = TopicPartition(self.topic, partition)
        if consumer.assignment() != {tp}:
            consumer.assign([tp])
        consumer.seek(tp, start)
        got: list[Record] = []
        deadline = time.monotonic() + CHECK_S
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(tp, timeout_ms=500)
            for r in fetched.get(tp, ()):
                if r.offset > last:
                    return got
                got.append((r.offset, r.value or b""))
                if r.offset == last:
                    return got
            if await consumer.position(tp) > last:
                return got  # past the range (markers or aborted records at its end)
        log.warning("cases: partition %s: offsets %s to %s not read within %.0f s; they wait "
                    "for their next delivery", partition, start, last, CHECK_S)  # fmt: skip
        return None

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            # Read committed, no group. A fetch waits at most 5 ms for records: one left
            # long-polling at the log's end would hold the next read (500 ms by default).
            consumer = kafka_consumer(self.settings, fetch_max_wait_ms=5)
            await consumer.start()
            self._consumer = consumer
        return self._consumer


__all__ = ["GapCheck", "Record"]
