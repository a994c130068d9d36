"""``CaseEngine``: the matters run on ``CaseState`` (triggers, answers, deadlines).

Pure of Kafka: the agent (``agent.install``) hands it steps and writes what it returns.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bus.agents.cases.state import CaseState, CaseStore
from bus.agents.cases.steps import ANSWERS, BUS, STAGE, case_id, derived_id, from_ms, task_id_for
from bus.agents.out import CRASH_REASONS, Headers, Out, rejection_headers
from bus.agents.route import Router, load_subscriptions
from bus.domain.certificates import Signer, UnsignedCertificate, new_serial
from bus.domain.decisions import sign_decision
from bus.domain.matters import (
    Closing,
    Emit,
    Matter,
    StepClosing,
    TaskTemplate,
    Timeout,
    assign,
    by_trigger,
    load_matters,
    next_steps,
)
from bus.domain.matters.facts import Facts
from bus.domain.record import EnterpriseRecord, TaskEntry
from bus.domain.reports import UnsignedReport, report_domains, sign_report
from bus.domain.tasks import TASK_STATES, TaskKey
from bus.domain.workdays import CHINA_TZ, WorkingCalendar
from bus.errors import BusError
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.streaming.topics import (
    CASE_PARTIES,
    DEADLETTER,
    canonical_topic,
)

if TYPE_CHECKING:
    from bus.agents.app import Context

log = logging.getLogger(__name__)


INDEX_YIELD_EVERY = 500
"""States indexed between two turns of the event loop (about 10 ms of work)."""


def _only_step(closing: Closing) -> str:
    """The task template of a case kept before its tasks' templates were (it had one)."""
    return next(iter(closing.steps), "")


@functools.lru_cache(maxsize=4)
def _legacy(rule: str) -> Closing | None:
    """How a case opened before cases kept their closing is decided: by the rule it kept, as
    the shipped matter of that rule decides (the same outcomes, written in the language)."""
    name = {"clean_record": "compliance-certificate", "all_opinions": "parallel-approval"}
    matter = load_matters().get(name.get(rule, ""))
    return matter.closing() if matter is not None else None


