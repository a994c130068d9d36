"""A topic the gateway tails into memory, so a lookup is a dictionary read, not a topic scan.

Started on the first lookup; lookups wait until the index has read what the topic held then.
Subclasses say which topic and what a record adds.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bus.settings import Settings
from bus.streaming.client import kafka_consumer, topic_partitions

log = logging.getLogger(__name__)


class TopicIndex:
    """Tails one topic from its beginning; an async context manager for the reader's lifetime."""

    topic_name: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._caught_up = asyncio.Event()

    async def __aenter__(self) -> TopicIndex:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def ready(self, wait: float = 10.0) -> None:
        """Once the index holds what the topic held when it started."""
        async with self._starting:
            if self._consumer is None:
                await self._start()
        async with asyncio.timeout(wait):
            await self._caught_up.wait()

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Take one record into the index."""
        raise NotImplementedError

    async def _start(self) -> None:
        topic = self.settings.topic(self.topic_name)
        consumer = kafka_consumer(self.settings, fetch_max_wait_ms=200)
        await consumer.start()
        self._consumer = consumer
        known = await topic_partitions(consumer, [topic])  # a missing topic: nothing to index
        tps = [TopicPartition(topic, p) for p in known.get(topic, ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._tail({tp: n for tp, n in ends.items() if n}))

    async def _tail(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        while True:
            if not self._caught_up.is_set():
                positions = [await self._consumer.position(tp) for tp in ends]
                if all(p >= n for p, n in zip(positions, ends.values(), strict=True)):
                    self._caught_up.set()
            try:
                fetched = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            except Exception:  # the broker went away: keep trying; lookups time out meanwhile
                log.exception("gateway index of %s: fetch failed; retrying", self.topic_name)
                await asyncio.sleep(1.0)
                continue
            for records in fetched.values():
                for r in records:
                    self.add(r)


__all__ = ["TopicIndex"]
