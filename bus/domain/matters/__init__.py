"""Matters (一件事): cross-agency processes declared as data, reviewed like code.

Each ``*.yaml`` file in this folder declares one matter in the matter language: what triggers
it and when, the lists it draws from the record or the trigger, the tasks it creates (who,
in what order, by when, with what evidence), how a case ends (its outcomes) and what ends
it early (its cancel events). ``load_matters`` validates every file at start-up and names
the file, line and field of any mistake. docs/matters.md teaches the language by example;
``facts`` reads the paths it names, ``bus.domain.conditions`` the conditions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bus.domain.conditions import problem as condition_problem
from bus.domain.matters.facts import FILTERS, ROOTS, Facts, path_problem, places
from bus.domain.record import EnterpriseRecord
from bus.domain.yamlpos import line_of
from bus.errors import ConfigurationError
from bus.schemas.envelope import Envelope
from bus.schemas.events import EVENT_TYPES

EMITS = ("approval.decided", "application.decided")
"""Event types an outcome may emit: the decisions the bus itself publishes."""
DEPARTMENT = r"^[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9_-]*)+$"
NAME = r"^[a-z][a-z0-9_-]*$"


def _paths_problem(text: str, lists: tuple[str, ...], *, item: bool) -> str | None:
    for path, filt in places(text):
        if filt is not None and filt not in FILTERS:
            return f"{{{path}|{filt}}}: a filter is one of {', '.join(FILTERS)}"
        if problem := path_problem(path, lists):
            return problem
        if path.split(".")[0] == "item" and not item:
            return f"{{{path}}}: item is there only in a step with for_each"
    return None


def _conditions_problem(
    when: dict[str, Any],
    lists: tuple[str, ...],
    steps: tuple[str, ...] = (),
    *,
    event: bool = False,
) -> str | None:
    for path, cond in when.items():
        problem = path_problem(path, lists, steps, event=event) or condition_problem(cond)
        if problem:
            return f"{path}: {problem}"
    return None


def _reachable(templates: tuple[TaskTemplate, ...]) -> list[TaskTemplate]:
    """The templates that can ever start, taking every task as answered once started."""
    started: set[str] = set()
    while ready := next_steps(templates, started, started):
        started |= {t.name for t in ready}
    return [t for t in templates if t.name in started]


def _built_problem(value: Any, lists: tuple[str, ...], steps: tuple[str, ...]) -> str | None:
    """What is wrong with a payload to build (texts, lists, mappings, each/as), or None."""
    if isinstance(value, str):
        for path, _ in places(value):
            if (problem := path_problem(path, lists, steps)) and path.split(".")[0] != "item":
                return problem
        return None
    if isinstance(value, dict) and set(value) == {"each", "as"}:
        return path_problem(str(value["each"]), lists, steps) or _built_problem(
            value["as"], lists, steps
        )
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    return next((p for v in children if (p := _built_problem(v, lists, steps))), None)


class ListDef(BaseModel):
    """A list a matter draws from the record or the trigger, kept to what meets ``where``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(
        alias="from", description="record.penalties, record.licences or a trigger list"
    )
    where: dict[str, Any] = Field(default_factory=dict, description="field -> condition")

    @field_validator("from_")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.split(".")[0] not in ("record", "trigger") or path_problem(value, ()):
            raise ValueError(
                f"{value!r}: a list comes from record.penalties, record.licences "
                "or a field of the trigger"
            )
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, Any]) -> dict[str, Any]:
        for field, cond in value.items():
            if problem := condition_problem(cond):
                raise ValueError(f"{field}: {problem}")
        return value


