"""Publish events and wait for the bus's verdict; list dead letters.

Used by ``bus publish`` and ``bus deadletters`` (and the demo): a person publishing an event
wants to know at once whether the bus took it, and if not, which field was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    KafkaError,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)

from bus.agents.out import REPLAY_COUNT, REPLAY_FIRST, REPLAY_OF, ROUTE
from bus.errors import BusError
from bus.schemas.events import FAMILIES
from bus.settings import Settings
from bus.streaming.client import (
    NO_TRANSACTIONS,
    BusClient,
    Record,
    kafka_consumer,
    kafka_producer,
    read_topic,
    start_or_close,
    topic_partitions,
)
from bus.streaming.topics import INGRESS, REPLAYED, cases_changelog


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
    field: str | None = None  # the field at fault, when the refusal names one
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
    consumer = kafka_consumer(settings)
    await start_or_close(consumer)
    try:
        known = await topic_partitions(consumer, topics)
        tps = [TopicPartition(t, p) for t, parts in known.items() for p in parts]
        return await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()


def handled_steps(value: bytes | None) -> list[str]:
    """The step ids in a cases-table changelog value (an enterprise's state, as JSON)."""
    try:
        state = json.loads(value or b"null")
    except ValueError:
        return []
    return [str(i) for i in state.get("done", [])] if isinstance(state, dict) else []


def _verdict_topics(settings: Settings) -> list[str]:
    """Canonical topics, dead letters, and the case engine's state (the answers it handled)."""
    topics = [settings.topic(f"events.{f}") for f in FAMILIES]
    return [*topics, settings.topic("deadletter"), cases_changelog(settings)]


async def verdict_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """Where the topics that hold verdicts end now: read from there after publishing."""
    return await _end_offsets(settings, _verdict_topics(settings))


async def publish_and_wait(
    settings: Settings, lines: list[tuple[int, bytes]], wait: float
) -> list[Verdict]:
    """Publish each line to ingress; for ``wait`` seconds, match canonical and dead letters."""
    start = await _end_offsets(settings, _verdict_topics(settings)) if wait > 0 else {}
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


async def await_verdicts(
    settings: Settings,
    start: dict[TopicPartition, int],
    published: list[tuple[str, str, str]],
    wait: float,
) -> list[Verdict]:
    """Verdicts of events already published: ``(event_id, event_type, origin)`` each.

    ``start`` comes from :func:`verdict_offsets`, taken before publishing; ``origin`` is the
    ingress ``topic/partition/offset`` the broker acknowledged.
    """
    verdicts = [Verdict(i, eid, etype, origin) for i, (eid, etype, origin) in enumerate(published)]
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
    handled = cases_changelog(settings)
    waiting: dict[str, Verdict] = {}  # accepted, the case engine's word still to come
    # Handled by the case engine (in an enterprise's state, written after its outputs were
    # acknowledged): final unless its dead letter shows up late (another broker's fetch).
    handled_at: dict[str, float] = {}
    refusals: dict[str, dict[str, str]] = {}
    consumer = kafka_consumer(settings)
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
                    if r.topic == handled:  # an enterprise's cases, with the steps handled
                        for step_id in handled_steps(r.value):
                            handled_at.setdefault(step_id, time.monotonic())
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
                        rejected.field = headers.get("bus.field")
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
                    refused.field = refusal.get("bus.field")
                    settle(refused)
                elif time.monotonic() - handled_at.get(event_id, 1e18) > 1:
                    settle(waiting.pop(event_id))
    finally:
        await consumer.stop()


def rejected_at_ms(letter: Record) -> int:
    """When a letter was dead-lettered: its ``bus.rejected_at``, else the record's timestamp."""
    value = letter.headers.get("bus.rejected_at", "")
    return int(value) if value.isdigit() else letter.timestamp_ms


def letter_order(letter: Record) -> tuple[int, int, int]:
    """Dead-letter time, then partition and offset: one order, the same on every run."""
    return rejected_at_ms(letter), letter.partition, letter.offset


async def list_deadletters(settings: Settings, max_seconds: float = 30.0) -> list[Record]:
    """Every dead letter on the topic, oldest first: by dead-letter time, then place.

    The topic has several partitions, and the order their records arrive in changes from run
    to run; sorted, the same letters come out in the same order each time, so ``--limit``
    shows the same newest ones. Read to the end offsets, not just until quiet, so a slow
    fetch cannot cut the list short.
    """
    letters = [
        r
        async for r in read_topic(
            settings, settings.topic("deadletter"), idle=0.5, max_seconds=max_seconds, to_end=True
        )
    ]
    return sorted(letters, key=letter_order)


def source_of(letter: Record) -> str | None:
    """The department that published the refused event: its ``source`` header, else its JSON."""
    if source := letter.headers.get("source"):
        return source
    try:
        obj = json.loads(letter.value or b"")
    except ValueError:
        return None
    found = obj.get("source") if isinstance(obj, dict) else None
    return found if isinstance(found, str) else None


@dataclass(frozen=True)
class ReplayLink:
    """A dead letter of a replayed record: the ``count``-th replay of the letter ``first``."""

    of: str  # the origin of the dead letter that was replayed
    first: str  # the origin of the first dead letter of this event
    count: int


def replay_link(letter: Record) -> ReplayLink | None:
    """Which earlier dead letter this one is a replay of (``None``: not a replay)."""
    of = letter.headers.get(REPLAY_OF)
    if not of:
        return None
    count = letter.headers.get(REPLAY_COUNT, "")
    first = letter.headers.get(REPLAY_FIRST) or of
    return ReplayLink(of, first, int(count) if count.isdigit() else 1)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def since_ms(text: str, now: datetime | None = None) -> int:
    """Epoch milliseconds for ``--since``: a duration ago (``30m``, ``2h``, ``1d``, ``1w``) or
    a date or date-time (``2026-05-01``, ``2026-05-01T08:30``; UTC unless it names a zone)."""
    now = now or datetime.now(UTC)
    if m := _DURATION.match(text):
        return int((now.timestamp() - float(m[1]) * _UNIT_SECONDS[m[2]]) * 1000)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 1d, 1w) nor a date or date-time "
            "(2026-05-01, 2026-05-01T08:30)"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def select_deadletters(
    letters: list[Record],
    *,
    reason: str | None = None,
    source: str | None = None,
    since: int | None = None,
    limit: int = 0,
) -> list[Record]:
    """What ``bus deadletters`` shows: the letters that pass the filters, the ``limit`` newest
    of them (0: all), oldest first.

    ``reason`` is a prefix; ``source`` a department code or a dotted prefix of codes
    (``ks.enforcement`` takes every bureau); ``since`` epoch milliseconds.
    """
    chosen = [
        r
        for r in sorted(letters, key=letter_order)
        if (not reason or r.headers.get("bus.reason", "").startswith(reason))
        and (since is None or rejected_at_ms(r) >= since)
        and (not source or _within(source_of(r), source))
    ]
    return chosen[-limit:] if limit > 0 else chosen


