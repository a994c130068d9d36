"""Ingest: the bus's front door. Untrusted bytes in; canonical events or dead letters out.

Each record of the ingress topic is, in order: size-checked, decoded (Confluent Avro or
JSON), validated against its event type's model (USCC check included), authorised against
the department directory, and de-duplicated by ``event_id``. Accepted events go to their
family's canonical topic, keyed by subject, as Avro; everything else goes to dead letters
with the original bytes and a machine-readable reason. Nothing stops the agent and nothing
is dropped: an unexpected exception dead-letters the record with reason ``ingest.crash``.

Work is done in batches (``Settings.batch_size``): sends are not awaited one by one; Faust
flushes the producer before it commits the batch's offsets, so at-least-once holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
from faust.types import EventT

from bus.agents._faust import current as _current
from bus.errors import BusError, DecodeError, DuplicateEvent
from bus.schemas.envelope import Envelope
from bus.topics import canonical_topic

if TYPE_CHECKING:
    from bus.app import Context

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Accepted:
    """An event that passed every check, with the bytes the canonical topic gets."""

    event: Envelope
    value: bytes


class Ingestor:
    """The checks, free of Kafka, so they can be unit-tested and reused by the gateway."""

    def __init__(self, ctx: Context) -> None:
        self.codec = ctx.codec
        self.directory = ctx.directory
        self.max_bytes = ctx.settings.max_event_bytes

    def check(self, value: bytes | None) -> Accepted:
        """Decode, validate and authorise one record; raises a ``BusError`` with a reason."""
        if not value:
            raise DecodeError("empty record: no event in the value", reason="schema.empty")
        if len(value) > self.max_bytes:
            raise DecodeError(
                f"event is {len(value)} bytes; the limit is {self.max_bytes}",
                reason="size.too_large",
            )
        event = self.codec.decode_any(value)
        self.directory.authorise(event.source, event.event_type)
        # Avro that validated is already canonical: forward it byte for byte.
        out = value if value[:1] == b"\x00" else self.codec.encode(event)
        return Accepted(event, out)


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


def register(app: faust.App, ctx: Context) -> None:
    """Add the ingest agent and its de-duplication table to ``app``."""
    settings = ctx.settings
    ingress = app.topic(
        settings.topic("ingress"),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    deadletter = settings.topic("deadletter")
    seen = app.Table(
        "ingest-seen",
        key_type=str,
        value_type=int,
        partitions=settings.partitions,
        help="event_id -> when it was first accepted (epoch ms); the idempotency memory",
    )
    ingestor = Ingestor(ctx)
    producer = app.producer

    async def handle(events: Sequence[EventT]) -> None:
        batch_ids: set[str] = set()
        for ev in events:
            message = ev.message
            try:
                accepted = ingestor.check(message.value)
                event_id = str(accepted.event.event_id)
                if event_id in batch_ids or event_id in seen:
                    raise DuplicateEvent(f"event_id {event_id} was already accepted")
                batch_ids.add(event_id)
                with _current(ev):
                    seen[event_id] = int(time.time() * 1000)
                await producer.send(
                    canonical_topic(settings, accepted.event.event_type),
                    accepted.event.subject.encode(),
                    accepted.value,
                    None,
                    None,
                    accepted.event.kafka_headers(),
                )
            except Exception as exc:  # every failure becomes a dead letter, never a crash
                if not isinstance(exc, BusError):
                    log.exception("ingest failed unexpectedly at %s", message.tp)
                await producer.send(
                    deadletter,
                    message.key,
                    message.value or b"",
                    None,
                    None,
                    deadletter_headers(exc, message),
                )

    @app.agent(ingress, name="ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(settings.batch_size, settings.batch_wait):
            await handle(events)
