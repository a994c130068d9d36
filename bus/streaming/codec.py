"""Events to bytes and back: Avro in the Confluent wire format, JSON at the edges.

Wire format: byte ``0x00``, the schema id as 4 bytes big-endian, then the Avro body written
with that schema. Any Confluent-compatible consumer can read it given the schemas. JSON is
accepted where people and foreign systems publish (gateway, file import, ``bus publish``),
validated against the same models, and converted to Avro once. JSON from outside is read by
``load_json``, which refuses nesting deeper than ``MAX_JSON_DEPTH`` before parsing.
"""

from __future__ import annotations

import io
import struct
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
from pydantic import ValidationError

from bus.errors import DecodeError, Problem, ValidationFailed
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for, spec_for
from bus.schemas.jsontext import load_json
from bus.schemas.registry import LocalSchemaRegistry, SchemaRegistry
from bus.schemas.types import REASON_DATE_ORDER, REASON_DATE_RANGE, REASON_TEXT

MAGIC = 0
_HEADER = struct.Struct(">bI")

MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future an edge accepts ``occurred_at``: the publishers' clocks drift."""

_REASONS = frozenset({REASON_TEXT, REASON_DATE_RANGE, REASON_DATE_ORDER})


def validation_failed(exc: ValidationError) -> ValidationFailed:
    """Turn pydantic's error into one that names the field, for people and dead letters."""
    errors = exc.errors(include_url=False)
    problems = []
    for err in errors:
        msg = err["msg"].removeprefix("Value error, ")
        kind = err["type"]
        reason = kind if kind in _REASONS else ValidationFailed.reason
        if "unified social credit code" in msg:
            reason = "schema.uscc"
        problems.append(Problem(_where(err) or None, reason, msg))
    parts = [f"{p.field or '(event)'}: {p.message}" for p in problems[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    first = problems[0] if problems else Problem(None, ValidationFailed.reason, "")
    return ValidationFailed(
        "; ".join(parts) + more, field=first.field, reason=first.reason, problems=problems
    )


def _where(err: Any) -> str:
    """The dotted path of an error; a model validator names its field in the context."""
    loc = ".".join(str(p) for p in err["loc"])
    named = (err.get("ctx") or {}).get("field")
    if isinstance(named, str):
        loc = f"{loc}.{named}" if loc else named
    return loc


class EventCodec:
    """Encode and decode envelopes; schemas are parsed once, at registry load."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry: SchemaRegistry = registry or LocalSchemaRegistry.load()

    def encode(self, event: Envelope) -> bytes:
        """Avro with Confluent framing, using the schema of the event's type and version."""
        schema = self.registry.get(event.event_type, event.schema_version)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, schema.id))
        fastavro.schemaless_writer(buf, schema.parsed, event.model_dump())
        return buf.getvalue()

    def decode(self, data: bytes) -> Envelope:
        """Read Confluent-framed Avro back into the typed envelope, re-validated."""
        if len(data) < 5 or data[0] != MAGIC:
            raise DecodeError("not Confluent-framed Avro: missing magic byte 0x00")
        _, schema_id = _HEADER.unpack_from(data)
        schema = self.registry.by_id(schema_id)
        buf = io.BytesIO(data)
        buf.seek(5)
        try:
            record = fastavro.schemaless_reader(buf, schema.parsed, None)
        except Exception as exc:  # fastavro raises many types for truncated/garbage bodies
            raise DecodeError(f"Avro body does not match schema id {schema_id}: {exc}") from exc
        if buf.tell() != len(data):
            raise DecodeError(
                f"{len(data) - buf.tell()} trailing bytes after the Avro body "
                f"(schema id {schema_id})"
            )
        found = record.get("event_type") if isinstance(record, dict) else None
        if not isinstance(record, dict) or found != schema.subject:
            raise ValidationFailed(
                f"event_type {found!r} does not match schema id {schema_id} ({schema.subject})",
                field="event_type",
            )
        return self._validate(record, schema.subject, schema.version)

    def from_json(self, data: bytes | str | dict[str, Any]) -> Envelope:
        """Validate a JSON envelope (bytes, text or already parsed) into the typed envelope.

        JSON comes from outside, so ``occurred_at`` may not be in the future either.
        """
        obj: Any = data if isinstance(data, dict) else load_json(data)
        if not isinstance(obj, dict):
            raise DecodeError(f"an event must be a JSON object, got {type(obj).__name__}")
        event_type = obj.get("event_type")
        if not isinstance(event_type, str):
            raise ValidationFailed("event_type: field required (a string)", field="event_type")
        spec_for(event_type)
        version = obj.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValidationFailed("schema_version: must be an integer", field="schema_version")
        return _not_future(self._validate(obj, event_type, version))

    def decode_any(self, data: bytes) -> Envelope:
        """Ingress accepts both: Avro when it starts with the magic byte, JSON otherwise."""
        if data[:1] == b"\x00":
            return _not_future(self.decode(data))
        return self.from_json(data)

    @staticmethod
    def to_json(event: Envelope) -> str:
        """The JSON form of an event, for people and HTTP."""
        return event.model_dump_json()

    @staticmethod
    def _validate(obj: dict[str, Any], event_type: str, version: int) -> Envelope:
        model = model_for(event_type, version)
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            raise validation_failed(exc) from None
        except OverflowError as exc:  # the types bound what they can; this is the backstop
            raise ValidationFailed(f"a value is out of range: {exc}") from None
        except RecursionError:
            raise DecodeError("the event nests too deeply", reason="schema.too_deep") from None