def _within(code: str | None, wanted: str) -> bool:
    return code is not None and (code == wanted or code.startswith(wanted.rstrip(".") + "."))


async def replayed_origins(settings: Settings) -> dict[str, str | None]:
    """Dead letters already replayed, by origin, with the reason each had when replayed.

    Only committed markers count: a replay that was fenced or aborted replayed nothing.
    """
    done: dict[str, str | None] = {}
    async for r in read_topic(settings, settings.topic(REPLAYED.name), idle=0.5, to_end=True):
        if r.value is None:
            continue
        try:
            marker = json.loads(r.value)
        except ValueError:
            marker = {}
        why = marker.get("reason") if isinstance(marker, dict) else None
        done[(r.key or b"").decode()] = why if isinstance(why, str) else None
    return done


@dataclass
class ReplayReport:
    """What a replay did: re-submitted, skipped (and why), by dead letter origin.

    ``taken_over``: another replay run started meanwhile and fenced this one off; what this
    one had not committed, that one replays. ``atomic``: the replay ran in transactions.
    """

    replayed: list[str]
    skipped: dict[str, str]
    taken_over: bool = False
    atomic: bool = True


# A duplicate replayed is a duplicate again; an event claiming another department on a
# department's own ingress goes back there, bytes unchanged, and claims it again.
NOT_REPLAYABLE = ("duplicate.", "auth.source_mismatch")

REPLAY_CHUNK = 200
"""Dead letters per transaction: each chunk's replays and markers are committed together."""

REPLAY_TXN_TIMEOUT_MS = 30_000
"""How long the broker keeps a replay's transaction open if the replay dies mid-way.

Readers of ingress and inboxes read committed records only, so an open transaction holds
them back until it ends; a chunk takes well under a second. A new replay run ends it at once.
"""


def replay_transactional_id(settings: Settings) -> str:
    """One transactional id per bus: a second replay run fences the first."""
    return f"{settings.app_id}.replay"


def _origin_order(origin: str) -> tuple[str, int, int]:
    """Replay in the order the letters' events stood on their topic (an inbox's order)."""
    parts = origin.rsplit("/", 2)
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return origin, -1, -1


