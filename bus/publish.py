"""Publish events and wait for the bus's verdict; list dead letters.

Used by ``bus publish`` and ``bus deadletters`` (and the demo): a person publishing an event
wants to know at once whether the bus took it, and if not, which field was wrong.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.agents.out import KEPT_ON_REJECTION
from bus.client import BusClient, Record, read_topic, start_or_close, topic_partitions
from bus.schemas.events import FAMILIES
from bus.settings import Settings
from bus.topics import CORRELATE_SEEN, INGRESS, REPLAYED


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
    stage: str | None = None  # where it was refused: ingest, or an agent after acceptance
    settled: bool = False  # the verdict is final (an answer to a task waits for correlate)


#: Event types the correlate agent may still refuse after ingest accepted them: answers to
#: tasks, which only the assignee of an open task may give (task.not_assignee, task.closed).
DECIDED_BY_CORRELATE = ("task.accepted", "task.completed", "task.rejected", "approval.opinion")


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
    await start_or_close(consumer)
    try:
        known = await topic_partitions(consumer, topics)
        tps = [TopicPartition(t, p) for t, parts in known.items() for p in parts]
        return await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()


async def verdict_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """Where the topics that hold verdicts end now: read from there after publishing."""
    topics = [settings.topic(f"events.{f}") for f in FAMILIES]
    topics += [settings.topic("deadletter"), settings.topic(CORRELATE_SEEN.name)]
    return await _end_offsets(settings, topics)


async def publish_and_wait(
    settings: Settings, lines: list[tuple[int, bytes]], wait: float
) -> list[Verdict]:
    """Publish each line to ingress; for ``wait`` seconds, match canonical and dead letters."""
    outputs = [settings.topic(f"events.{f}") for f in FAMILIES] + [
        settings.topic("deadletter"),
        settings.topic(CORRELATE_SEEN.name),
    ]
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
    handled = settings.topic(CORRELATE_SEEN.name)
    waiting: dict[str, Verdict] = {}  # accepted, the correlate agent's word still to come
    # Handled by correlate: final unless its dead letter, written before, shows up late (it
    # may come through another broker's fetch).
    handled_at: dict[str, float] = {}
    refusals: dict[str, dict[str, str]] = {}
    consumer = AIOKafkaConsumer(**settings.kafka(), group_id=None, enable_auto_commit=False)
    await start_or_close(consumer)

    def settle(v: Verdict) -> None:
        nonlocal open_
        if not v.settled:
            v.settled = True
            open_ -= 1

    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + wait
        while open_ and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    if r.topic == handled:  # ids the correlate agent handled, 16 bytes each
                        value = r.value or b""
                        for i in range(0, len(value), 16):
                            handled_at.setdefault(str(uuid.UUID(bytes=value[i : i + 16])),
                                                  time.monotonic())  # fmt: skip
                        continue
                    headers = {k: v.decode(errors="replace") for k, v in (r.headers or ())}
                    if r.topic == deadletter and headers.get("bus.stage", "ingest") != "ingest":
                        # accepted, then refused by an agent; read perhaps before the canonical
                        # record itself (another partition), so kept until that one comes too
                        refusals.setdefault(headers.get("event_id", ""), headers)
                    elif r.topic == deadletter:
                        rejected = by_origin.get(headers.get("bus.origin", ""))
                        if rejected is None or rejected.reason:
                            continue
                        rejected.reason = headers.get("bus.reason")
                        rejected.error = headers.get("bus.error")
                        rejected.stage = "ingest"
                        settle(rejected)
                    else:
                        candidates = by_id.get(headers.get("event_id", ""), [])
                        taken = next((c for c in candidates if not (c.accepted or c.reason)), None)
                        if taken is None:
                            continue
                        taken.accepted, taken.topic = True, r.topic
                        if taken.event_type in DECIDED_BY_CORRELATE and taken.event_id:
                            waiting[taken.event_id] = taken
                        else:
                            settle(taken)
            for event_id in list(waiting):
                if (refusal := refusals.get(event_id)) is not None:
                    refused = waiting.pop(event_id)
                    refused.accepted, refused.stage = False, refusal.get("bus.stage")
                    refused.reason = refusal.get("bus.reason")
                    refused.error = refusal.get("bus.error")
                    settle(refused)
                elif time.monotonic() - handled_at.get(event_id, 1e18) > 1:
                    settle(waiting.pop(event_id))
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


@dataclass
class ReplayReport:
    """What a replay did: re-submitted, skipped (and why), by dead letter origin."""

    replayed: list[str]
    skipped: dict[str, str]


# A duplicate replayed is a duplicate again; an event claiming another department on a
# department's own ingress goes back there, bytes unchanged, and claims it again.
NOT_REPLAYABLE = ("duplicate.", "auth.source_mismatch")


def _origin_order(origin: str) -> tuple[str, int, int]:
    """Replay in the order the letters' events stood on their topic (an inbox's order)."""
    parts = origin.rsplit("/", 2)
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return origin, -1, -1


async def replay_deadletters(
    settings: Settings,
    *,
    reason: str | None = None,
    origins: set[str] | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Re-submit dead letters after a fix, once each, with their original bytes.

    Ingest dead letters go back to the ingress they came by (the shared one, or the
    department's own). A sink's dead letters (stage ``connector.NAME``,
    e.g. a department's endpoint that was down) go back to the topic they were read from,
    their ``bus.origin``, usually the department's inbox, where the sink delivers them again.
    The bytes are unchanged, so a replayed event keeps its event_id and can never take effect
    twice. Dead letters from later stages (an event the bus accepted, then an agent refused)
    are not replayable: ingest would see a duplicate; the department publishes a new event.
    """
    done = {
        (r.key or b"").decode()
        async for r in read_topic(settings, settings.topic(REPLAYED.name), idle=0.5)
        if r.value is not None
    }
    letters = await list_deadletters(settings)
    report = ReplayReport([], {})
    todo: list[tuple[Record, str]] = []
    chosen: set[str] = set()
    for r in letters:
        origin = r.headers.get("bus.origin", "")
        why = r.headers.get("bus.reason", "")
        stage = r.headers.get("bus.stage", "")
        if origins and origin not in origins:
            continue
        if reason and not why.startswith(reason):
            continue
        # A sink's origin is topic/partition/offset; Kafka topic names never hold a "/".
        topic, sep, _ = origin.rpartition("/")[0].rpartition("/")
        if origin in done:
            report.skipped[origin] = "already replayed"
        elif origin in chosen:  # a sink that crashed before its commit dead-letters twice
            report.skipped[origin] = "dead-lettered twice: replayed once"
        elif stage == "ingest" and why.startswith(NOT_REPLAYABLE):
            report.skipped[origin] = f"{why}: nothing to replay"
        elif stage == "ingest":
            # Back to the ingress it came by: a department's own ingress binds its source.
            shared = settings.topic(INGRESS.name)
            todo.append((r, topic if topic.startswith(shared + ".") else shared))
            chosen.add(origin)
        elif stage.startswith("connector.") and sep and topic:
            todo.append((r, topic))
            chosen.add(origin)
        elif stage.startswith("connector."):
            report.skipped[origin] = f"origin {origin!r} names no topic: nowhere to replay to"
        else:
            report.skipped[origin] = f"refused at stage {stage or None}: publish anew"
    todo.sort(key=lambda item: _origin_order(item[0].headers["bus.origin"]))
    if dry_run or not todo:
        report.replayed = [r.headers["bus.origin"] for r, _ in todo]
        return report
    async with BusClient(settings) as client:
        for i, (r, topic) in enumerate(todo, 1):
            origin = r.headers["bus.origin"]
            to_sink = r.headers.get("bus.stage", "") != "ingest"  # to an inbox: keep its route
            headers = [
                (k, v.encode())
                for k, v in r.headers.items()
                if not k.startswith("bus.") or (to_sink and k in KEPT_ON_REJECTION)
            ]
            headers.append(("bus.replay_of", origin.encode()))
            await client.send_raw(topic, r.key, r.value or b"", headers)
            marker = json.dumps({"replayed_at": time.time(), "reason": r.headers.get("bus.reason")})
            await client.send_raw(
                settings.topic(REPLAYED.name), origin.encode(), marker.encode(), []
            )
            report.replayed.append(origin)
            if progress:
                progress(i, len(todo))
    return report


__all__ = ["ReplayReport", "Verdict", "list_deadletters", "publish_and_wait", "replay_deadletters"]