class AnsweredBy(BaseModel):
    """An event other than ``task.completed`` that answers a task: from its assignee, of this
    type, meeting ``match`` (read as ``event.*``, beside ``trigger.*``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str
    match: dict[str, Any] = Field(default_factory=dict)
    answer: str = Field(description="the answer it gives, e.g. {event.opinion}")
    note: str | None = Field(default=None, description="a note it carries, e.g. {event.note}")

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EVENT_TYPES or value.startswith("task."):
            raise ValueError(f"{value!r}: name an event type a department publishes, not task.*")
        return value


class Timeout(BaseModel):
    """What a task counts as when no answer came by its deadline: it ends (``task.cancelled``)
    and the case goes on with this answer, instead of the task being escalated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer: str = Field(pattern=NAME, description="the answer it counts as, e.g. cleared")
    note: str | None = Field(default=None, max_length=300, description="why, for the record")


class TaskTemplate(BaseModel):
    """A task a matter creates: for one department, or one per department of a list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    assignee: str = Field(description="a department code, or a text naming one: {item.agency}")
    for_each: str | None = Field(
        default=None, description="a list: one task per department its elements name"
    )
    evidence: str | None = Field(default=None, description="what each element gives: {item.x}")
    fallback: str | None = Field(
        default=None, description="who gets it when the assignee is no department: a code or lead"
    )
    title: str = Field(min_length=1, max_length=300)
    working_days: int = Field(ge=1, le=60)
    supervisor: str | None = Field(default=None, description="requester, lead or a code")
    escalation: tuple[str, ...] = Field(
        default=(),
        description="offices told in turn, each working_days after the last, while it is open",
    )
    answers: tuple[str, ...] = Field(default=(), description="the answers that count as given")
    other_answer: str | None = Field(default=None, description="what any other answer counts as")
    answered_by: AnsweredBy | None = Field(
        default=None, description="an event that answers it besides task.completed"
    )
    timeout: Timeout | None = Field(
        default=None, description="no answer by the deadline: it ends, counted as this answer"
    )
    after: tuple[str, ...] = Field(default=(), description="tasks that must all be answered first")
    after_any: tuple[str, ...] = Field(
        default=(), description="tasks of which one must be answered first"
    )
    when: dict[str, Any] = Field(
        default_factory=dict, description="conditions for this task, read when its turn comes"
    )

    @property
    def waits(self) -> bool:
        """Whether it waits for other tasks of its case."""
        return bool(self.after or self.after_any)

    @field_validator("assignee")
    @classmethod
    def _assignee(cls, value: str) -> str:
        if "{" not in value and not re.match(DEPARTMENT, value):
            raise ValueError(f"{value!r} is neither a department code nor a text naming one")
        return value

    @field_validator("supervisor", "fallback")
    @classmethod
    def _supervisor(cls, value: str | None) -> str | None:
        if value not in (None, "requester", "lead") and not re.match(DEPARTMENT, value or ""):
            raise ValueError(f"{value!r} is not requester, lead or a department code")
        return value

    @field_validator("escalation")
    @classmethod
    def _chain(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for office in value:
            cls._supervisor(office)
        return value

    @model_validator(mode="after")
    def _timeout_fits(self) -> Self:
        if self.timeout is None:
            return self
        if self.escalation:
            raise ValueError("a task that times out is not escalated: give timeout or escalation")
        if self.answers and self.timeout.answer not in self.answers:
            raise ValueError(f"timeout: answer {self.timeout.answer!r} is none of its answers "
                             f"({', '.join(self.answers)})")  # fmt: skip
        return self


class Emit(BaseModel):
    """An event the bus publishes as a case's outcome; its payload is built from the facts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str
    payload: dict[str, Any]

    @field_validator("event")
    @classmethod
    def _emittable(cls, value: str) -> str:
        if value not in EMITS:
            raise ValueError(f"{value!r}: an outcome emits one of {', '.join(EMITS)}")
        return value