def plan_replay(
    letters: list[Record],
    done: dict[str, str | None],
    *,
    ingress: str,
    reason: str | None = None,
    origins: set[str] | None = None,
    force: bool = False,
) -> tuple[ReplayReport, list[tuple[Record, str]]]:
    """Which letters to replay, and where to; the others with the reason they are skipped.

    ``done`` holds the letters replayed before (``replayed_origins``). A letter that is
    itself a replay which failed again for the same reason as the letter it replayed is
    skipped unless ``force``: its cause is most likely not fixed, and replaying it again
    only adds another letter.

    Ingest dead letters go back to the ingress they came by (the shared one, or the
    department's own). A sink's dead letters (stage ``connector.NAME``,
    e.g. a department's endpoint that was down) go back to the topic they were read from,
    their ``bus.origin``, usually the department's inbox, where the sink delivers them again.
    The bytes are unchanged, so a replayed event keeps its event_id and can never take effect
    twice. Dead letters from later stages (an event the bus accepted, then an agent refused)
    are not replayable: ingest would see a duplicate; the department publishes a new event.
    """
    report = ReplayReport([], {})
    todo: list[tuple[Record, str]] = []
    chosen: set[str] = set()
    by_origin = {r.headers.get("bus.origin", ""): r for r in letters}
    for r in letters:
        origin = r.headers.get("bus.origin", "")
        why = r.headers.get("bus.reason", "")
        stage = r.headers.get("bus.stage", "")
        if origins and origin not in origins:
            continue
        if reason and not why.startswith(reason):
            continue
        link = replay_link(r)
        before = None
        if link is not None:
            earlier = by_origin.get(link.of)
            before = done.get(link.of) or (earlier.headers.get("bus.reason") if earlier else None)
        # A sink's origin is topic/partition/offset; Kafka topic names never hold a "/".
        topic, sep, _ = origin.rpartition("/")[0].rpartition("/")
        if origin in done:
            report.skipped[origin] = "already replayed"
        elif origin in chosen:  # a sink that crashed before its commit dead-letters twice
            report.skipped[origin] = "dead-lettered twice: replayed once"
        elif stage == "ingest" and why.startswith(NOT_REPLAYABLE):
            report.skipped[origin] = f"{why}: nothing to replay"
        elif link is not None and before == why and not force:
            report.skipped[origin] = (
                f"replay {link.count} of {link.first} failed again with {why}: "
                "is the cause fixed? --force replays it anyway"
            )
        elif stage == "ingest":
            # Back to the ingress it came by: a department's own ingress binds its source.
            todo.append((r, topic if topic.startswith(ingress + ".") else ingress))
            chosen.add(origin)
        elif stage.startswith("connector.") and sep and topic:
            todo.append((r, topic))
            chosen.add(origin)
        elif stage.startswith("connector."):
            report.skipped[origin] = f"origin {origin!r} names no topic: nowhere to replay to"
        else:
            report.skipped[origin] = f"refused at stage {stage or None}: publish anew"
    todo.sort(key=lambda item: _origin_order(item[0].headers["bus.origin"]))
    return report, todo


def replay_headers(letter: Record, to_sink: bool) -> list[tuple[str, bytes]]:
    """The replayed record's headers: the event's own, the inbox route when it goes back to
    an inbox, and the link to this letter (and the first one) with the replay count."""
    headers = [
        (k, v.encode())
        for k, v in letter.headers.items()
        if not k.startswith("bus.") or (to_sink and k == ROUTE)
    ]
    origin = letter.headers["bus.origin"]
    link = replay_link(letter)
    headers += [
        (REPLAY_OF, origin.encode()),
        (REPLAY_FIRST, (link.first if link else origin).encode()),
        (REPLAY_COUNT, str(link.count + 1 if link else 1).encode()),
    ]
    return headers


async def _replay_producer(
    settings: Settings, warn: Callable[[str], None]
) -> tuple[AIOKafkaProducer, bool]:
    """A transactional producer, started: this fences any other replay run of the bus.

    On a broker without transactions (an embedded development broker), a plain producer,
    with a warning: the replay still happens once per run, but two runs at the same time are
    not kept apart.
    """
    txn_id = replay_transactional_id(settings)
    producer = kafka_producer(
        settings, transactional_id=txn_id, transaction_timeout_ms=REPLAY_TXN_TIMEOUT_MS
    )
    try:
        await asyncio.wait_for(start_or_close(producer), 60)
        return producer, True
    except TransactionalIdAuthorizationFailed:
        raise BusError(
            f"this user may not use the transactional id {txn_id!r} that keeps replays apart: "
            f"allow it Write on TransactionalId {txn_id} (docs/operations.md, access)",
            reason="replay.not_authorised",
        ) from None
    except TimeoutError:
        await producer.stop()
        raise BusError(
            f"the broker did not give a transactional producer id ({txn_id!r}) in 60 s",
            reason="replay.no_producer_id",
        ) from None
    except NO_TRANSACTIONS as exc:
        warn(
            f"the broker refused transactions ({type(exc).__name__} on InitProducerId): "
            "replaying without them; another replay running at the same time could replay "
            "the same letters again. Run one replay at a time on this broker."
        )
    plain = kafka_producer(settings)
    await start_or_close(plain)
    return plain, False


