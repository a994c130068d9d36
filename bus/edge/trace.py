"""Trace a case (correlation id) or an enterprise (USCC) across every department it touched.

Reads the canonical topics — the evidence log — and the dead letters, and returns the events
in the order they happened, so an operator can answer "what happened to this request, who
did what, and how long did each step take" without a developer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime

from bus.schemas.events import FAMILIES
from bus.schemas.uscc import is_valid_uscc
from bus.settings import Settings
from bus.streaming.client import read_topic
from bus.streaming.codec import EventCodec

BUS = "ks.bus"
#: Payload fields in which the bus names who takes part in a case (assignees, supervisors).
_ROLES = ("assignee", "supervisor", "escalated_to")


@dataclass(frozen=True)
class Step:
    """One event of a trace."""

    at: datetime
    event_type: str
    source: str
    subject: str
    event_id: str
    correlation_id: str
    summary: str
    causation_id: str = ""
    named: tuple[str, ...] = ()  # departments the event names in a role
    refused: str = ""  # the reason an agent refused it after ingest accepted it


def participants(steps: list[Step]) -> set[str]:
    """Who takes part in a case, as the bus decided it, not as anyone wrote into it.

    The bus, the publisher of the event the bus acted on (the requester), and the departments
    the bus named in its own events (assignees, supervisors). Before the bus has acted, the
    publisher of the earliest event. A department that merely published an event carrying
    the case's correlation id is not among them.
    """
    ours = [s for s in steps if s.source == BUS]
    if not ours:
        return {BUS, steps[0].source} if steps else {BUS}
    causes = {s.causation_id for s in ours}
    found = {BUS} | {s.source for s in steps if s.event_id in causes}
    for s in ours:
        found.update(s.named)
    return found


def summary(event: object) -> str:
    """One line on what an event says: its case number, task, serial ... or a name."""
    p = getattr(event, "payload", None)
    for field in ("case_number", "task_id", "serial", "licence_number", "application_number"):
        value = getattr(p, field, None)
        if value:
            details = ("result", "outcome", "assignee", "decision")
            extra = next((getattr(p, d) for d in details if getattr(p, d, None)), None)
            return f"{field} {value}" + (f" ({extra})" if extra else "")
    name = getattr(p, "name", None)
    return str(name) if name else ""


async def trace(settings: Settings, key: str, max_seconds: float = 60.0) -> list[Step]:
    """Every canonical event whose correlation id — or, for a USCC, whose subject — is ``key``.

    A USCC traces the enterprise: every case about it. Anything else is a correlation id.
    Each topic is read to the end offsets it had when reading began, so a slow first fetch
    (a busy machine) cannot leave events out.
    """
    codec = EventCodec()
    by_subject = is_valid_uscc(key)
    topics = [settings.topic(f"events.{f}") for f in FAMILIES]

    async def one(topic: str) -> list[Step]:
        steps = []
        async for r in read_topic(settings, topic, to_end=True, max_seconds=max_seconds):
            h = r.headers
            if by_subject:
                if (r.key or b"").decode(errors="replace") != key:
                    continue
            elif h.get("correlation_id") != key:
                continue
            e = codec.decode(r.value or b"")
            named = tuple(str(v) for f in _ROLES if (v := getattr(e.payload, f, None)))
            steps.append(Step(e.occurred_at, e.event_type, e.source, e.subject, str(e.event_id),
                              e.correlation_id, summary(e), str(e.causation_id or ""),
                              named))  # fmt: skip
        return steps

    async def refusals() -> dict[str, str]:
        """Event ids an agent refused after acceptance (a wrong answer to a task), and why."""
        out = {}
        topic = settings.topic("deadletter")
        async for r in read_topic(settings, topic, to_end=True, max_seconds=max_seconds):
            if r.headers.get("bus.stage", "ingest") != "ingest" and "event_id" in r.headers:
                out[r.headers["event_id"]] = r.headers.get("bus.reason", "?")
        return out

    found, refused = await asyncio.gather(asyncio.gather(*(one(t) for t in topics)), refusals())
    unique = {s.event_id: s for steps in found for s in steps}  # at-least-once copies once
    for event_id, reason in refused.items():
        if event_id in unique:
            unique[event_id] = replace(unique[event_id], refused=reason)
    return sorted(unique.values(), key=lambda s: (s.at, s.event_id))


def elapsed(seconds: float) -> str:
    """A duration people read at a glance: ``36 ms``, ``2.06 s``, ``4 min 03 s``, ``70 d 21 h``.

    A trace spans milliseconds (the bus deciding) and months (a penalty decided in July,
    published in November) in one table; a raw millisecond count is unreadable at the far end.
    """
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if whole < 3600:
        return f"{minutes} min {secs:02d} s"
    if whole < 86_400:
        return f"{hours} h {minutes:02d} min"
    return f"{days} d {hours} h"
