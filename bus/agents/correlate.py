"""Correlate: one record per enterprise, and the matters that decide on it.

Reads every subject-keyed canonical topic in one consumer group. Because all of them have
the same partition count and are keyed by USCC, the range assignor gives a worker the same
partition numbers of every topic: everything about one enterprise reaches one worker, and
its record (``bus.record.EnterpriseRecord``) lives in a key-value store beside it.

Matters (``bus/matters/*.yaml``) run when their trigger arrives. The compliance certificate:
a clean record for the requested period gives a signed ``certificate.issued`` at once;
otherwise a ``task.created`` review for each bureau whose penalties are on the record.
A request for an enterprise the bus has not seen registered is parked, never decided on
missing data, and decided when the registration arrives.

Effects are idempotent: the certificate's event id and serial and each task's id are
derived from the request's event id, so re-processing a request reproduces the same events
(consumers de-duplicate by event id), and events already handled are skipped.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bus.agents.out import Out, deadletter
from bus.agents.route import NOTIFY, Router, load_subscriptions
from bus.agents.runtime import BatchAgent, Record
from bus.agents.stores import PartedStore, SeenStore
from bus.certificates import Signer, UnsignedCertificate, new_serial
from bus.errors import BusError
from bus.matters import Matter, TaskTemplate, load_matters
from bus.record import EnterpriseRecord, TaskEntry, apply_part, encode_part
from bus.schemas.envelope import HISTORICAL, Envelope
from bus.schemas.events import FAMILIES, model_for
from bus.tasks import TASK_STATES, TaskKey
from bus.topics import (
    CASE_PARTIES,
    CORRELATE_RECORDS,
    CORRELATE_SEEN,
    DEADLETTER,
    canonical_topic,
)
from bus.workdays import CHINA_TZ, WorkingCalendar

if TYPE_CHECKING:
    from bus.app import Context

log = logging.getLogger(__name__)

BUS = "ks.bus"
ANSWERS = ("task.accepted", "task.completed", "task.rejected")
BUS_FAMILIES = ("certificate.", "task.", "approval.decided")
_IDS = uuid.UUID("0b5e7c1e-6a1d-4c55-9d0e-4b7573000001")  # namespace of derived ids


def _task_parts(before: Mapping[str, str], record: EnterpriseRecord) -> set[str]:
    """Changelog parts of tasks created, answered or removed since ``before``."""
    after = {k: v.state for k, v in record.tasks.items()}
    return {f"task:{k}" for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _log_time(r: Record) -> datetime:
    """When the log took ``r`` (its record timestamp), in UTC."""
    if r.timestamp is None or r.timestamp < 0:  # a record without a time: the epoch, not now
        return datetime.fromtimestamp(0, UTC)
    return datetime.fromtimestamp(r.timestamp / 1000, UTC)


def derived_id(*parts: str) -> uuid.UUID:
    """A stable event id for an effect: the same cause always gives the same id."""
    return uuid.uuid5(_IDS, "/".join(parts))


class CorrelateAgent(BatchAgent):
    """Enterprise records and the matters that decide on them."""

    name = "correlate"

    def __init__(
        self, ctx: Context, signer: Signer, calendar: WorkingCalendar | None = None
    ) -> None:
        s = ctx.settings
        self.records: PartedStore[EnterpriseRecord] = PartedStore(
            s.topic(CORRELATE_RECORDS.name),
            lambda uscc: EnterpriseRecord(uscc=uscc),
            encode_part,
            apply_part,
        )
        self.seen = SeenStore(s.topic(CORRELATE_SEEN.name))
        topics = [s.topic(f"events.{f}") for f in FAMILIES]
        super().__init__(ctx, topics, stores=[self.records, self.seen])
        self.signer = signer
        self.calendar = calendar or WorkingCalendar.load(s.calendar_dir)
        self.matters: dict[str, Matter] = load_matters()
        self.codec = ctx.codec
        self.recent = ctx.recent
        self._matters_by_name = {m.name: m for m in self.matters.values()}
        self.deadletter = s.topic(DEADLETTER.name)
        self.tick_interval = s.task_check_interval
        # Deadlines by due time: (due, partition, enterprise), one entry per task; a tick pops
        # what is due instead of walking every record. Entries of closed tasks or of
        # partitions given away are skipped when popped.
        self._due: list[tuple[datetime, int, str]] = []
        self._partition = 0  # the partition of the record in hand
        self._task_series: set[TaskKey] = set()
        self._task_counts: dict[int, Counter[TaskKey]] = {}  # by partition held
        # Events that may create, answer or close a task (a registration decides parked
        # requests); only these are counted before and after.
        self._task_events = {*ANSWERS, "approval.opinion", "enterprise.registered", *self.matters}
        self.decided = 0  # certificates issued + review cases opened, for tests and metrics
        self._at = datetime.fromtimestamp(0, UTC)  # the log time of the record in hand
        self.router = Router(
            s, ctx.directory, load_subscriptions(s.subscriptions_file, ctx.directory)
        )

    async def process(self, records: list[Record]) -> list[Out]:
        """Fold each event into its enterprise's record; run matters it triggers; route it."""
        outs: list[Out] = []
        taken = 0
        recounted = False
        for r in records:
            # Decisions are dated by the log, not the clock: the time the bus accepted the
            # event that caused them, so a replay of the log gives the same documents.
            self._at = _log_time(r)
            self._partition = r.partition
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
                # The bus's own decisions are already in the record; deliver them.
                notify = dict(r.headers or ()).get(NOTIFY, b"").decode()
                outs.extend(self._route(event, r, record, notify))
                continue
            tasks_before = {k: v.state for k, v in record.tasks.items()}
            counts_before = record.task_counts() if event.event_type in self._task_events else None
            if event.event_type in ANSWERS or event.event_type == "approval.opinion":
                try:
                    outs.extend(self._answer(record, event))
                except BusError as exc:
                    outs.append(deadletter(self.deadletter, r, exc, self.name))
                    continue
                parts = {"profile"}
                outs.extend(self._route(event, r, record, event.source))  # taken: confirm it
            else:
                parts = set(record.apply(event))
                matter = self.matters.get(event.event_type)
                if matter is not None and (HISTORICAL, b"1") in (r.headers or ()):
                    matter = None  # it records the past: folded in, no live work started
                if matter is not None:
                    cases = (len(record.reviews), len(record.waiting))
                    outs.extend(self._trigger(matter, record, event))
                    if (len(record.reviews), len(record.waiting)) != cases:
                        parts.add("profile")
                outs.extend(self._route(event, r, record))
                if self.router.must_wait(event, record.status != "unknown"):
                    record.unrouted[str(event.event_id)] = event.model_dump(
                        mode="json", warnings=False
                    )
                    parts.add(f"unrouted:{event.event_id}")
                if event.event_type == "enterprise.registered":
                    parts |= {f"unrouted:{k}" for k in record.unrouted}  # routed now: gone
                    outs.extend(self._registered(record))
            parts |= _task_parts(tasks_before, record)
            if parts:
                self.records.put(r.partition, event.subject, record, parts)
            if counts_before is not None:
                recounted |= self._recount(r.partition, counts_before, record.task_counts())
        if recounted:
            self._export_task_counts()
        self.ctx.metrics.handover.labels("taken").inc(taken)
        self.ctx.metrics.handover.labels("decoded").inc(len(records) - taken)
        return outs

    def _registered(self, record: EnterpriseRecord) -> list[Out]:
        """The registration arrived: decide parked requests, route parked events."""
        outs: list[Out] = []
        if record.waiting:
            parked, record.waiting = record.waiting, []
            for trigger in parked:
                matter = self.matters[trigger["event_type"]]
                replayed = model_for(trigger["event_type"]).model_validate(trigger)
                outs.extend(self._trigger(matter, record, replayed))
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

    def _trigger(self, matter: Matter, record: EnterpriseRecord, event: Envelope) -> list[Out]:
        """Run ``matter`` for its trigger event."""
        if matter.requires_registration and record.status == "unknown":
            record.waiting.append(
                event.model_dump(mode="json", warnings=False)
            )  # see decode_trusted
            log.info("%s %s waits for the registration of %s", matter.name,
                     event.event_id, record.uscc)  # fmt: skip
            return []
        rule = matter.decision.rule
        if rule == "clean_record":
            p = event.payload
            on_record = record.penalties_between(p.period_start, p.period_end)
            action = matter.decision.otherwise if on_record else matter.decision.when_clean
            self.decided += 1
            if action == "issue_certificate":
                parties = {event.source, getattr(p, "requested_by", None)}
                return [
                    self._parties(event.correlation_id, parties),
                    self._certificate(event, record, on_record),
                ]
            by_agency: dict[str, list[str]] = {}
            for entry in on_record:
                by_agency.setdefault(entry.agency or "unknown", []).append(entry.case_number)
            return self._open_case(matter, event, record, {"review": by_agency})
        if rule == "holds_licences":
            licences = [lic for lic in record.licences.values() if lic.state == "active"]
            if not licences:
                return []
            by_department: dict[str, list[str]] = {}
            for lic in licences:
                dept = lic.issuing_department or matter.lead
                by_department.setdefault(dept, []).append(lic.licence_number)
            return self._open_case(matter, event, record, {t.name: by_department
                                                           for t in matter.tasks})  # fmt: skip
        # "always" and "all_opinions": every task template, assignees resolved
        return self._open_case(matter, event, record, {
            t.name: self._assignees(t, event, record) for t in matter.tasks})  # fmt: skip

    def _assignees(
        self, template: TaskTemplate, event: Envelope, record: EnterpriseRecord
    ) -> dict[str, list[str]]:
        """Assignee -> evidence for one task template."""
        if template.assignee == "requested_departments":
            return {d: [event.payload.application_number] for d in event.payload.departments}
        if template.assignee == "town_of_enterprise":
            town = str(record.profile.get("town", "")).lower()
            code = f"ks.town.{town}"
            return {code if self.ctx.directory.get(code) else "ks.amr": []}
        return {template.assignee: []}

    def _certificate(
        self,
        request: Envelope,
        record: EnterpriseRecord,
        on_record: list[Any],
        *,
        result: str | None = None,
    ) -> Out:
        p = request.payload
        issued_at = self._at
        draft = UnsignedCertificate(
            uscc=request.subject,
            serial=new_serial(BUS, str(request.event_id), requested_at=request.occurred_at),
            request_event_id=str(request.event_id),
            enterprise_name=record.name or record.uscc,
            period_start=p.period_start,
            period_end=p.period_end,
            purpose=p.purpose,
            result=result or ("clean" if not on_record else "record_found"),
            record=[
                {
                    "case_number": e.case_number,
                    "agency": e.agency or "unknown.agency",
                    "state": e.state,
                    "decided_on": e.decided_on,
                }
                for e in on_record
            ],
            issuing_authority=BUS,
            issued_at=issued_at,
        )
        signed = self.signer.sign(draft).to_payload()
        self.ctx.metrics.decision_seconds.labels("compliance-certificate").observe(
            max((datetime.now(UTC) - request.occurred_at).total_seconds(), 0.0)
        )
        issued = model_for("certificate.issued")(
            event_type="certificate.issued",
            event_id=derived_id("certificate", str(request.event_id)),
            source=BUS,
            occurred_at=issued_at,
            subject=request.subject,
            correlation_id=request.correlation_id,
            causation_id=request.event_id,
            payload=signed,
        )
        return self._out(issued, request.source, request.payload.requested_by)

    def _open_case(
        self,
        matter: Matter,
        trigger: Envelope,
        record: EnterpriseRecord,
        plan: dict[str, dict[str, list[str]]],
    ) -> list[Out]:
        """Create the tasks of a case: ``plan`` is template name -> assignee -> evidence."""
        now = self._at.astimezone(CHINA_TZ)
        case = str(trigger.event_id)
        outs: list[Out] = []
        tasks: dict[str, list[str]] = {}
        for name, assignees in plan.items():
            template = matter.task(name)
            due = self.calendar.add_working_days(now, template.working_days)
            supervisor = {
                "requester": getattr(trigger.payload, "requested_by", None) or matter.lead,
                "lead": matter.lead,
            }.get(template.supervisor or "", template.supervisor)
            for assignee, evidence in sorted(assignees.items()):
                task_id = f"task-{derived_id(name, case, assignee).hex[:16]}"
                tasks[task_id] = evidence
                record.tasks[task_id] = TaskEntry(
                    task_id=task_id, matter=matter.name, case=case, assignee=assignee,
                    supervisor=supervisor, due_at=due,
                )  # fmt: skip
                title = template.title.format(
                    enterprise=record.name or record.uscc,
                    cases=", ".join(evidence),
                    licences=", ".join(evidence),
                    application=getattr(trigger.payload, "application_number", ""),
                    title=getattr(trigger.payload, "title", ""),
                )
                created = model_for("task.created")(
                    event_type="task.created",
                    event_id=derived_id("task.created", task_id),
                    source=BUS,
                    occurred_at=now,
                    subject=trigger.subject,
                    correlation_id=trigger.correlation_id,
                    causation_id=trigger.event_id,
                    payload={
                        "task_id": task_id, "matter": matter.name, "title": title[:500],
                        "assignee": assignee, "due_at": due,
                        "working_days": template.working_days, "supervisor": supervisor,
                        "evidence": evidence,
                    },
                )  # fmt: skip
                outs.append(self._out(created, assignee))
        if tasks:
            parties = {trigger.source, getattr(trigger.payload, "requested_by", None)}
            parties |= {t.assignee for t in record.tasks.values() if t.case == case}
            parties |= {t.supervisor for t in record.tasks.values() if t.case == case}
            outs.append(self._parties(trigger.correlation_id, parties))
            record.reviews[case] = {
                "matter": matter.name, "opened_at": self._at.timestamp(), "tasks": tasks,
                "request": trigger.model_dump(mode="json"),
            }  # fmt: skip
            for task_id in tasks:
                heapq.heappush(self._due, (record.tasks[task_id].due_at, self._partition,
                                           record.uscc))  # fmt: skip
        return outs

    def _answer(self, record: EnterpriseRecord, event: Envelope) -> list[Out]:
        """A department accepts, completes or rejects a task (or gives an opinion).

        Only the task's assignee may answer it; anything else is a dead letter.
        """
        p = event.payload
        if event.event_type == "approval.opinion":
            task = self._opinion_task(record, event)
        else:
            task = record.tasks.get(p.task_id)
        if task is None:
            key = getattr(p, "task_id", None) or getattr(p, "application_number", "?")
            raise BusError(f"no open task {key} for {record.uscc}", reason="task.unknown")
        if event.source != task.assignee:
            raise BusError(
                f"{event.source} may not answer task {task.task_id}: it is assigned to "
                f"{task.assignee}",
                reason="task.not_assignee",
            )
        if task.closed:
            raise BusError(f"task {task.task_id} is already {task.state}", reason="task.closed")
        if event.event_type == "task.accepted":
            task.state = "accepted"
            return []
        outs: list[Out] = []
        if event.event_type == "approval.opinion":
            task.state, task.outcome = "completed", str(p.opinion)
            task_notes = record.reviews.get(task.case, {}).setdefault("notes", {})
            task_notes[task.assignee] = p.note
            # The opinion is the answer: its task is completed, and says so on the task
            # topic like any other, or the assignee's and the operators' views keep it open.
            completed = {"task_id": task.task_id, "outcome": task.outcome, "note": p.note}
            outs.append(self._task_event(record, task, "task.completed", completed, event))
        elif event.event_type == "task.completed":
            task.state, task.outcome = "completed", p.outcome
        else:
            task.state, task.outcome = "rejected", "rejected"
        return outs + self._close_case_if_done(record, task.case)

    def _opinion_task(self, record: EnterpriseRecord, event: Envelope) -> TaskEntry | None:
        number = event.payload.application_number
        for case, review in record.reviews.items():
            if review["request"]["payload"].get("application_number") != number:
                continue
            for task_id in review["tasks"]:
                task = record.tasks.get(task_id)
                if task is not None and task.case == case and task.assignee == event.source:
                    return task
            # the application exists but this department was not asked
            raise BusError(
                f"{event.source} was not asked for an opinion on {number}",
                reason="task.not_assignee",
            )
        return None

    def _close_case_if_done(self, record: EnterpriseRecord, case: str) -> list[Out]:
        review = record.reviews.get(case)
        if review is None:
            return []
        tasks = [record.tasks[t] for t in review["tasks"] if t in record.tasks]
        if not all(t.closed for t in tasks):
            return []
        matter = self._matters_by_name[review["matter"]]
        closing: list[Out] = []
        if matter.decision.rule == "all_opinions":
            closing.append(self._approval_decided(record, review, tasks))
        elif matter.decision.rule == "clean_record":
            closing.append(self._certificate_after_review(record, review, tasks))
        del record.reviews[case]
        for t in tasks:
            record.forget_task(t.task_id)
        return closing

    def _approval_decided(
        self, record: EnterpriseRecord, review: dict[str, Any], tasks: list[TaskEntry]
    ) -> Out:
        trigger = model_for("approval.requested").model_validate(review["request"])
        notes = review.get("notes", {})
        refused = any(t.outcome != "approve" for t in tasks)
        decided = model_for("approval.decided")(
            event_type="approval.decided",
            event_id=derived_id("approval.decided", str(trigger.event_id)),
            source=BUS,
            occurred_at=self._at,
            subject=record.uscc,
            correlation_id=trigger.correlation_id,
            causation_id=trigger.event_id,
            payload={
                "application_number": trigger.payload.application_number,
                "decision": "refuse" if refused else "approve",
                "opinions": [
                    {"department": t.assignee,
                     "opinion": t.outcome if t.outcome in ("approve", "refuse") else "refuse",
                     "note": notes.get(t.assignee)}
                    for t in sorted(tasks, key=lambda t: t.assignee)
                ],
            },
        )  # fmt: skip
        self.ctx.metrics.decision_seconds.labels(review["matter"]).observe(
            max((datetime.now(UTC) - trigger.occurred_at).total_seconds(), 0.0)
        )
        return self._out(decided, trigger.source, *(t.assignee for t in tasks))

    def _certificate_after_review(
        self, record: EnterpriseRecord, review: dict[str, Any], tasks: list[TaskEntry]
    ) -> Out:
        outcomes = {t.outcome for t in tasks}
        if "rejected" in outcomes or "refused" in outcomes:
            result = "refused"
        elif "confirmed" in outcomes:
            result = "record_found"
        else:
            result = "clean"
        request = model_for("certificate.requested").model_validate(review["request"])
        p = request.payload
        # A bureau that answered "cleared" took its penalties off the record for this
        # certificate: they are not listed, so a certificate shows what stands after review.
        reviewed = {
            case
            for task_id, cases in review["tasks"].items()
            if (task := record.tasks.get(task_id)) is None or task.outcome != "cleared"
            for case in cases
        }
        on_record = [
            e
            for e in record.penalties_between(
                p.period_start, p.period_end, states=("active", "revoked", "repaired")
            )
            if e.case_number in reviewed
        ]
        return self._certificate(request, record, on_record, result=result)

    async def tick(self) -> list[Out]:
        """Tasks past their deadline: ``task.overdue`` once, then ``task.escalated`` once."""
        now = datetime.now(UTC) + timedelta(seconds=self.ctx.settings.clock_skew)
        outs: list[Out] = []
        touched: set[tuple[int, str]] = set()
        while self._due and self._due[0][0] <= now:
            _, partition, uscc = heapq.heappop(self._due)
            record = self.records.get(partition, uscc)
            if record is None or (partition, uscc) in touched:
                continue  # given away with its partition, or done in this tick already
            touched.add((partition, uscc))
            before = record.task_counts()
            changed: set[str] = set()
            for task in record.open_tasks():
                if task.due_at > now:
                    continue
                matter = self._matters_by_name.get(task.matter)
                if not task.overdue:
                    task.overdue = True
                    changed.add(f"task:{task.task_id}")
                    overdue = {"task_id": task.task_id, "assignee": task.assignee,
                               "due_at": task.due_at}  # fmt: skip
                    outs.append(self._task_event(record, task, "task.overdue", overdue))
                if (
                    not task.escalated
                    and task.supervisor
                    and matter is not None
                    and matter.late == "escalate_to_supervisor"
                ):
                    task.escalated = True
                    changed.add(f"task:{task.task_id}")
                    late = f"not completed by {task.due_at:%Y-%m-%d %H:%M} UTC"
                    escalated = {"task_id": task.task_id, "escalated_to": task.supervisor,
                                 "reason": late}  # fmt: skip
                    outs.append(self._task_event(record, task, "task.escalated", escalated))
            if changed:
                self.records.put(partition, uscc, record, changed)
                self._recount(partition, before, record.task_counts())
        self._export_task_counts()
        self.ctx.metrics.calendar_fallback_years.set(len(self.calendar.fallback_years))
        return outs

    def _recount(self, partition: int, before: Counter[TaskKey], after: Counter[TaskKey]) -> bool:
        """Move one enterprise's task counts from ``before`` to ``after``; True if they moved."""
        if before == after:
            return False
        counts = self._task_counts.setdefault(partition, Counter())
        counts.update(after)
        counts.subtract(before)
        self._task_counts[partition] = +counts  # drop what fell to zero
        return True

    def _export_task_counts(self) -> None:
        """Set the task gauge from the records of the partitions this worker holds.

        Every matter has a series for every state (with an empty department) even while it
        has no task, so a dashboard tells "none" from "not reported"; a combination that
        emptied goes back to zero rather than keeping its last value.
        """
        gauge = self.ctx.metrics.tasks
        total: Counter[TaskKey] = Counter()
        for counts in self._task_counts.values():
            total.update(counts)
        for name in self._matters_by_name:
            for state in TASK_STATES:
                gauge.labels(name, "", state).set(0)
        for key in self._task_series - total.keys():
            gauge.labels(*key).set(0)
        for key, n in total.items():
            gauge.labels(*key).set(n)
        self._task_series |= total.keys()

    async def on_assigned(self, partitions: set[int]) -> None:
        """Re-index the enterprises with open tasks and recount the tasks of what is held."""
        held = {tp.partition for tp in self.assignment}
        self._task_counts = {p: c for p, c in self._task_counts.items() if p in held}
        self._due = [e for e in self._due if e[1] in held and e[1] not in partitions]
        for p in partitions:
            counts: Counter[TaskKey] = Counter()
            for _, uscc, record in self.records.items(p):
                for task in record.open_tasks():
                    if not (task.overdue and task.escalated):
                        self._due.append((task.due_at, p, uscc))
                counts.update(record.task_counts())
            self._task_counts[p] = counts
        heapq.heapify(self._due)
        self._export_task_counts()

    def _task_event(
        self,
        record: EnterpriseRecord,
        task: TaskEntry,
        event_type: str,
        payload: dict[str, Any],
        cause: Envelope | None = None,
    ) -> Out:
        """A lifecycle event the bus publishes about ``task`` (caused by ``cause``, if any).

        Dated by its cause in the log, or, for a deadline passing, by the deadline itself.
        """
        review = record.reviews.get(task.case, {})
        request = review.get("request", {})
        event = model_for(event_type)(
            event_type=event_type,
            event_id=derived_id(event_type, task.task_id),
            source=BUS,
            subject=record.uscc,
            occurred_at=self._at if cause is not None else task.due_at,
            correlation_id=request.get("correlation_id") or task.case,
            # a case is named by its trigger's event id
            causation_id=cause.event_id if cause is not None else uuid.UUID(task.case),
            payload=payload,
        )
        notify = [task.assignee]
        if event_type == "task.escalated" and task.supervisor:
            notify.append(task.supervisor)
        return self._out(event, *notify)

    def _parties(self, correlation_id: str, parties: set[str | None]) -> Out:
        """Who takes part in a case, for the gateway's access check (``state.case-parties``)."""
        names = sorted(p for p in parties if p)
        return Out(
            self.ctx.settings.topic(CASE_PARTIES.name),
            json.dumps(names).encode(),
            key=correlation_id.encode(),
        )

    def _out(self, event: Envelope, *notify: str | None) -> Out:
        """A decision of the bus for its canonical topic; ``notify``: who must receive it."""
        headers = event.kafka_headers()
        recipients = ",".join(dict.fromkeys(n for n in notify if n))
        if recipients:
            headers.append((NOTIFY, recipients.encode()))
        return Out(
            canonical_topic(self.ctx.settings, event.event_type),
            self.codec.encode(event),
            key=event.subject.encode(),
            headers=headers,
        )
