"""What a matter reads: the trigger, the enterprise record and its lists, by path.

A matter's conditions, lists, assignees, evidence and titles name facts by path::

    trigger.period_end            a field of the trigger's payload (or of its envelope:
                                  source, subject, event_type, occurred_at, event_id)
    enterprise                    the enterprise's registered name (its USCC until registered)
    enterprise.town               a field of its registered profile
    record.penalties              its penalties (case_number, agency, kind, amount, violation,
                                  decided_on, publicity_until, state), oldest first
    record.licences               its licences (licence_number, licence_type,
                                  issuing_department, valid_from, valid_until, state)
    record.status                 unknown, registered or deregistered
    on_record                     a list the matter declares under ``lists``
    item.agency                   in a step with ``for_each``: the element in hand
    evidence                      in a task's title: what its elements gave as evidence
    lead                          the matter's lead department
    answers.review                in outcomes: the answers to a step's tasks (closed ones)
    tasks.opinion                 in outcomes: a step's tasks (assignee, answer, note, evidence)
    event.application_number      in cancel: the event that may end the case (as trigger.*)

In outcomes, an element of a list also has ``answer``: the answer to the task whose evidence
it gave (none if it gave none).

In text, ``{path}`` is replaced by the value (``{path|lower}`` and ``{path|upper}`` change
its case); a value that is only ``"{path}"`` stands for the value itself, typed, so a
condition such as ``{lte: "{trigger.period_end}"}`` compares dates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

from bus.domain.conditions import satisfied
from bus.domain.record import EnterpriseRecord
from bus.schemas.envelope import Envelope

if TYPE_CHECKING:
    from bus.domain.matters import ListDef

ROOTS = ("trigger", "enterprise", "record", "item", "evidence", "lead", "answers", "tasks", "event")
ENVELOPE_FIELDS = ("event_id", "event_type", "source", "subject", "occurred_at",
                   "correlation_id", "causation_id")  # fmt: skip
RECORD_LISTS = ("penalties", "licences")
FILTERS = {"lower": str.lower, "upper": str.upper}
PLACE = re.compile(r"\{([a-z_][a-z0-9_.-]*)(?:\|([a-z]+))?\}")
WHOLE = re.compile(r"^\{([a-z_][a-z0-9_.-]*)\}$")


def places(text: str) -> list[tuple[str, str | None]]:
    """The (path, filter) pairs a text names."""
    return [(m.group(1), m.group(2)) for m in PLACE.finditer(text)]


def path_problem(
    path: str, lists: Sequence[str], steps: Sequence[str] = (), *, event: bool = False
) -> str | None:
    """What is wrong with a path as written in a matter, or None (``steps``: where answers
    may be read, the task names; none where they may not; ``event``: where an event that
    may cancel the case is read)."""
    root, _, rest = path.partition(".")
    if root == "event":
        if not event:
            return f"{path!r}: event is known in cancel only"
        return None if rest else f"{path!r}: name a field of the event"
    if root in ("answers", "tasks"):
        if not steps:
            return f"{path!r}: {root} are known in outcomes only"
        if rest not in steps:
            return f"{path!r}: name one of the tasks {', '.join(steps)}"
        return None
    if root in lists and not rest:
        return None
    if root not in ROOTS:
        names = ", ".join((*ROOTS, *lists))
        return f"{path!r} starts with none of {names}"
    if root == "record" and rest not in (*RECORD_LISTS, "status"):
        return f"{path!r}: the record has penalties, licences and status"
    if root in ("evidence", "lead") and rest:
        return f"{path!r}: {root} has no fields"
    if root == "trigger" and not rest:
        return f"{path!r}: name a field of the trigger"
    return None


def _plain(value: Any) -> Any:
    """A model as a mapping, so conditions and templates read every kind of value alike."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="python")
    return value