async def replay_deadletters(
    settings: Settings,
    *,
    reason: str | None = None,
    origins: set[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Re-submit dead letters after a fix, once each, with their original bytes.

    Ingest dead letters go back to ingress. A sink's dead letters (stage ``connector.NAME``,
    e.g. a department's endpoint that was down) go back to the topic they were read from,
    their ``bus.origin``, usually the department's inbox, where the sink delivers them again.
    The bytes are unchanged, so a replayed event keeps its event_id and can never take effect
    twice. Dead letters from later stages (an event the bus accepted, then an agent refused)
    are not replayable: ingest would see a duplicate; the department publishes a new event.

    Runs at the same time replay each letter once: starting the transactional producer
    fences every earlier run of the bus (its open transaction is aborted, later writes are
    refused), and only then are the replayed letters read; each chunk's replays and their
    markers are committed together. A run fenced off returns with ``taken_over`` set.
    """
    ingress = settings.topic(INGRESS.name)
    if dry_run:
        done, letters = await replayed_origins(settings), await list_deadletters(settings)
        report, todo = plan_replay(letters, done, ingress=ingress, reason=reason,
                                   origins=origins, force=force)  # fmt: skip
        report.replayed = [r.headers["bus.origin"] for r, _ in todo]
        return report
    producer, atomic = await _replay_producer(settings, warn or (lambda _: None))
    try:
        # Only now, every earlier run fenced off and its transaction ended, is the set of
        # replayed letters final.
        done, letters = await replayed_origins(settings), await list_deadletters(settings)
        report, todo = plan_replay(letters, done, ingress=ingress, reason=reason,
                                   origins=origins, force=force)  # fmt: skip
        report.atomic = atomic
        await _send_replays(producer, atomic, settings, todo, report, progress)
        return report
    finally:
        with contextlib.suppress(KafkaError):  # fenced: nothing left to flush that counts
            await producer.stop()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _consume_fencing(producer: AIOKafkaProducer) -> None:
    """Keep the fencing error, already reported, from being printed again as a traceback.

    aiokafka sets it on internal futures nothing awaits once fenced (the transaction's
    waiter, the drain waiters of batches not yet sent), and asyncio prints each one that is
    garbage-collected unretrieved. From now on this loop stays quiet about those: only
    unretrieved ``ProducerFenced`` errors, nothing else.
    """
    txn = getattr(producer, "_txn_manager", None)
    if txn is not None:
        _retrieved(txn.wait_for_transaction_end())
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ProducerFenced) and "never retrieved" in str(
            context.get("message", "")
        ):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def _send_replays(
    producer: AIOKafkaProducer,
    atomic: bool,
    settings: Settings,
    todo: list[tuple[Record, str]],
    report: ReplayReport,
    progress: Callable[[int, int], None] | None,
) -> None:
    ingress, markers = settings.topic(INGRESS.name), settings.topic(REPLAYED.name)
    for start in range(0, len(todo), REPLAY_CHUNK):
        chunk = todo[start : start + REPLAY_CHUNK]
        if atomic:
            await producer.begin_transaction()
        pending: list[asyncio.Future[Any]] = []
        try:
            for r, topic in chunk:
                origin = r.headers["bus.origin"]
                pending.append(await producer.send(
                    topic, r.value or b"", key=r.key, headers=replay_headers(r, topic != ingress)
                ))  # fmt: skip
                marker = {"replayed_at": time.time(), "reason": r.headers.get("bus.reason"),
                          "to": topic}  # fmt: skip
                pending.append(await producer.send(
                    markers, json.dumps(marker).encode(), key=origin.encode()
                ))  # fmt: skip
            results = await asyncio.gather(*pending, return_exceptions=True)
            if failed := next((e for e in results if isinstance(e, BaseException)), None):
                raise failed
            if atomic:
                await producer.commit_transaction()
        except (ProducerFenced, IllegalOperation):
            # Another run started its producer: the broker aborted this chunk, which that
            # run replays. Sending in a fenced producer is an IllegalOperation.
            report.taken_over = True
            _consume_fencing(producer)
            return
        except BaseException:
            if atomic:  # end the transaction now, not after its timeout: it holds readers back
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.abort_transaction(), 10)
            raise
        finally:
            for sent in pending:  # failed with the chunk: said above, not again at exit
                sent.add_done_callback(_retrieved)
        report.replayed += [r.headers["bus.origin"] for r, _ in chunk]
        if progress:
            progress(len(report.replayed), len(todo))


__all__ = [
    "ReplayLink",
    "ReplayReport",
    "Verdict",
    "list_deadletters",
    "plan_replay",
    "publish_and_wait",
    "replay_deadletters",
    "replayed_origins",
    "select_deadletters",
    "since_ms",
]