def _not_future(event: Envelope, now: datetime | None = None) -> Envelope:
    """Refuse at the edges an event that claims to have happened after ``now`` + skew.

    Not a model rule: decoding stays a function of the bytes (``Recent`` relies on it).
    """
    latest = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    if event.occurred_at > latest:
        raise ValidationFailed(
            f"occurred_at: {event.occurred_at.isoformat()} is in the future "
            f"(more than {MAX_CLOCK_SKEW.total_seconds():.0f} s ahead of this clock)",
            field="occurred_at",
            reason=REASON_DATE_RANGE,
        )
    return event


class Recent:
    """Events this process has just decoded, by their exact bytes, for the next reader.

    Ingest forwards valid Avro to the canonical topic byte for byte, and in a worker that
    also runs correlate the same bytes come back to it moments later: correlate takes the
    decoded event from here instead of decoding and validating it again (a sixth of a
    worker's time). Decoding is a function of the bytes and this process's schemas, so a hit
    is exactly what decoding would give; a miss just decodes.

    Bounded to ``size`` events. When full, entries older than ``max_age`` seconds go (their
    canonical partition belongs to another worker, or they were re-read); if none is that
    old, the new event is not kept. Keeping the oldest rather than the newest matters when
    ingest runs ahead of correlate through a backlog: what is kept is what correlate reads
    next, so every kept event is used once.
    """

    def __init__(self, size: int, max_age: float = 30.0) -> None:
        self.size = size
        self.max_age = max_age
        self._events: OrderedDict[bytes, tuple[Envelope, float]] = OrderedDict()

    def keep(self, data: bytes, event: Envelope) -> None:
        """Remember ``event`` as what ``data`` decodes to, if there is room."""
        if self.size <= 0:
            return
        events = self._events
        now = time.monotonic()
        if len(events) >= self.size:
            while events and now - next(iter(events.values()))[1] > self.max_age:
                events.popitem(last=False)
            if len(events) >= self.size:
                return
        events[data] = (event, now)

    def take(self, data: bytes) -> Envelope | None:
        """The event ``data`` decodes to, if it was kept; each is taken once."""
        if not self._events:
            return None
        found = self._events.pop(data, None)
        return found[0] if found is not None else None

    def __len__(self) -> int:
        return len(self._events)