class CaseEngine:
    """The matters: triggers decided, answers taken, deadlines fired, on ``CaseState``."""

    def __init__(
        self, ctx: Context, signer: Signer, calendar: WorkingCalendar | None = None
    ) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.signer = signer
        self.calendar = calendar or WorkingCalendar.load(s.calendar_dir)
        self.matters: dict[str, Matter] = load_matters(s.matters_dir)  # by name
        self.triggers = by_trigger(self.matters)
        self.codec = ctx.codec
        self.deadletter = s.topic(DEADLETTER.name)
        self.router = Router(
            s, ctx.directory, load_subscriptions(s.subscriptions_file, ctx.directory)
        )
        self.decided = 0  # certificates issued + review cases opened, for tests and metrics
        self.steps = 0  # case steps handled (triggers, answers, tasks past their deadline)
        self._at = datetime.fromtimestamp(0, UTC)  # the log time of the step in hand
        # Deadlines by due time, per partition: (due, enterprise), one entry per open task.
        self._due: dict[int, list[tuple[datetime, str]]] = {}
        self._task_counts: dict[int, Counter[TaskKey]] = {}  # by partition indexed
        self._task_series: set[TaskKey] = set()
        self._recounted = False
        self._closings: dict[str, Closing] = {}  # parsed once per distinct kept definition
        self._partition = 0  # the partition of the step in hand
        self._indexing: set[int] = set()  # partitions whose index is being built

    # -- the steps ---------------------------------------------------------------------------

    def handle(self, partition: int, value: bytes, store: CaseStore) -> list[Out]:
        """One record of ``cases``: a trigger, an answer or a tick.

        Never raises: a step the engine fails on (a bug, a record it cannot read) leaves its
        case as it was and goes to dead letters with reason ``cases.crash`` and the error, so
        the partition goes on and the step is kept where operators look. A tick that fails
        is logged, and the partition's deadlines are read again from the table on its next
        step; the next tick fires what is due.
        """
        try:
            self._index(partition, store)
            step = json.loads(value)
            if step["kind"] == "tick":
                return self._tick(partition, from_ms(step["at"]), store)
            return self._step(partition, step, store)
        except Exception as exc:
            self.forget([partition])  # its index may be half popped: rebuilt next time
            log.exception("cases: a step of partition %s failed: a dead letter", partition)
            return self._crashed(value, exc)

    def _crashed(self, value: bytes, exc: Exception) -> list[Out]:
        try:
            step = json.loads(value)
            if step.get("kind") == "tick":
                return []
            raw = base64.b64decode(step["event"])
            headers = [(k, base64.b64decode(v)) for k, v in step["headers"]]
            origin = str(step.get("origin", ""))
        except Exception:  # not even a step: the record itself is the letter
            raw, headers, origin = value, [], ""
        text = f"{type(exc).__name__}: {exc}"
        letter = rejection_headers(headers, CRASH_REASONS[STAGE], text, STAGE, origin)
        return [Out(self.deadletter, raw, headers=letter)]

    def _step(self, partition: int, step: dict[str, Any], store: CaseStore) -> list[Out]:
        self._at = from_ms(step["at"])
        self._partition = partition
        raw = base64.b64decode(step["event"])
        headers = [(k, base64.b64decode(v)) for k, v in step["headers"]]
        origin = str(step.get("origin", ""))
        try:
            event = self.codec.decode(raw)
        except BusError as exc:  # e.g. a schema this worker does not know (a rollback)
            return [self._letter(raw, None, headers, origin, exc)]
        record = EnterpriseRecord.model_validate(step["record"])
        state = store.get(event.subject)
        step_id = str(event.event_id)
        if state is not None and step_id in state.done:
            return []  # re-delivered: its effects and state were made already
        # A copy: a step that fails half-way must leave the state as it was.
        state = state.model_copy(deep=True) if state is not None else CaseState()
        before = state.task_counts()
        self.steps += 1
        if step["kind"] == "answer" and event.source == BUS:
            outs = self._timed_out(record, state, event)  # the bus's own task.overdue
            if not outs:
                return []
        elif step["kind"] == "answer":
            try:
                outs = self._answer(record, state, event)
            except BusError as exc:
                state.remember(step_id)
                store.put(event.subject, state)
                return [self._letter(raw, event, headers, origin, exc)]
            outs += self._route(event, raw, headers, record, event.source)  # taken: confirm
        else:
            outs = self._cancel(record, state, event)  # what it ends, before what it starts
            ended = bool(outs)
            matters = self.triggers.get(event.event_type, ()) if step["kind"] == "trigger" else ()
            for matter in matters:  # several matters may start from one event
                outs += self._trigger(matter, record, state, event, partition)
            if not ended and not any(case_id(m, event) in state.reviews for m in matters):
                return outs  # decided at once, nothing to remember: a re-run decides the same
        state.remember(step_id)
        store.put(event.subject, state)
        self._recount(partition, before, state.task_counts())
        return outs

    def _letter(
        self,
        raw: bytes,
        event: Envelope | None,
        headers: Headers,
        origin: str,
        exc: BusError,
    ) -> Out:
        key = event.subject.encode() if event is not None else None
        field = getattr(exc, "field", None)
        letter = rejection_headers(headers, exc.reason, str(exc), STAGE, origin, field)
        return Out(self.deadletter, raw, key=key, headers=letter)

    def _trigger(
        self,
        matter: Matter,
        record: EnterpriseRecord,
        state: CaseState,
        event: Envelope,
        partition: int,
    ) -> list[Out]:
        """Run ``matter`` for its trigger event: open its tasks, or decide at once."""
        facts = matter.facts(event, record)
        if not facts.hold(matter.when):
            return []
        if matter.outcomes:
            self.decided += 1
        opened = self._open_case(matter, facts, record, state, partition)
        if opened is not None:
            return opened
        closing = matter.closing()  # no task to wait for: decided on the record alone
        outs = self._decide(matter.name, closing, closing.facts(event, record, {}), event, ())
        if not outs:
            return []
        parties = {event.source, getattr(event.payload, "requested_by", None)}
        return [self._parties(event.correlation_id, self._with_cases(state, event, parties)), *outs]

    def _known(self, code: str) -> bool:
        return self.ctx.directory.get(code) is not None

    def _decide(
        self,
        matter: str,
        closing: Closing,
        facts: Facts,
        trigger: Envelope,
        assignees: Iterable[str],
    ) -> list[Out]:
        """What a case's outcome issues or emits (nothing if no outcome holds)."""
        outcome = closing.outcome(facts)
        if outcome is None:
            return []
        outs: list[Out] = []
        if outcome.issue == "certificate":
            listed = facts.items(outcome.listing) if outcome.listing else []
            outs.append(self._certificate(trigger, facts.record, listed, result=outcome.result))
        elif outcome.issue == "report":
            listed = facts.items(outcome.listing) if outcome.listing else []
            outs.append(self._report(matter, trigger, facts.record, listed))
        if outcome.emit is not None:
            signed = outcome.issue == "decision"
            outs.append(self._emit(matter, outcome.emit, facts, trigger, assignees, signed))
        return outs

    def _emit(
        self,
        matter: str,
        emit: Emit,
        facts: Facts,
        trigger: Envelope,
        assignees: Iterable[str],
        signed: bool = False,
    ) -> Out:
        """An event the outcome names, its payload built from the facts, its id from the
        trigger; ``signed``: the decision document signed into its payload."""
        event = model_for(emit.event)(
            event_type=emit.event,
            event_id=derived_id(emit.event, str(trigger.event_id)),
            source=BUS,
            occurred_at=self._at,
            subject=trigger.subject,
            correlation_id=trigger.correlation_id,
            causation_id=trigger.event_id,
            payload=facts.build(emit.payload),
        )
        if signed:
            event = sign_decision(self.signer, event)
        self.ctx.metrics.decision_seconds.labels(matter).observe(
            max((datetime.now(UTC) - trigger.occurred_at).total_seconds(), 0.0)
        )
        return self._out(event, trigger.source, *assignees)

    def _report(
        self,
        matter: str,
        request: Envelope,
        record: EnterpriseRecord,
        listed: list[dict[str, Any]],
    ) -> Out:
        """A special credit report: every domain of the directory, signed, from the log alone."""
        p = request.payload
        domains = report_domains(self.ctx.directory, listed)
        draft = UnsignedReport(
            uscc=request.subject,
            serial=new_serial(BUS, f"report/{request.event_id}", requested_at=request.occurred_at),
            request_event_id=str(request.event_id),
            enterprise_name=record.name or record.uscc,
            period_start=p.period_start,
            period_end=p.period_end,
            purpose=p.purpose,
            result="records" if listed else "clean",
            domains=domains,
            issuing_authority=BUS,
            issued_at=self._at,
        )
        signed = sign_report(self.signer, draft).to_payload()
        self.ctx.metrics.decision_seconds.labels(matter).observe(
            max((datetime.now(UTC) - request.occurred_at).total_seconds(), 0.0)
        )
        issued = model_for("report.issued")(
            event_type="report.issued",
            event_id=derived_id("report", str(request.event_id)),
            source=BUS,
            occurred_at=self._at,
            subject=request.subject,
            correlation_id=request.correlation_id,
            causation_id=request.event_id,
            payload=signed,
        )
        return self._out(issued, request.source, p.requested_by)

    def _certificate(
        self,
        request: Envelope,
        record: EnterpriseRecord,
        listed: list[dict[str, Any]],
        *,
        result: str,
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
            result=result,
            record=[
                {
                    "case_number": e["case_number"],
                    "agency": e.get("agency") or "unknown.agency",
                    "state": e.get("state", "active"),
                    "decided_on": e.get("decided_on"),
                }
                for e in listed
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
        facts: Facts,
        record: EnterpriseRecord,
        state: CaseState,
        partition: int,
    ) -> list[Out] | None:
        """Open a case with the tasks whose turn has come; ``None`` if there were none."""
        trigger = facts.trigger
        case = case_id(matter, trigger)
        if case in state.reviews:
            return []  # open already: a step re-delivered after it left ``done``
        review: dict[str, Any] = {
            # what decides the case later, as its version said when it was opened:
            # a changed or removed definition never changes a running case
            "matter": matter.name, "version": matter.version, "late": matter.late,
            "opened_at": self._at.timestamp(), "tasks": {}, "steps": {},
            "request": trigger.model_dump(mode="json"),
        }  # fmt: skip
        outs = self._start(case, review, matter.tasks, matter.lead, facts, state)
        if not review["tasks"]:
            return None
        started = set(review["steps"].values()) | set(review.get("skipped", ()))
        later = tuple(t for t in matter.tasks if t.name not in started)
        if matter.outcomes or later or matter.cancel:
            review["closing"] = matter.closing(later).model_dump(
                mode="json", by_alias=True, exclude_defaults=True
            )
        state.reviews[case] = review
        parties = {trigger.source, getattr(trigger.payload, "requested_by", None)}
        parties |= {t.assignee for t in state.tasks.values() if t.case == case}
        parties |= {t.supervisor for t in state.tasks.values() if t.case == case}
        outs.append(
            self._parties(trigger.correlation_id, self._with_cases(state, trigger, parties))
        )
        self._index_due(partition, review, state, record.uscc)
        return outs

    def _start(
        self,
        case: str,
        review: dict[str, Any],
        templates: Iterable[TaskTemplate],
        lead: str,
        facts: Facts,
        state: CaseState,
    ) -> list[Out]:
        """Create the tasks of every step whose turn has come, until no more can start; a
        step with nobody to ask (its list empty, its conditions not met) counts as answered."""
        templates = tuple(templates)
        skipped: list[str] = review.setdefault("skipped", [])
        outs: list[Out] = []
        while True:
            started = set(review["steps"].values()) | set(skipped)
            closed = set(skipped) | {
                name for name in started
                if all(state.tasks[t].closed for t, n in review["steps"].items()
                       if n == name and t in state.tasks)
            }  # fmt: skip
            ready = next_steps(templates, started, closed)
            if not ready:
                break
            for template in ready:
                plan = assign(template, facts, self._known, lead)
                if not plan:
                    skipped.append(template.name)
                    continue
                outs += self._create(case, review, template, plan, lead, facts, state)
        if not skipped:
            del review["skipped"]
        return outs

    def _create(
        self,
        case: str,
        review: dict[str, Any],
        template: TaskTemplate,
        plan: dict[str, list[str]],
        lead: str,
        facts: Facts,
        state: CaseState,
    ) -> list[Out]:
        """The tasks of one step: one per assignee of ``plan`` (assignee -> evidence)."""
        trigger = facts.trigger
        now = self._at.astimezone(CHINA_TZ)
        due = self.calendar.add_working_days(now, template.working_days)
        named = {"requester": getattr(trigger.payload, "requested_by", None) or lead, "lead": lead}
        supervisor = named.get(template.supervisor or "", template.supervisor)
        chain, when = [], due  # after the supervisor, each office a period after the last
        for office in template.escalation:
            when = self.calendar.add_working_days(when, template.working_days)
            chain.append((named.get(office, office), when))
        outs: list[Out] = []
        for assignee, evidence in sorted(plan.items()):
            task_id = task_id_for(template.name, case, assignee)
            review["tasks"][task_id] = evidence
            review["steps"][task_id] = template.name
            state.tasks[task_id] = TaskEntry(
                task_id=task_id, matter=review["matter"], case=case, assignee=assignee,
                supervisor=supervisor, due_at=due, chain=chain,
            )  # fmt: skip
            title = facts.but(evidence=evidence).render(template.title)
            created = model_for("task.created")(
                event_type="task.created",
                event_id=derived_id("task.created", task_id),
                source=BUS,
                occurred_at=now,
                subject=trigger.subject,
                correlation_id=trigger.correlation_id,
                causation_id=trigger.event_id,  # every task of a case: its trigger's
                payload={
                    "task_id": task_id, "matter": review["matter"], "title": title[:500],
                    "assignee": assignee, "due_at": due,
                    "working_days": template.working_days, "supervisor": supervisor,
                    "evidence": evidence,
                },
            )  # fmt: skip
            outs.append(self._out(created, assignee))
        return outs

    def _index_due(
        self, partition: int, review: dict[str, Any], state: CaseState, uscc: str
    ) -> None:
        """Put the case's open tasks in the deadline index of their partition."""
        due_index = self._due.setdefault(partition, [])
        for task_id in review["tasks"]:
            task = state.tasks.get(task_id)
            if task is not None and not task.closed:
                heapq.heappush(due_index, (task.due_at, uscc))

    def _answer(self, record: EnterpriseRecord, state: CaseState, event: Envelope) -> list[Out]:
        """A department accepts, completes or rejects a task, or sends an event a matter says
        answers one (an opinion).

        Only the task's assignee may answer it; anything else is a dead letter.
        """
        p = event.payload
        by: tuple[str, str | None] | None = None  # (answer, note) an event gave
        if event.event_type in ANSWERS:
            task = state.tasks.get(p.task_id)
        else:
            task, by = self._answered_by(record, state, event)
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
        if by is not None:
            task.state, task.outcome = "completed", by[0]
            task_notes = state.reviews.get(task.case, {}).setdefault("notes", {})
            task_notes[task.assignee] = by[1]
            # The event is the answer: its task is completed, and says so on the task topic
            # like any other, or the assignee's and the operators' views keep it open.
            completed = {"task_id": task.task_id, "outcome": task.outcome, "note": by[1]}
            outs.append(self._task_event(record, state, task, "task.completed", completed, event))
        elif event.event_type == "task.completed":
            task.state, task.outcome = "completed", p.outcome
        else:
            task.state, task.outcome = "rejected", "rejected"
        return outs + self._close_case_if_done(record, state, task.case)

    def _timeout_of(self, state: CaseState, task: TaskEntry) -> Timeout | None:
        """What ``task`` counts as if no answer comes by its deadline, as its case keeps it."""
        review = state.reviews.get(task.case)
        how = self._closing_of(review) if review is not None else None
        if review is None or how is None:
            return None
        name = (review.get("steps") or {}).get(task.task_id, "")
        return how.steps.get(name, StepClosing()).timeout

    def _timed_out(self, record: EnterpriseRecord, state: CaseState, event: Envelope) -> list[Out]:
        """The bus's ``task.overdue`` came back through the flow, with the record as of it: a
        task whose template says ``timeout`` ends (``task.cancelled``) counted as its answer,
        and its case goes on. Anything else the bus says about tasks is not a step."""
        if event.event_type != "task.overdue":
            return []
        task = state.tasks.get(event.payload.task_id)
        timeout = self._timeout_of(state, task) if task is not None else None
        if task is None or timeout is None or task.closed:
            return []
        task.state, task.outcome = "cancelled", timeout.answer
        state.reviews[task.case].setdefault("notes", {})[task.assignee] = timeout.note
        due = task.due_at.astimezone(UTC)
        why = f"no answer by {due:%Y-%m-%d %H:%M} UTC: counted as {timeout.answer}"
        body = {"task_id": task.task_id, "reason": why}
        ended = self._task_event(record, state, task, "task.cancelled", body, event)
        return [ended, *self._close_case_if_done(record, state, task.case)]

    def _answered_by(
        self, record: EnterpriseRecord, state: CaseState, event: Envelope
    ) -> tuple[TaskEntry | None, tuple[str, str | None] | None]:
        """The task ``event`` answers, as its matter's ``answered_by`` says, and the answer
        and note it gives; a case that matches but asked another department: refused."""
        for case, review in state.reviews.items():
            how = self._closing_of(review)
            if how is None:
                continue
            steps = review.get("steps") or dict.fromkeys(review["tasks"], _only_step(how))
            trigger = model_for(review["request"]["event_type"]).model_validate(review["request"])
            seen = how.facts(trigger, record, {}).seeing(event)
            asked = False
            for task_id, name in steps.items():
                by = how.steps.get(name, StepClosing()).answered_by
                if by is None or by.event != event.event_type or not seen.hold(by.match):
                    continue
                asked = True
                task = state.tasks.get(task_id)
                if task is not None and task.case == case and task.assignee == event.source:
                    note = seen.resolve(by.note) if by.note else None
                    return task, (seen.render(by.answer), note)
            if asked:
                raise BusError(
                    f"{event.source} was not asked for this {event.event_type} "
                    f"(case {review['matter']} of {record.uscc})",
                    reason="task.not_assignee",
                )
        return None, None

    def _close_case_if_done(
        self, record: EnterpriseRecord, state: CaseState, case: str
    ) -> list[Out]:
        """A task was answered: start the steps whose turn came; decide once all are done."""
        review = state.reviews.get(case)
        if review is None:
            return []
        how = self._closing_of(review)
        tasks = [state.tasks[t] for t in review["tasks"] if t in state.tasks]
        if how is None:
            if not all(t.closed for t in tasks):
                return []
            self._forget_case(state, case, tasks)
            return []
        trigger = model_for(review["request"]["event_type"]).model_validate(review["request"])
        facts = how.facts(trigger, record, self._answered(review, how, tasks))
        if how.later and (more := self._start(case, review, how.later, how.lead, facts, state)):
            self._index_due(self._partition, review, state, record.uscc)
            return more  # the case goes on with the steps whose turn came
        if not all(t.closed for t in tasks):
            return []
        closing = self._decide(review["matter"], how, facts, trigger, (t.assignee for t in tasks))
        self._forget_case(state, case, tasks)
        return closing

    def _answered(
        self, review: dict[str, Any], how: Closing, tasks: list[TaskEntry]
    ) -> dict[str, list[dict[str, Any]]]:
        """A case's tasks by step, with their answers as the matter counts them."""
        steps = review.get("steps") or dict.fromkeys(review["tasks"], _only_step(how))
        notes = review.get("notes", {})
        answered: dict[str, list[dict[str, Any]]] = {}
        for t in sorted(tasks, key=lambda t: t.assignee):
            step = how.steps.get(steps.get(t.task_id, ""), StepClosing())
            answered.setdefault(steps.get(t.task_id, ""), []).append({
                "task_id": t.task_id, "assignee": t.assignee, "answer": step.answer(t.outcome),
                "note": notes.get(t.assignee), "evidence": review["tasks"].get(t.task_id, []),
            })  # fmt: skip
        return answered

    def _forget_case(self, state: CaseState, case: str, tasks: list[TaskEntry]) -> None:
        del state.reviews[case]
        for t in tasks:
            state.forget_task(t.task_id)

    def _cancel(self, record: EnterpriseRecord, state: CaseState, event: Envelope) -> list[Out]:
        """End the cases ``event`` cancels: their open tasks get ``task.cancelled``."""
        outs: list[Out] = []
        for case, review in list(state.reviews.items()):
            how = self._closing_of(review)
            if how is None or not how.cancel:
                continue
            trigger = model_for(review["request"]["event_type"]).model_validate(review["request"])
            spec = how.cancelled_by(how.facts(trigger, record, {}), event)
            if spec is None:
                continue
            tasks = [state.tasks[t] for t in review["tasks"] if t in state.tasks]
            for task in tasks:
                if task.closed:
                    continue
                task.state = "cancelled"
                reason = f"case {spec.result}: {event.event_type} {event.event_id}"
                body = {"task_id": task.task_id, "reason": reason}
                outs.append(self._task_event(record, state, task, "task.cancelled", body, event))
            log.info("cases: %s %s of %s ended by %s", review["matter"], spec.result,
                     record.uscc, event.event_type)  # fmt: skip
            self._forget_case(state, case, tasks)
        return outs

    def _closing_of(self, review: dict[str, Any]) -> Closing | None:
        """What decides a case, as kept with it (a case from before it was kept: its rule's)."""
        if kept := review.get("closing"):
            key = json.dumps(kept, sort_keys=True)
            if (found := self._closings.get(key)) is None:
                found = self._closings[key] = Closing.model_validate(kept)
            return found
        return _legacy(str(review.get("rule")))

    def _late_of(self, review: dict[str, Any], name: str) -> str:
        """What a case's late tasks get, as its version said (an older case: today's)."""
        if late := review.get("late"):
            return str(late)
        matter = self.matters.get(name)
        return matter.late if matter is not None else "escalate_to_supervisor"

    # -- deadlines ---------------------------------------------------------------------------

    def _tick(self, partition: int, now: datetime, store: CaseStore) -> list[Out]:
        """Tasks past their deadline: ``task.overdue`` once, then ``task.escalated`` once."""
        outs: list[Out] = []
        due = self._due.get(partition, [])
        touched: set[str] = set()
        while due and due[0][0] <= now:
            _, uscc = heapq.heappop(due)
            if uscc in touched:
                continue  # done in this tick already
            touched.add(uscc)
            state = store.get(uscc)
            if state is None:
                continue
            before = state.task_counts()
            changed = False
            for task in state.open_tasks():
                if task.due_at > now:
                    continue
                late = self._late_of(state.reviews.get(task.case, {}), task.matter)
                if not task.overdue:
                    task.overdue = changed = True
                    self.steps += 1
                    overdue = {"task_id": task.task_id, "assignee": task.assignee,
                               "due_at": task.due_at}  # fmt: skip
                    outs.append(self._task_event(None, state, task, "task.overdue", overdue, uscc))
                if late != "escalate_to_supervisor" or self._timeout_of(state, task) is not None:
                    continue  # a task that times out ends when its task.overdue comes back
                why = f"not completed by {task.due_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
                if not task.escalated and task.supervisor:
                    task.escalated = changed = True
                    self.steps += 1
                    escalated = {"task_id": task.task_id, "escalated_to": task.supervisor,
                                 "reason": why}  # fmt: skip
                    outs.append(
                        self._task_event(None, state, task, "task.escalated", escalated, uscc)
                    )
                while (step := task.next_escalation) is not None and step[1] <= now:
                    office, when = step
                    task.escalations += 1
                    task.escalated = changed = True
                    self.steps += 1
                    escalated = {"task_id": task.task_id, "escalated_to": office, "reason": why}
                    outs.append(self._task_event(None, state, task, "task.escalated", escalated,
                                                 uscc, key=office, at=when))  # fmt: skip
                if (step := task.next_escalation) is not None:
                    heapq.heappush(due, (step[1], uscc))  # the chain goes on
            if changed:
                store.put(uscc, state)
                self._recount(partition, before, state.task_counts())
        self._recounted = True  # a tick refreshes the gauge whatever moved
        self.ctx.metrics.calendar_fallback_years.set(len(self.calendar.fallback_years))
        return outs

    async def index(self, partitions: Iterable[int], store: CaseStore) -> None:
        """Build the deadlines and task counts of the partitions not yet indexed here.

        All of them in one pass over the table, letting the event loop run every
        ``INDEX_YIELD_EVERY`` states: a city's worker walked its whole table once per
        partition before, blocking, for seconds at every assignment. Never raises: a
        partition left unindexed is indexed by its next step, which a failure dead-letters.
        """
        try:
            for n, _ in enumerate(self._build(partitions, store), 1):
                if n % INDEX_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except Exception:
            log.exception("cases: indexing the deadlines failed; each step indexes its own")

    def _index(self, partition: int, store: CaseStore) -> None:
        """The partition's index, built now if ``index`` has not built it (tests, tools)."""
        for _ in self._build([partition], store):
            pass

    def _build(self, partitions: Iterable[int], store: CaseStore) -> Iterator[None]:
        """Index the missing ones of ``partitions``, a state at a time (a yield after each).

        A partition forgotten meanwhile (given away) is left out.
        """
        missing = set(partitions) - self._due.keys() - self._indexing
        if not missing:
            return
        self._indexing |= missing
        due: dict[int, list[tuple[datetime, str]]] = {p: [] for p in missing}
        counts: dict[int, Counter[TaskKey]] = {p: Counter() for p in missing}
        try:
            for p, uscc, state in store.items(missing):
                for task in state.open_tasks():
                    if not (task.overdue and task.escalated):
                        due[p].append((task.due_at, uscc))
                    elif (step := task.next_escalation) is not None:
                        due[p].append((step[1], uscc))
                counts[p].update(state.task_counts())
                yield
            for p in missing & self._indexing:
                heapq.heapify(due[p])
                self._due[p] = due[p]
                self._task_counts[p] = counts[p]
        finally:
            self._indexing -= missing
        self._recounted = True

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions given away: their deadlines and counts are another worker's now."""
        for p in partitions:
            self._due.pop(p, None)
            self._task_counts.pop(p, None)
            self._indexing.discard(p)
        self._recounted = True
        self.export_task_counts()

    # -- metrics -----------------------------------------------------------------------------

    def _recount(self, partition: int, before: Counter[TaskKey], after: Counter[TaskKey]) -> None:
        if before == after:
            return
        counts = self._task_counts.setdefault(partition, Counter())
        counts.update(after)
        counts.subtract(before)
        self._task_counts[partition] = +counts  # drop what fell to zero
        self._recounted = True

    def export_task_counts(self) -> None:
        """Set the task gauge from the partitions this worker holds, if anything moved.

        Every matter has a series for every state (with an empty department) even while it
        has no task, so a dashboard tells "none" from "not reported"; a combination that
        emptied goes back to zero rather than keeping its last value.
        """
        if not self._recounted:
            return
        self._recounted = False
        gauge = self.ctx.metrics.tasks
        total: Counter[TaskKey] = Counter()
        for counts in self._task_counts.values():
            total.update(counts)
        for name in self.matters:
            for state in TASK_STATES:
                gauge.labels(name, "", state).set(0)
        for key in self._task_series - total.keys():
            gauge.labels(*key).set(0)
        for key, n in total.items():
            gauge.labels(*key).set(n)
        self._task_series |= total.keys()

    # -- outputs -----------------------------------------------------------------------------

    def _route(
        self,
        event: Envelope,
        value: bytes,
        headers: Headers,
        record: EnterpriseRecord,
        notify: str,
    ) -> list[Out]:
        profile = {**record.profile, "status": record.status}
        registered = record.status != "unknown"
        return self.router.outs(event, value, headers, profile, notify, registered=registered)

    def _task_event(
        self,
        record: EnterpriseRecord | None,
        state: CaseState,
        task: TaskEntry,
        event_type: str,
        payload: dict[str, Any],
        cause: Envelope | str,
        *,
        key: str = "",
        at: datetime | None = None,
    ) -> Out:
        """A lifecycle event the bus publishes about ``task``, caused by an event or a deadline
        (``key`` tells apart several of one type, such as the escalations of a chain).

        Dated by its cause in the log, or, for a deadline passing, by the deadline itself.
        """
        review = state.reviews.get(task.case, {})
        request = review.get("request", {})
        caused = isinstance(cause, Envelope)
        event = model_for(event_type)(
            event_type=event_type,
            event_id=derived_id(event_type, task.task_id, *((key,) if key else ())),
            source=BUS,
            subject=record.uscc if record is not None else str(cause),
            occurred_at=self._at if caused else (at or task.due_at),
            correlation_id=request.get("correlation_id") or task.case,
            # a deadline's cause is the case's trigger
            causation_id=cause.event_id
            if isinstance(cause, Envelope)
            else uuid.UUID(request.get("event_id") or task.case),
            payload=payload,
        )
        notify = [task.assignee]
        if event_type == "task.escalated":
            notify.append(str(payload["escalated_to"]))
        return self._out(event, *notify)

    @staticmethod
    def _with_cases(
        state: CaseState, trigger: Envelope, parties: set[str | None]
    ) -> set[str | None]:
        """``parties`` and those of the other open cases one correlation id names: the parties
        record is kept per correlation id, and one trigger may open several matters."""
        named = trigger.correlation_id
        others = {c for c, r in state.reviews.items()
                  if r.get("request", {}).get("correlation_id") == named}  # fmt: skip
        for t in state.tasks.values():
            if t.case in others:
                parties |= {t.assignee, t.supervisor}
        return parties

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
        from bus.agents.route import NOTIFY

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
