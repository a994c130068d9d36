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


def deadletter_headers(exc: BaseException, message: Any, stage: str = "ingest") -> Headers:
    """Headers that explain a rejection: reason code, sentence, field, where it came from."""
    reason = exc.reason if isinstance(exc, BusError) else f"{stage}.crash"
    text = str(exc) if isinstance(exc, BusError) else f"{type(exc).__name__}: {exc}"
    headers: Headers = [(k, v) for k, v in (message.headers or ()) if not k.startswith("bus.")]
    headers += [
        ("bus.reason", reason.encode()),
        ("bus.error", text[:2000].encode()),
        ("bus.stage", stage.encode()),
        ("bus.origin", f"{message.topic}/{message.partition}/{message.offset}".encode()),
        ("bus.rejected_at", str(int(time.time() * 1000)).encode()),
    ]
    field = getattr(exc, "field", None)
    if field:
        headers.append(("bus.field", field.encode()))
    return headers


def deadletter(topic: str, message: Any, exc: BaseException, stage: str) -> Out:
    """A dead letter for ``message``: its original key and bytes, the reason in headers."""
    return Out(topic, message.value or b"", key=message.key,
               headers=deadletter_headers(exc, message, stage))  # fmt: skip
