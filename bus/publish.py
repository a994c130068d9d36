"""Publish events and wait for the bus's verdict; list dead letters.

Used by ``bus publish`` and ``bus deadletters`` (and the demo): a person publishing an event
wants to know at once whether the bus took it, and if not, which field was wrong.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.client import BusClient, Record, read_topic
from bus.schemas.events import FAMILIES
from bus.settings import Settings


@dataclass
class Verdict:
    """What became of one published line."""

    line: int
    event_id: str | None
    event_type: str | None
    origin: str
    accepted: bool = False
    topic: str | None = None
    reason: str | None = None
    error: str | None = None


def _prepare(raw: bytes) -> tuple[bytes, str | None, str | None]:
    """Give JSON events an event_id so their verdict can be found; other bytes go as they are."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw, None, None
    if not isinstance(obj, dict):
        return raw, None, None
    if "event_id" not in obj:
        obj = {"event_id": str(uuid.uuid4()), **obj}
        raw = json.dumps(obj, ensure_ascii=False).encode()
    event_type = obj.get("event_type") if isinstance(obj.get("event_type"), str) else None
    return raw, str(obj["event_id"]), event_type


async def _end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**settings.kafka(), group_id=None)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())
        ]
        if not tps:
            await consumer.topics()
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in (consumer.partitions_for_topic(t) or ())
            ]
        return await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()


async def publish_and_wait(
    settings: Settings, lines: list[tuple[int, bytes]], wait: float
) -> list[Verdict]:
    """Publish each line to ingress; for ``wait`` seconds, match canonical and dead letters."""
    outputs = [settings.topic(f"events.{f}") for f in FAMILIES] + [settings.topic("deadletter")]
    start = await _end_offsets(settings, outputs) if wait > 0 else {}
    prepared = [(n, *_prepare(raw)) for n, raw in lines]
    async with BusClient(settings) as client:
        receipts = await client.publish_many([p[1] for p in prepared])
    verdicts = [
        Verdict(n, eid, etype, f"{r.topic}/{r.partition}/{r.offset}")
        for (n, _, eid, etype), r in zip(prepared, receipts, strict=True)
    ]
    if wait > 0 and verdicts:
        await _collect(settings, start, verdicts, wait)
    return verdicts


async def _collect(
    settings: Settings, start: dict[TopicPartition, int], verdicts: list[Verdict], wait: float
) -> None:
    by_origin = {v.origin: v for v in verdicts}
    by_id: dict[str, list[Verdict]] = {}
    for v in sorted(verdicts, key=lambda v: int(v.origin.rsplit("/", 1)[1])):
        if v.event_id:  # a re-published id: the earliest copy is the one accepted
            by_id.setdefault(v.event_id, []).append(v)
    open_ = len(verdicts)
    deadletter = settings.topic("deadletter")
    consumer = AIOKafkaConsumer(**settings.kafka(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + wait
        while open_ and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    headers = {k: v.decode(errors="replace") for k, v in (r.headers or ())}
                    if r.topic == deadletter:
                        rejected = by_origin.get(headers.get("bus.origin", ""))
                        if rejected is None or rejected.reason:
                            continue
                        rejected.reason = headers.get("bus.reason")
                        rejected.error = headers.get("bus.error")
                    else:
                        candidates = by_id.get(headers.get("event_id", ""), [])
                        taken = next((c for c in candidates if not (c.accepted or c.reason)), None)
                        if taken is None:
                            continue
                        taken.accepted, taken.topic = True, r.topic
                    open_ -= 1
    finally:
        await consumer.stop()


async def list_deadletters(settings: Settings, max_seconds: float = 30.0) -> list[Record]:
    """Every dead letter currently on the topic, oldest first."""
    return [
        r
        async for r in read_topic(
            settings, settings.topic("deadletter"), idle=0.5, max_seconds=max_seconds
        )
    ]


__all__ = ["Verdict", "list_deadletters", "publish_and_wait"]
