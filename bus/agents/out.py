"""What an agent asks the runtime to produce."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bus.errors import BusError

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class Out:
    """One record an agent wants produced."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    partition: int | None = None


ROUTE = "bus.route"
"""Why an inbox received a record (the subscription that routed it)."""

REPLAY_OF = "bus.replay_of"
"""On a replayed record: the origin of the dead letter it replays."""
REPLAY_FIRST = "bus.replay_first"
"""On a replayed record: the origin of the first dead letter of the event, replays aside."""
REPLAY_COUNT = "bus.replay_count"
"""On a replayed record: how many times the event has been replayed (1 the first time)."""
REPLAY_HEADERS = (REPLAY_OF, REPLAY_FIRST, REPLAY_COUNT)

KEPT_ON_REJECTION = (ROUTE, *REPLAY_HEADERS)
"""``bus.*`` headers a dead letter keeps: why an inbox received the record, so a sink's dead
letter replayed to the inbox is delivered again with its reason; and which dead letter a
replayed record came from, so a replay that fails again is linked to the letter before it."""


def rejection_headers(
    original: Headers, reason: str, error: str, stage: str, origin: str, field: str | None = None
) -> Headers:
    """The record's own headers (``bus.*`` replaced) and why and where it was refused."""
    headers: Headers = [
        (k, v) for k, v in original if not k.startswith("bus.") or k in KEPT_ON_REJECTION
    ]
    headers += [
        ("bus.reason", reason.encode()),
        ("bus.error", error[:2000].encode()),
        ("bus.stage", stage.encode()),
        ("bus.origin", origin.encode()),
        ("bus.rejected_at", str(int(time.time() * 1000)).encode()),
    ]
    if field:
        headers.append(("bus.field", field.encode()))
    return headers


CRASH_REASONS = {"ingest": "ingest.crash", "correlate": "correlate.crash", "cases": "cases.crash"}
"""The reason of a record an agent failed on unexpectedly (a fault of the bus), by stage."""


def deadletter_headers(exc: BaseException, message: Any, stage: str = "ingest") -> Headers:
    """Headers that explain a rejection: reason code, sentence, field, where it came from."""
    reason = exc.reason if isinstance(exc, BusError) else CRASH_REASONS.get(stage, "bus.error")
    text = str(exc) if isinstance(exc, BusError) else f"{type(exc).__name__}: {exc}"
    origin = f"{message.topic}/{message.partition}/{message.offset}"
    return rejection_headers(list(message.headers or ()), reason, text, stage, origin,
                             getattr(exc, "field", None))  # fmt: skip


def deadletter(topic: str, message: Any, exc: BaseException, stage: str) -> Out:
    """A dead letter for ``message``: its original key and bytes, the reason in headers."""
    return Out(topic, message.value or b"", key=message.key,
               headers=deadletter_headers(exc, message, stage))  # fmt: skip
