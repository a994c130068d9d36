"""Every step of a partition reaches the case engine, in order: holes are found and re-read.

Faust 0.15 can drop records before any agent sees them: at an assignment its fetcher starts
before it seeks to the committed offsets, and what is fetched again below the read offset it
keeps per partition is dropped without a word. The next records of the partition then
arrive as if nothing was missing (seen in worker logs under kill -9: docs/architecture.md).
The case engine commits its offsets itself (``bus.agents.cases``), so it checks before it
decides: a partition's next record should follow the one before, or the group's committed
offset after an assignment.
One offset between them is a transaction's commit marker. More may be an aborted
transaction, or records never delivered: a read-committed fetch from the expected offset
tells which, and a hole is read again from its first record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bus.settings import Settings
from bus.streaming.client import kafka_admin, kafka_consumer

log = logging.getLogger(__name__)

CHECK_S = 10.0
"""Longest a check reads; past it the range counts as a hole (reading again is safe)."""


class GapCheck:
    """The next offset each partition of ``topic`` should deliver, and checks against it."""

    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.settings = settings
        self.topic = topic
        self.group = group
        self.next: dict[int, int] = {}  # by partition; unknown until its first batch
        self.reread: dict[int, int] = {}  # partitions read again from this offset
        self.checks = 0  # fetches made to tell a hole from an aborted transaction
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions assigned or revoked: their next offset is the group's committed one."""
        for p in partitions:
            self.next.pop(p, None)
            self.reread.pop(p, None)

    def advance(self, partition: int, end: int) -> None:
        """Records before ``end`` were decided."""
        self.next[partition] = end

    async def missing(self, partition: int, first: int) -> int | None:
        """Where a hole before offset ``first`` starts, or ``None`` if nothing is missing.

        While a hole is read again, records after it that were already on their way are
        reported as missing too (from the hole), until its first record comes.
        """
        if (again := self.reread.get(partition)) is not None:
            if first > again:
                return again
            del self.reread[partition]
            return None
        expected = self.next.get(partition)
        if expected is None:
            expected = await self._committed(partition)
        if first - expected <= 1:  # nothing, or a commit marker
            return None
        self.checks += 1
        found = await self._first_record(partition, expected, first)
        if found is None or found >= first:
            return None  # an aborted transaction, or markers only
        self.reread[partition] = found
        log.warning("cases: partition %s: records from offset %s never reached the engine; "
                    "read again from there", partition, found)  # fmt: skip
        return found

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

    async def _first_record(self, partition: int, start: int, before: int) -> int | None:
        """The offset of the first committed record at or after ``start`` and before ``before``;
        ``start`` when the broker does not tell in time."""
        consumer = await self._reader()
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + CHECK_S
        while time.monotonic() < deadline:
            got = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            if got.get(tp):
                return got[tp][0].offset
            if await consumer.position(tp) >= before:
                return None  # read past the range: nothing committed in it
        return start

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = kafka_consumer(self.settings)  # read committed, no group
            await consumer.start()
            self._consumer = consumer
        return self._consumer


__all__ = ["GapCheck"]
