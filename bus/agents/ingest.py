"""Ingest: the bus's front door. Untrusted bytes in; canonical events or dead letters out.

Each record of the ingress topics is, in order: size-checked, decoded (Confluent Avro or
JSON), validated against its event type's model (USCC check included), bound to its publisher
(on a department's own ingress, ``source`` must be that department), authorised against
the department directory and the policy (who may act on whose decision), and de-duplicated by
``event_id``. Accepted events go to their
family's canonical topic, keyed by subject, as Avro; everything else goes to dead letters
with the original bytes and a machine-readable reason. Nothing stops the agent and nothing
is dropped: an unexpected exception dead-letters the record with reason ``ingest.crash``.

It is a batch agent (``bus.agents.runtime``): a whole fetch is checked at once, outputs and the
de-duplication changelog are acknowledged before offsets are committed. Duplicates are found
per ingress partition number: publishers key events by subject (``BusClient`` does), and every
ingress topic has the same partition count, so every copy of an event lands on the same
partition number, whichever ingress topic it came by.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bus.agents.out import Out, deadletter_headers
from bus.agents.runtime import BatchAgent, Record
from bus.agents.stores import KeyedStore, SeenStore
from bus.errors import AuthorisationError, BusError, DecodeError, DuplicateEvent
from bus.schemas.envelope import HISTORICAL, Envelope
from bus.schemas.events import EVENT_TYPES
from bus.streaming.topics import (
    DEADLETTER,
    INGEST_OWNERS,
    INGEST_SEEN,
    INGRESS,
    canonical_topic,
    department_ingress_topic,
    publishing_departments,
)

if TYPE_CHECKING:
    from bus.agents.app import Context

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


def _historical(r: Record) -> Headers:
    """The publisher's "this records the past" mark, carried to the canonical record."""
    for k, v in r.headers or ():
        if k == HISTORICAL and v == b"1":
            return [(HISTORICAL, b"1")]
    return []


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

    def check(self, value: bytes | None, publisher: str | None = None) -> Accepted:
        """Decode, validate and authorise one record; raises a ``BusError`` with a reason.

        ``publisher`` is the department the record's way in proves (its own ingress topic,
        which only its Kafka principal may write); ``None`` where nothing does (the shared
        ingress, whose producers are the bus's own edges).
        """
        if not value:
            raise DecodeError("empty record: no event in the value", reason="schema.empty")
        if len(value) > self.max_bytes:
            raise DecodeError(
                f"event is {len(value)} bytes; the limit is {self.max_bytes}",
                reason="size.too_large",
            )
        event = self.codec.decode_any(value)
        if publisher is not None and event.source != publisher:
            raise AuthorisationError(
                f"source {event.source} on the ingress of {publisher}: only {publisher} writes "
                "there, and only in its own name",
                reason="auth.source_mismatch",
                field="source",
            )
        self.directory.authorise(event.source, event.event_type)
        self.directory.policy.check(event)
        # Avro that validated is already canonical: forward it byte for byte.
        out = value if value[:1] == b"\x00" else self.codec.encode(event)
        return Accepted(event, out)


class IngestAgent(BatchAgent):
    """The ingest agent: ingress topics -> canonical topics | dead letters, de-duplicated.

    Reads the shared ingress and every department's own ingress (``bus.streaming.topics``); a record
    of a department's topic is bound to that department.
    """

    name = "ingest"
    ctx: Context

    def __init__(self, ctx: Context) -> None:
        settings = ctx.settings
        self.seen = SeenStore(settings.topic(INGEST_SEEN.name))
        self.owners = KeyedStore(settings.topic(INGEST_OWNERS.name))
        #: topic -> the department it binds its records to
        self.bound = {
            department_ingress_topic(settings, code): code
            for code in publishing_departments(ctx.directory)
        }
        topics = [settings.topic(INGRESS.name), *self.bound]
        super().__init__(ctx, topics, stores=[self.seen, self.owners])
        self.policy = ctx.directory.policy
        self.ingestor = Ingestor(ctx)
        self.recent = ctx.recent
        self.deadletter = settings.topic(DEADLETTER.name)
        self.canonical = {t: canonical_topic(settings, t) for t in EVENT_TYPES}

    async def process(self, records: list[Record]) -> list[Out]:
        """Check every record: one output each; accepted ids go to the seen-store."""
        outs: list[Out] = []
        accepted: dict[int, dict[bytes, None]] = {}  # ids in order, each once
        typed: dict[tuple[str, str], int] = {}
        for r in records:
            try:
                ok = self.ingestor.check(r.value, self.bound.get(r.topic))
                key = ok.event.event_id.bytes
                batch = accepted.setdefault(r.partition, {})
                if self.seen.seen(r.partition, key) or key in batch:
                    raise DuplicateEvent(f"event_id {ok.event.event_id} was already accepted")
                self._authorise_act(r.partition, ok.event)
                batch[key] = None
                if ok.value is r.value:  # forwarded as it came: correlate reads these bytes
                    self.recent.keep(ok.value, ok.event)
                kind = (ok.event.event_type, ok.event.source)
                typed[kind] = typed.get(kind, 0) + 1
                outs.append(
                    Out(
                        self.canonical[ok.event.event_type],
                        ok.value,
                        key=ok.event.subject.encode(),
                        headers=ok.event.kafka_headers() + _historical(r),
                    )
                )
            except Exception as exc:  # every failure becomes a dead letter, never a crash
                if not isinstance(exc, BusError):
                    log.exception("ingest: unexpected failure at %s/%s", r.partition, r.offset)
                outs.append(
                    Out(
                        self.deadletter,
                        r.value or b"",
                        key=r.key,
                        headers=deadletter_headers(exc, r),
                    )
                )
        for p, keys in accepted.items():
            self.seen.add(p, list(keys))
        counter = self.ctx.metrics.events_typed
        for (event_type, source), n in typed.items():  # sources are directory codes: bounded
            counter.labels(self.name, event_type, source).inc(n)
        return outs

    def _authorise_act(self, partition: int, event: Envelope) -> None:
        """The policy's ownership check: who made the decision this event acts on?

        Owners are kept per ingress partition, as the seen ids are: every event about one
        enterprise lands on the partition of its subject.
        """
        found = self.policy.decision_of(event)
        if found is None:
            return
        act, key = found
        owner = self.owners.get(partition, key)
        self.policy.authorise_act(event, act, owner)
        if owner is None:  # the decision itself: its publisher owns it from now on
            self.owners.put(partition, key, event.source)
