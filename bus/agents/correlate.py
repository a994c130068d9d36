"""Correlate: the flow's fold. One record per enterprise, routing, and the case steps.

Reads every subject-keyed canonical topic in one consumer group. Because all of them have
the same partition count and are keyed by USCC, the range assignor gives a worker the same
partition numbers of every topic: everything about one enterprise reaches one worker, and
its record (``bus.domain.record.EnterpriseRecord``) lives in a key-value store beside it.

Every event is folded into its record and routed to the inboxes that subscribe to it. An
event that starts a matter or answers a task becomes a *case step* on ``cases``: the event's
own bytes and the record as of it, dated by the log. The case engine (``bus.agents.cases``,
Faust agents) decides on that alone. A matter's trigger for an enterprise the bus has not
seen registered is parked in the record, never decided on missing data, and handed on when
the registration arrives.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bus.agents.cases.steps import ANSWERS, BUS, StepKind, derived_id, encode_step, starts_case
from bus.agents.out import Headers, Out, deadletter
from bus.agents.route import NOTIFY, Router, load_subscriptions
from bus.agents.runtime import BatchAgent, Record
from bus.agents.stores import PartedStore, SeenStore
from bus.domain.matters import answering, by_trigger, load_matters
from bus.domain.record import EnterpriseRecord, apply_part, encode_part
from bus.errors import BusError
from bus.schemas.envelope import HISTORICAL, Envelope
from bus.schemas.events import FAMILIES, model_for
from bus.streaming.topics import CASES, CORRELATE_RECORDS, CORRELATE_SEEN, DEADLETTER

if TYPE_CHECKING:
    from bus.agents.app import Context

__all__ = ["CorrelateAgent", "derived_id"]

log = logging.getLogger(__name__)

BUS_FAMILIES = ("certificate.", "report.issued", "task.", "approval.decided", "application.decided")
FACTS = ("enterprise", "licence", "penalty")
"""Families that record facts about an enterprise, in the order they are folded when their
records share a millisecond with others."""


def _log_time(r: Record) -> datetime:
    """When the log took ``r`` (its record timestamp), in UTC."""
    if r.timestamp is None or r.timestamp < 0:  # a record without a time: the epoch, not now
        return datetime.fromtimestamp(0, UTC)
    return datetime.fromtimestamp(r.timestamp / 1000, UTC)


class CorrelateAgent(BatchAgent):
    """Enterprise records, routing, and the case steps handed to the case engine."""

    name = "correlate"
    ctx: Context

    def __init__(self, ctx: Context) -> None:
        s = ctx.settings
        self.records: PartedStore[EnterpriseRecord] = PartedStore(
            s.topic(CORRELATE_RECORDS.name),
            lambda uscc: EnterpriseRecord(uscc=uscc),
            encode_part,
            apply_part,
            live=s.records_decoded,
        )
        self.seen = SeenStore(s.topic(CORRELATE_SEEN.name))
        topics = [s.topic(f"events.{f}") for f in FAMILIES]
        super().__init__(ctx, topics, stores=[self.records, self.seen])
        matters = load_matters(s.matters_dir)
        self.triggers = by_trigger(matters)
        # events that may end running cases: handed to the case engine as they come
        self.cancels = {c.event for m in matters.values() for c in m.cancel}
        # events that answer tasks: task.* and those the matters name (an opinion)
        self.answers = {*ANSWERS, *answering(matters)}
        self.codec = ctx.codec
        self.recent = ctx.recent
        self.deadletter = s.topic(DEADLETTER.name)
        self.cases = s.topic(CASES.name)
        self.stepped = 0  # case steps handed to the case engine, for tests and metrics
        self._at = datetime.fromtimestamp(0, UTC)  # the log time of the record in hand
        self.router = Router(
            s, ctx.directory, load_subscriptions(s.subscriptions_file, ctx.directory)
        )

    def topic_rank(self, topic: str) -> int:
        """Facts before what acts on them, within one millisecond: a registration, licence or
        penalty logged with a request is folded in before the request is decided on it."""
        family = topic.rsplit(".", 1)[-1]
        return FACTS.index(family) if family in FACTS else len(FACTS)

    async def process(self, records: list[Record]) -> list[Out]:
        """Fold each event into its enterprise's record; route it; hand on its case step."""
        outs: list[Out] = []
        taken = 0
        for r in records:
            # Steps are dated by the log, not the clock: the time the bus accepted the event,
            # so a replay of the log gives the same decisions.
            self._at = _log_time(r)
            try:
                event = self.recent.take(r.value or b"")
                if event is None:
                    event = self.codec.decode(r.value or b"")
                else:
                    taken += 1
            except BusError as exc:  # e.g. a schema this worker does not know (a rollback)
                log.error("correlate: cannot decode %s/%s/%s: %s", r.topic, r.partition,
                          r.offset, exc)  # fmt: skip
                outs.append(deadletter(self.deadletter, r, exc, self.name))
                continue
            key = event.event_id.bytes
            if self.seen.seen(r.partition, key):
                continue  # a re-delivered copy: its effects were produced already
            self.seen.add(r.partition, [key])
            record = self.records.get(r.partition, event.subject) or EnterpriseRecord(
                uscc=event.subject
            )
            if event.source == BUS and event.event_type.startswith(BUS_FAMILIES):
                # The bus's own decisions: deliver them to whom they name.
                notify = dict(r.headers or ()).get(NOTIFY, b"").decode()
                outs.extend(self._route(event, r, record, notify))
                if event.event_type == "task.overdue":
                    # A deadline passed: the case engine ends a task whose matter says it
                    # times out, on the record as of now in the log.
                    value, headers = r.value or b"", list(r.headers or ())
                    origin = f"{r.topic}/{r.partition}/{r.offset}"
                    outs.append(self._step("answer", event, value, headers, origin, record))
                continue
            origin = f"{r.topic}/{r.partition}/{r.offset}"
            if event.event_type in self.answers:
                # The case engine decides whether it may answer; it confirms and routes it.
                value, headers = r.value or b"", list(r.headers or ())
                outs.append(self._step("answer", event, value, headers, origin, record))
                continue
            parts = set(record.apply(event))
            matters = self.triggers.get(event.event_type, ())
            if matters and (HISTORICAL, b"1") in (r.headers or ()):
                matters = ()  # it records the past: folded in, no live work started
            waits = [m.name for m in matters if m.requires_registration]
            if waits and record.status == "unknown":
                record.waiting.append(event.model_dump(mode="json", warnings=False))
                parts.add("profile")
                log.info("%s %s waits for the registration of %s", ", ".join(waits),
                         event.event_id, record.uscc)  # fmt: skip
            elif any(starts_case(m, event, record) for m in matters):
                value, headers = r.value or b"", list(r.headers or ())
                outs.append(self._step("trigger", event, value, headers, origin, record))
            elif event.event_type in self.cancels and (HISTORICAL, b"1") not in (r.headers or ()):
                value, headers = r.value or b"", list(r.headers or ())
                outs.append(self._step("signal", event, value, headers, origin, record))
            outs.extend(self._route(event, r, record))
            if self.router.must_wait(event, record.status != "unknown"):
                record.unrouted[str(event.event_id)] = event.model_dump(mode="json", warnings=False)
                parts.add(f"unrouted:{event.event_id}")
            if event.event_type == "enterprise.registered":
                parts |= {f"unrouted:{k}" for k in record.unrouted}  # routed now: gone
                if record.waiting:
                    parts.add("profile")
                outs.extend(self._registered(record))
            if parts:
                self.records.put(r.partition, event.subject, record, parts)
        self.ctx.metrics.handover.labels("taken").inc(taken)
        self.ctx.metrics.handover.labels("decoded").inc(len(records) - taken)
        return outs

    def _step(
        self,
        kind: StepKind,
        event: Envelope,
        value: bytes,
        headers: Headers,
        origin: str,
        record: EnterpriseRecord,
    ) -> Out:
        """A case step for the case engine, keyed like the event (same partition number)."""
        self.stepped += 1
        step = encode_step(kind, self._at, value, headers, origin, record)
        kept = [(k, v) for k, v in headers if k in ("event_type", "event_id", "correlation_id")]
        return Out(self.cases, step, key=event.subject.encode(), headers=kept)

    def _registered(self, record: EnterpriseRecord) -> list[Out]:
        """The registration arrived: hand on parked triggers, route parked events."""
        outs: list[Out] = []
        if record.waiting:
            parked, record.waiting = record.waiting, []
            for dump in parked:
                trigger = model_for(dump["event_type"]).model_validate(dump)
                value, headers = self.codec.encode(trigger), trigger.kafka_headers()
                outs.append(self._step("trigger", trigger, value, headers, "", record))
        if record.unrouted:
            unrouted, record.unrouted = record.unrouted, {}
            for dump in unrouted.values():
                event = model_for(dump["event_type"]).model_validate(dump)
                outs.extend(self._route(event, None, record, deferred=True))
        return outs

    def _route(
        self,
        event: Envelope,
        r: Record | None,
        record: EnterpriseRecord,
        notify: str = "",
        *,
        deferred: bool = False,
    ) -> list[Out]:
        """Inbox deliveries of one event, decided on the record as it stands now."""
        profile = {**record.profile, "status": record.status}
        if r is not None:
            value, headers = r.value or b"", list(r.headers or ())
        else:  # parked: re-encoded, the same event
            value, headers = self.codec.encode(event), event.kafka_headers()
        registered = record.status != "unknown"
        outs = self.router.outs(
            event, value, headers, profile, notify, registered=registered, deferred=deferred
        )
        if outs and r is not None:  # from the bus accepting it, not from when it occurred:
            age = time.time() - r.timestamp / 1000  # a penalty may be published months later
            self.ctx.metrics.delivery_seconds.labels(self.name).observe(max(age, 0.0))
        return outs