class Outcome(BaseModel):
    """How a case ends when its conditions hold: the first outcome that holds is taken."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: dict[str, Any] = Field(default_factory=dict)
    result: str = Field(pattern=NAME)
    issue: Literal["certificate", "report", "decision"] | None = Field(
        default=None, description="a signed document; decision: the event emitted, signed"
    )
    listing: str | None = Field(default=None, description="the list the document lists")
    emit: Emit | None = None

    @model_validator(mode="after")
    def _report_lists(self) -> Self:
        if self.issue == "report" and self.listing is None:
            raise ValueError("a report lists the records of a list: name it in listing")
        if self.issue == "decision" and self.emit is None:
            raise ValueError("a signed decision is the event the outcome emits: give emit")
        return self


class Cancel(BaseModel):
    """What ends a case early: an event about the same enterprise, when its conditions hold.
    The open tasks of the case get ``task.cancelled``; the case closes with ``result``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str
    when: dict[str, Any] = Field(
        default_factory=dict, description="conditions on event.* (and trigger.*, the record)"
    )
    result: str = Field(default="cancelled", pattern=NAME)

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}")
        return value


class StepClosing(BaseModel):
    """What a case needs of one task template to read its answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    evidence: str | None = None
    answers: tuple[str, ...] = ()
    other_answer: str | None = None
    answered_by: AnsweredBy | None = None
    timeout: Timeout | None = None

    def answer(self, given: str | None) -> str | None:
        """The answer as the matter counts it."""
        if given is None or not self.answers or given in self.answers:
            return given
        return self.other_answer if self.other_answer is not None else given


class Closing(BaseModel):
    """What decides a running case, as its matter's version said when the case opened: kept
    with the case, so a changed or removed file changes only the cases opened after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lead: str
    lists: dict[str, ListDef] = Field(default_factory=dict)
    outcomes: tuple[Outcome, ...] = ()
    steps: dict[str, StepClosing] = Field(default_factory=dict)
    later: tuple[TaskTemplate, ...] = Field(
        default=(), description="tasks that had not yet started when this was kept"
    )
    cancel: tuple[Cancel, ...] = ()

    def cancelled_by(self, facts: Facts, event: Envelope) -> Cancel | None:
        """The first way ``event`` ends the case, if it does."""
        seen = facts.seeing(event)
        return next(
            (c for c in self.cancel if c.event == event.event_type and seen.hold(c.when)), None
        )

    def facts(
        self, trigger: Envelope, record: EnterpriseRecord, tasks: dict[str, list[dict[str, Any]]]
    ) -> Facts:
        """The facts a case is decided on: its trigger, the record now, its answered tasks."""
        evidence = {n: s.evidence for n, s in self.steps.items() if s.evidence}
        return Facts(trigger, record, lead=self.lead, lists=self.lists).answered(tasks, evidence)

    def outcome(self, facts: Facts) -> Outcome | None:
        """The outcome a case reaches on these facts: the first whose conditions hold."""
        return next((o for o in self.outcomes if facts.hold(o.when)), None)


