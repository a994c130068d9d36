"""What the bus knows about one enterprise: its profile, penalties and licences.

The correlate agent keeps one ``EnterpriseRecord`` per USCC, built only from canonical
events, and answers compliance questions from it: *was this enterprise penalised between
A and B, by whom, and is it still on the public record?*

Penalty states: ``active`` (on the public record), ``revoked`` (the decision was annulled:
as if it never happened), ``repaired`` (credit repair after the publicity period: the
decision stands but it is off the public record). A compliance check counts only active
penalties. Events may arrive out of order (a revocation before the decision it revokes, a
penalty before the registration): every event is kept, and a state once revoked or repaired
is never set back to active by a late original.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bus.domain.tasks import TaskKey, shown_state
from bus.schemas.envelope import Envelope

PenaltyState = Literal["active", "revoked", "repaired"]
_RANK = {"active": 0, "repaired": 1, "revoked": 2}  # a later state never goes back


class PenaltyEntry(BaseModel):
    """One penalty as the record holds it."""

    model_config = ConfigDict(extra="forbid")

    case_number: str
    agency: str | None = None
    kind: str | None = None
    amount: Decimal | None = None
    violation: str | None = None
    decided_on: date | None = None
    publicity_until: date | None = None
    state: PenaltyState = "active"
    events: list[str] = Field(default_factory=list, description="event ids, in order seen")


class LicenceEntry(BaseModel):
    """One licence the enterprise holds (or held)."""

    model_config = ConfigDict(extra="forbid")

    licence_number: str
    licence_type: str | None = None
    issuing_department: str | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    state: Literal["active", "revoked"] = "active"


class TaskEntry(BaseModel):
    """A task the bus created, as it stands; kept until its case is closed."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    matter: str
    case: str = Field(description="the event id that opened the case (the request)")
    assignee: str
    supervisor: str | None = None
    due_at: datetime
    state: Literal["open", "accepted", "completed", "rejected", "cancelled"] = "open"
    outcome: str | None = None
    overdue: bool = False
    escalated: bool = False
    chain: list[tuple[str, datetime]] = Field(
        default_factory=list, description="offices told next while it stays open, and when"
    )
    escalations: int = Field(default=0, description="how many of the chain were told")

    @property
    def closed(self) -> bool:
        """Completed, rejected or cancelled: nothing more is expected from the assignee."""
        return self.state in ("completed", "rejected", "cancelled")

    @property
    def next_escalation(self) -> tuple[str, datetime] | None:
        """The office of the chain told next, and when, if any is left."""
        return self.chain[self.escalations] if self.escalations < len(self.chain) else None

    @property
    def shown_state(self) -> str:
        """The state the views count in (``bus.domain.tasks.shown_state``)."""
        return shown_state(self.state, overdue=self.overdue, escalated=self.escalated)

    @property
    def key(self) -> TaskKey:
        """What this task is counted under."""
        return (self.matter, self.assignee, self.shown_state)


