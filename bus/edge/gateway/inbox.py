"""The gateway's view of department inboxes: read with cursors, tasks folded from them.

One consumer, started on the first inbox request, tails every department's inbox topic
(one partition each, so an inbox has a single order and a cursor is an offset) and keeps
the most recent ``keep`` items of each in memory; a cursor older than that is read from
Kafka directly, so nothing retained by the topic is out of reach. Tasks are folded from
the lifecycle events in the assignee's inbox (created, accepted, completed, rejected,
overdue, escalated): the gateway only reads what the bus decided, it never decides.

Delivery into inboxes is at-least-once; the view drops a second copy of an event id, so a
department reading with cursors sees each event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bus.domain.tasks import TaskView
from bus.settings import Settings
from bus.streaming.client import _text, kafka_consumer
from bus.streaming.codec import EventCodec
from bus.streaming.topics import inbox_topic

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Item:
    """One inbox record, decoded on first use."""

    cursor: int
    event_id: str
    event_type: str
    correlation_id: str
    route: str
    received_at: float
    value: bytes
    _json: dict[str, Any] | None = None

    def body(self, codec: EventCodec) -> dict[str, Any]:
        """The item as the API returns it."""
        if self._json is None:
            event = json.loads(codec.to_json(codec.decode(self.value)))
            self._json = {
                "cursor": self.cursor,
                "route": self.route,
                "received_at": datetime.fromtimestamp(self.received_at).astimezone().isoformat(),
                "event": event,
            }
        return self._json


@dataclass
class _Inbox:
    items: deque[Item]
    ids: set[str] = field(default_factory=set)
    tasks: dict[str, TaskView] = field(default_factory=dict)
    cases: set[str] = field(default_factory=set)
    position: int = 0


class Inboxes:
    """Every department's inbox, tailed by one consumer; an async context manager."""

    def __init__(
        self, settings: Settings, departments: Iterable[str], *, keep: int = 10_000
    ) -> None:
        self.settings = settings
        self.codec = EventCodec()
        self.keep = keep
        self._inboxes = {d: _Inbox(deque(maxlen=keep)) for d in departments}
        self._topics = {inbox_topic(settings, d): d for d in self._inboxes}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._starting = asyncio.Lock()
        self.caught_up = asyncio.Event()

    async def __aenter__(self) -> Inboxes:
        return self

    async def _start(self) -> None:
        """Start tailing on first use: a gateway only publishing keeps no idle consumer."""
        if self._consumer is not None:
            return
        self._consumer = kafka_consumer(self.settings, fetch_max_wait_ms=200)
        await self._consumer.start()
        tps = [TopicPartition(t, 0) for t in self._topics]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._tail({tp: n for tp, n in ends.items() if n}))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    def knows(self, department: str) -> bool:
        """Whether ``department`` has an inbox here."""
        return department in self._inboxes

    async def _tail(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        if not ends:
            self.caught_up.set()
        while True:
            try:
                fetched = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            except Exception:  # the broker went away: keep trying, the API reports it
                log.exception("gateway inbox reader: fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for tp, records in fetched.items():
                inbox = self._inboxes[self._topics[tp.topic]]
                for r in records:
                    self._add(inbox, r)
                inbox.position = records[-1].offset + 1
            # Caught up once every inbox reached the end it had at start-up. The consumer's
            # position, not the last record's offset: a transaction's commit marker (a replay
            # writes inboxes in transactions) takes an offset and is never returned.
            if not self.caught_up.is_set():
                positions = [await self._consumer.position(tp) for tp in ends]
                if all(p >= n for p, n in zip(positions, ends.values(), strict=True)):
                    self.caught_up.set()
            if fetched:
                async with self._changed:
                    self._changed.notify_all()

    def _add(self, inbox: _Inbox, r: ConsumerRecord[bytes, bytes]) -> None:
        headers = {k: _text(v) for k, v in (r.headers or ())}
        event_id = headers.get("event_id", "")
        if event_id in inbox.ids:
            return  # an at-least-once copy
        inbox.ids.add(event_id)
        item = self._item(r, headers)
        inbox.items.append(item)
        inbox.cases.add(item.correlation_id)
        if item.event_type.startswith("task."):
            self._fold_task(inbox, item)

    @staticmethod
    def _item(r: ConsumerRecord[bytes, bytes], headers: dict[str, str]) -> Item:
        return Item(
            r.offset, headers.get("event_id", ""), headers.get("event_type", ""),
            headers.get("correlation_id", ""), headers.get("bus.route", ""),
            r.timestamp / 1000, r.value or b"",
        )  # fmt: skip

    def _fold_task(self, inbox: _Inbox, item: Item) -> None:
        try:
            event = self.codec.decode(item.value)
        except Exception:  # not the bus's bytes: nothing to fold
            log.warning("gateway: undecodable task event %s in an inbox", item.event_id)
            return
        TaskView.fold(inbox.tasks, event)

    async def read(
        self, department: str, cursor: int, limit: int, wait: float = 0.0
    ) -> tuple[list[dict[str, Any]], int]:
        """Items at or after ``cursor`` (an offset), at most ``limit``; and the next cursor.

        With ``wait``, an empty answer waits up to that many seconds for something new
        (long polling), so a department system need not poll in a tight loop.
        """
        inbox = self._inboxes[department]
        await self._wait_caught_up()
        deadline = time.monotonic() + wait
        while True:
            oldest = inbox.items[0].cursor if inbox.items else inbox.position
            if cursor < oldest:
                return await self._read_from_kafka(department, cursor, limit)
            items = [i for i in inbox.items if i.cursor >= cursor][:limit]
            if items:
                return [i.body(self.codec) for i in items], items[-1].cursor + 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], max(cursor, inbox.position)
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def latest(self, department: str, limit: int) -> list[Item]:
        """The newest ``limit`` items (at most ``keep``), newest last: what an operator checks."""
        await self._wait_caught_up()
        items = self._inboxes[department].items
        return list(items)[-limit:] if limit > 0 else []

    async def _read_from_kafka(
        self, department: str, cursor: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page older than the in-memory window, straight from the topic."""
        tp = TopicPartition(inbox_topic(self.settings, department), 0)
        consumer = kafka_consumer(self.settings)
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, cursor)
            out: list[dict[str, Any]] = []
            seen: set[str] = set()
            nxt = cursor
            while len(out) < limit:
                batch = (await consumer.getmany(tp, timeout_ms=500, max_records=limit)).get(tp)
                if not batch:
                    break
                for r in batch:
                    nxt = r.offset + 1
                    headers = {k: _text(v) for k, v in (r.headers or ())}
                    if headers.get("event_id") in seen:
                        continue
                    seen.add(headers.get("event_id", ""))
                    out.append(self._item(r, headers).body(self.codec))
                    if len(out) >= limit:
                        break
            return out, nxt
        finally:
            await consumer.stop()

    async def _wait_caught_up(self) -> None:
        async with self._starting:
            await self._start()
        try:
            await asyncio.wait_for(self.caught_up.wait(), 10)
        except TimeoutError:
            log.warning("gateway: inboxes not caught up after 10 s; answering with what is read")

    async def tasks(self, department: str, state: str | None = None) -> list[TaskView]:
        """The department's tasks, oldest first, optionally only those in ``state``."""
        await self._wait_caught_up()
        tasks = list(self._inboxes[department].tasks.values())
        return [t for t in tasks if state is None or t.shown_state == state]

    async def task(self, department: str, task_id: str) -> TaskView | None:
        """One of the department's tasks."""
        await self._wait_caught_up()
        return self._inboxes[department].tasks.get(task_id)

    async def received(self, department: str, correlation_id: str) -> bool:
        """Whether the department's inbox holds anything of this case."""
        await self._wait_caught_up()
        return correlation_id in self._inboxes[department].cases