class Matter(BaseModel):
    """One matter, as declared in its YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    version: int = Field(default=1, ge=1, description="raise it with every change of meaning")
    title: str
    trigger: str
    correlation: Literal["subject"] = "subject"
    lead: str
    participants: tuple[str, ...] = ()
    requires_registration: bool = Field(
        default=False, description="park triggers until the enterprise's registration arrives"
    )
    when: dict[str, Any] = Field(
        default_factory=dict, description="conditions on the trigger and record to open a case"
    )
    lists: dict[str, ListDef] = Field(default_factory=dict)
    tasks: tuple[TaskTemplate, ...] = ()
    outcomes: tuple[Outcome, ...] = Field(
        default=(), description="how a case ends, first that holds; none: it just closes"
    )
    cancel: tuple[Cancel, ...] = Field(
        default=(), description="events that end a case early, and what its open tasks get"
    )
    decision: None = Field(default=None, exclude=True, description="the format before outcomes")
    late: Literal["escalate_to_supervisor", "overdue_only"] = "escalate_to_supervisor"

    @field_validator("decision", mode="before")
    @classmethod
    def _no_rules(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(
                "decision rules are written as lists, conditions and outcomes now: "
                "see docs/matters.md, and the shipped matters for each old rule"
            )
        return None

    @field_validator("trigger")
    @classmethod
    def _known_trigger(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}")
        return value

    @field_validator("lists")
    @classmethod
    def _list_names(cls, value: dict[str, ListDef]) -> dict[str, ListDef]:
        for name in value:
            if not re.match(NAME, name) or name in ROOTS:
                raise ValueError(f"{name!r}: a list is named in lower case, not {', '.join(ROOTS)}")
        return value

    def mistake(self) -> tuple[tuple[str | int, ...], str] | None:
        """The first path or list this matter names wrongly: (where in the file, what)."""
        lists = tuple(self.lists)
        if problem := _conditions_problem(self.when, lists):
            return ("when",), problem
        for name, spec in self.lists.items():
            if problem := path_problem(spec.from_, lists):
                return ("lists", name, "from"), problem
        for i, t in enumerate(self.tasks):
            if t.for_each is not None and t.for_each not in self.lists:
                return ("tasks", i, "for_each"), f"{t.for_each!r} is no list of this matter"
            for field in ("assignee", "evidence", "title"):
                text = getattr(t, field) or ""
                if problem := _paths_problem(text, lists, item=t.for_each is not None):
                    return ("tasks", i, field), problem
        steps = tuple(t.name for t in self.tasks)
        for i, c in enumerate(self.cancel):
            if problem := _conditions_problem(c.when, lists, event=True):
                return ("cancel", i, "when"), problem
        for i, t in enumerate(self.tasks):
            for field in ("after", "after_any"):
                for name in getattr(t, field):
                    if name not in steps or name == t.name:
                        return ("tasks", i, field), f"{name!r} is no other task of this matter"
            if t.answered_by is not None:
                by = t.answered_by
                if problem := _conditions_problem(by.match, lists, event=True):
                    return ("tasks", i, "answered_by", "match"), problem
                for field in ("answer", "note"):
                    text = getattr(by, field) or ""
                    for path, _ in places(text):
                        if problem := path_problem(path, lists, event=True):
                            return ("tasks", i, "answered_by", field), problem
            readable = steps if t.waits else ()  # answers are there once earlier tasks are
            if problem := _conditions_problem(t.when, lists, readable):
                return ("tasks", i, "when"), problem
        if len(set(steps)) != len(steps):
            return ("tasks",), "two tasks have one name"
        reachable = {t.name for t in _reachable(self.tasks)}
        for i, t in enumerate(self.tasks):
            if t.name not in reachable:
                return ("tasks", i, "after"), f"task {t.name} waits for itself, through others"
        for i, o in enumerate(self.outcomes):
            if problem := _conditions_problem(o.when, lists, steps):
                return ("outcomes", i, "when"), problem
            if o.listing is not None and o.listing not in self.lists:
                return ("outcomes", i, "listing"), f"{o.listing!r} is no list of this matter"
            if o.issue == "certificate" and self.trigger != "certificate.requested":
                return ("outcomes", i, "issue"), "a certificate answers certificate.requested"
            if o.issue == "report" and self.trigger != "report.requested":
                return ("outcomes", i, "issue"), "a report answers report.requested"
            if o.emit is not None and (problem := _built_problem(o.emit.payload, lists, steps)):
                return ("outcomes", i, "emit", "payload"), problem
        return None

    def facts(self, trigger: Envelope, record: EnterpriseRecord) -> Facts:
        """What this matter's conditions, lists and texts read for one trigger."""
        return Facts(trigger, record, lead=self.lead, lists=self.lists)

    def assignees(
        self, template: TaskTemplate, facts: Facts, known: Callable[[str], bool]
    ) -> dict[str, list[str]]:
        """Assignee -> evidence for one of this matter's task templates (see ``assign``)."""
        return assign(template, facts, known, self.lead)

    def closing(self, later: tuple[TaskTemplate, ...] = ()) -> Closing:
        """What decides this matter's cases, to keep with each (see ``Closing``); ``later``:
        the tasks a case has not started yet."""
        steps = {
            t.name: StepClosing(
                evidence=t.evidence,
                answers=t.answers,
                other_answer=t.other_answer,
                answered_by=t.answered_by,
                timeout=t.timeout,
            )
            for t in self.tasks
        }
        return Closing(
            lead=self.lead,
            lists=self.lists,
            outcomes=self.outcomes,
            steps=steps,
            later=later,
            cancel=self.cancel,
        )

    def task(self, name: str) -> TaskTemplate:
        """The task template called ``name``."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def assign(
    template: TaskTemplate, facts: Facts, known: Callable[[str], bool], lead: str
) -> dict[str, list[str]]:
    """Assignee -> evidence for one task template: one task, or one per department its list's
    elements name; none when its conditions do not hold. A named department that ``known``
    does not know, or none at all, gives the task to the template's fallback (the lead
    unless it says otherwise)."""
    if not facts.hold(template.when):
        return {}
    elements = [None] if template.for_each is None else facts.items(template.for_each)
    found: dict[str, list[str]] = {}
    for element in elements:
        here = facts.but(item=element)
        who = here.render(template.assignee)
        if "{" in template.assignee and not (re.match(DEPARTMENT, who) and known(who)):
            who = lead if template.fallback in (None, "lead") else str(template.fallback)
        evidence = found.setdefault(str(who), [])
        shown = here.render(template.evidence) if template.evidence else ""
        if shown and shown not in evidence:
            evidence.append(shown)
    return found


def next_steps(
    templates: Iterable[TaskTemplate], started: set[str], closed: set[str]
) -> list[TaskTemplate]:
    """The templates not started whose turn has come: every task of ``after`` answered, and
    one of ``after_any`` (a task with none to ask counts as answered)."""
    return [
        t
        for t in templates
        if t.name not in started
        and all(a in closed for a in t.after)
        and (not t.after_any or any(a in closed for a in t.after_any))
    ]


def load_matters(directory: Path | None = None) -> dict[str, Matter]:
    """Every matter in ``directory`` (the shipped ones by default), by name."""
    base = directory or Path(str(resources.files("bus.domain.matters")))
    matters: dict[str, Matter] = {}
    for path in sorted(base.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        try:
            matter = Matter.model_validate(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"matter {path.name}: not valid YAML: {exc}") from exc
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(file)"
            line = line_of(text, err["loc"])
            where = f"{path.name}, line {line}" if line else path.name
            raise ConfigurationError(f"matter {where}: {loc}: {err['msg']}") from exc
        if found := matter.mistake():
            place, problem = found
            line = line_of(text, place)
            where = f"{path.name}, line {line}" if line else path.name
            loc = ".".join(str(p) for p in place)
            raise ConfigurationError(f"matter {where}: {loc}: {problem}")
        if matter.name in matters:
            raise ConfigurationError(f"matter {path.name}: another file is called {matter.name}")
        matters[matter.name] = matter
    return matters


def answering(matters: dict[str, Matter]) -> set[str]:
    """The event types besides ``task.*`` that answer some matter's tasks."""
    return {
        t.answered_by.event for m in matters.values() for t in m.tasks if t.answered_by is not None
    }


def by_trigger(matters: dict[str, Matter]) -> dict[str, tuple[Matter, ...]]:
    """The matters each event type starts, in name order (several may share a trigger)."""
    found: dict[str, list[Matter]] = {}
    for name in sorted(matters):
        found.setdefault(matters[name].trigger, []).append(matters[name])
    return {trigger: tuple(ms) for trigger, ms in found.items()}