class Facts:
    """The facts of one case at one moment: what paths read."""

    def __init__(
        self,
        trigger: Envelope,
        record: EnterpriseRecord,
        *,
        lead: str,
        lists: Mapping[str, ListDef] | None = None,
        item: Any = None,
        evidence: Sequence[str] = (),
        tasks: Mapping[str, list[dict[str, Any]]] | None = None,
        evidence_of: Mapping[str, str] | None = None,
    ) -> None:
        self.trigger = trigger
        self.record = record
        self.lead = lead
        self.lists = lists or {}
        self.item = item
        self.evidence = list(evidence)
        self.tasks = tasks or {}
        self.evidence_of = evidence_of or {}
        self.event: Envelope | None = None

    def but(self, *, item: Any = None, evidence: Sequence[str] = ()) -> Facts:
        """The same facts with an element (and its evidence) in hand."""
        return Facts(self.trigger, self.record, lead=self.lead, lists=self.lists, item=item,
                     evidence=evidence, tasks=self.tasks,
                     evidence_of=self.evidence_of)  # fmt: skip

    def seeing(self, event: Envelope) -> Facts:
        """The same facts with an event that may end the case, read as ``event.*``."""
        seen = self.but()
        seen.event = event
        return seen

    def answered(
        self, tasks: Mapping[str, list[dict[str, Any]]], evidence_of: Mapping[str, str]
    ) -> Facts:
        """The same facts with a case's tasks and their answers, for its outcome."""
        return Facts(self.trigger, self.record, lead=self.lead, lists=self.lists,
                     tasks=tasks, evidence_of=evidence_of)  # fmt: skip

    def get(self, path: str) -> Any:
        """The value at ``path``; None where there is nothing."""
        root, _, rest = path.partition(".")
        if root in self.lists and not rest:
            return self.items(root)
        if root in ("trigger", "event"):
            event = self.trigger if root == "trigger" else self.event
            if event is None:
                return None
            if rest in ENVELOPE_FIELDS:
                return getattr(event, rest)
            return _dig(event.payload, rest.removeprefix("payload."))
        if root == "enterprise":
            if not rest:
                return self.record.name or self.record.uscc
            if rest == "uscc":
                return self.record.uscc
            return _dig(self.record.profile, rest)
        if root == "record":
            if rest == "status":
                return self.record.status
            entries = self.record.penalties if rest == "penalties" else self.record.licences
            found = [_plain(e) for e in entries.values()]
            order = "decided_on" if rest == "penalties" else "valid_from"
            key = "case_number" if rest == "penalties" else "licence_number"
            return sorted(found, key=lambda e: (e.get(order) or date.min, e.get(key) or ""))
        if root == "item":
            return _dig(self.item, rest) if rest else self.item
        if root == "evidence":
            return list(self.evidence)
        if root == "lead":
            return self.lead
        if root == "tasks":
            return list(self.tasks.get(rest, ()))
        if root == "answers":
            return [t["answer"] for t in self.tasks.get(rest, ()) if t.get("answer") is not None]
        return None

    def items(self, name: str) -> list[Any]:
        """The elements of the declared list ``name`` that meet its conditions."""
        spec = self.lists[name]
        found = self.get(spec.from_)
        if found is None:
            return []
        values = list(found) if isinstance(found, (list, tuple, set, frozenset)) else [found]
        if self.tasks:
            values = [self._with_answer(v) for v in values]
        return [v for v in values if all(
            satisfied(_dig(v, field) if field != "item" else v, cond, self.resolve)
            for field, cond in spec.where.items()
        )]  # fmt: skip

    def _with_answer(self, element: Any) -> Any:
        """``element`` with the answer to the task its evidence went to, if any."""
        if not isinstance(element, Mapping):
            return element
        for step, template in self.evidence_of.items():
            shown = self.but(item=element).render(template)
            for task in self.tasks.get(step, ()):
                if shown in task.get("evidence", ()):
                    return {**element, "answer": task.get("answer")}
        return element

    def build(self, value: Any) -> Any:
        """A payload as a matter writes it: texts read, ``{each: path, as: ...}`` repeated."""
        if isinstance(value, Mapping):
            if set(value) == {"each", "as"}:
                found = self.get(str(value["each"])) or []
                return [self.but(item=e).build(value["as"]) for e in found]
            return {k: self.build(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.build(v) for v in value]
        return self.resolve(value)

    def resolve(self, value: Any) -> Any:
        """A value as written in a matter, with the paths it names read."""
        if isinstance(value, str):
            if whole := WHOLE.match(value):
                return self.get(whole.group(1))
            if "{" in value:
                return self.render(value)
        return value

    def render(self, text: str) -> str:
        """``text`` with each ``{path}`` replaced by its value (lists joined with commas)."""

        def one(m: re.Match[str]) -> str:
            value = self.get(m.group(1))
            if value is None:
                shown = ""
            elif isinstance(value, (list, tuple)):
                shown = ", ".join(str(v) for v in value)
            else:
                shown = str(getattr(value, "value", value))
            return FILTERS[m.group(2)](shown) if m.group(2) else shown

        return PLACE.sub(one, text)

    def hold(self, when: Mapping[str, Any]) -> bool:
        """Whether every condition of ``when`` (path -> condition) holds."""
        return all(satisfied(self.get(path), cond, self.resolve) for path, cond in when.items())


def _dig(value: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        if value is None:
            return None
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return _plain(value) if hasattr(value, "model_dump") else value