class EnterpriseRecord(BaseModel):
    """The bus's record of one enterprise, keyed by USCC."""

    model_config = ConfigDict(extra="forbid")

    uscc: str
    status: Literal["unknown", "registered", "deregistered"] = "unknown"
    profile: dict[str, Any] = Field(default_factory=dict)
    penalties: dict[str, PenaltyEntry] = Field(default_factory=dict)
    licences: dict[str, LicenceEntry] = Field(default_factory=dict)
    waiting: list[dict[str, Any]] = Field(
        default_factory=list, description="requests parked until the registration arrives"
    )
    unrouted: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="events whose routing needs the profile, parked until the registration, "
        "by event id (a changelog part each, so parking one more costs one small record)",
    )

    @property
    def name(self) -> str | None:
        """The registered name, when the registration has arrived."""
        name = self.profile.get("name")
        return str(name) if name is not None else None

    def penalties_between(
        self, start: date, end: date, *, states: tuple[PenaltyState, ...] = ("active",)
    ) -> list[PenaltyEntry]:
        """Penalties decided in [start, end] whose state is one of ``states``, oldest first."""
        found = [
            p
            for p in self.penalties.values()
            if p.decided_on is not None and start <= p.decided_on <= end and p.state in states
        ]
        return sorted(found, key=lambda p: (p.decided_on or date.min, p.case_number))

    def apply(self, event: Envelope) -> list[str]:
        """Fold one canonical event into the record; returns the parts it changed.

        Parts (``profile``, ``penalty:<case>``, ``licence:<number>``) are what
        the changelog writes, so one new penalty costs one small record, not the whole file.
        """
        p = event.payload
        kind = event.event_type
        part = "profile"
        if kind == "enterprise.registered":
            self.status = "registered"
            self.profile = {**p.model_dump(mode="json"), **self.profile_changes()}
        elif kind == "enterprise.changed":
            changes = p.model_dump(mode="json", exclude_none=True)
            changes.pop("effective_on", None)
            self.profile.update(changes)
            self.profile.setdefault("_changes", []).append(changes)
        elif kind == "enterprise.deregistered":
            self.status = "deregistered"
        elif kind == "penalty.imposed":
            part = f"penalty:{p.case_number}"
            known = self.penalties.get(p.case_number)  # e.g. its revocation came first
            # Built in one go: a model's field assignments one by one cost half as much again.
            self.penalties[p.case_number] = PenaltyEntry(
                case_number=p.case_number, agency=p.agency, kind=str(p.kind), amount=p.amount,
                violation=p.violation, decided_on=p.decided_on,
                publicity_until=p.publicity_until,
                state=known.state if known is not None else "active",
                events=[*(known.events if known is not None else ()), str(event.event_id)],
            )  # fmt: skip
        elif kind in ("penalty.revoked", "penalty.repaired"):
            part = f"penalty:{p.case_number}"
            entry = self._penalty(p.case_number)
            new: PenaltyState = "revoked" if kind == "penalty.revoked" else "repaired"
            if _RANK[new] > _RANK[entry.state]:
                entry.state = new
            entry.events.append(str(event.event_id))
        elif kind == "licence.granted":
            part = f"licence:{p.licence_number}"
            self.licences[p.licence_number] = LicenceEntry(
                licence_number=p.licence_number, licence_type=p.licence_type,
                issuing_department=p.issuing_department, valid_from=p.valid_from,
                valid_until=p.valid_until,
                state=self.licences.get(p.licence_number, LicenceEntry(
                    licence_number=p.licence_number)).state,
            )  # fmt: skip
        elif kind == "licence.revoked":
            part = f"licence:{p.licence_number}"
            lic = self.licences.setdefault(
                p.licence_number, LicenceEntry(licence_number=p.licence_number)
            )
            lic.state = "revoked"
        else:
            return []
        return [part]

    def profile_changes(self) -> dict[str, Any]:
        """Changes that arrived before the registration they change (kept on top)."""
        merged: dict[str, Any] = {}
        for change in self.profile.get("_changes", []):
            merged.update(change)
        if merged:
            merged["_changes"] = self.profile["_changes"]
        return merged

    def _penalty(self, case_number: str) -> PenaltyEntry:
        return self.penalties.setdefault(case_number, PenaltyEntry(case_number=case_number))


_PROFILE_FIELDS = {"uscc", "status", "profile", "waiting"}
_PART_FIELDS = {"penalty": "penalties", "licence": "licences", "unrouted": "unrouted"}
_PART_MODELS: dict[str, type[BaseModel]] = {"penalty": PenaltyEntry, "licence": LicenceEntry}
_MOVED = {"reviews", "tasks", "closed_tasks"}
"""Fields a record's changelog held before cases moved to the case engine; skipped on restore."""


def encode_part(record: EnterpriseRecord, part: str) -> bytes | None:
    """The changelog value of one part of a record; None when the part is gone."""
    if part == "profile":
        return record.model_dump_json(include=_PROFILE_FIELDS).encode()
    kind, _, key = part.partition(":")
    entry = getattr(record, _PART_FIELDS[kind]).get(key)
    if entry is None:
        return None
    if isinstance(entry, dict):  # a parked event, as JSON
        return json.dumps(entry, ensure_ascii=False).encode()
    return entry.model_dump_json().encode()


def apply_part(record: EnterpriseRecord, part: str, value: bytes | None) -> None:
    """Fold one changelog record back into ``record`` (restore)."""
    if part == "profile":
        if value is not None:
            fields = {k: v for k, v in json.loads(value).items() if k not in _MOVED}
            loaded = EnterpriseRecord.model_validate(fields)
            for name in _PROFILE_FIELDS:
                setattr(record, name, getattr(loaded, name))
        return
    kind, _, key = part.partition(":")
    if kind not in _PART_FIELDS:
        return  # a part of the layout before the case engine (a task)
    entries = getattr(record, _PART_FIELDS[kind])
    if value is None:
        entries.pop(key, None)
    elif kind in _PART_MODELS:
        entries[key] = _PART_MODELS[kind].model_validate_json(value)
    else:
        entries[key] = json.loads(value)
