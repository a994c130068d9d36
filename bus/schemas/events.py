"""The catalogue of event types: name, versions, payload model, topic family, subject kind.

This is the one place that says which event types exist. Adding a type is adding a line;
adding a version is adding a model (and exporting its Avro schema, see ``bus schemas``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import create_model

from bus.errors import UnknownEventType
from bus.schemas.application import (
    ApplicationDecided,
    ApplicationDecidedV2,
    ApplicationSubmitted,
    ApplicationWithdrawn,
)
from bus.schemas.approval import (
    ApprovalDecided,
    ApprovalDecidedV2,
    ApprovalOpinion,
    ApprovalRequested,
)
from bus.schemas.certificate import CertificateIssued, CertificateRequested
from bus.schemas.enterprise import EnterpriseChanged, EnterpriseDeregistered, EnterpriseRegistered
from bus.schemas.envelope import Envelope
from bus.schemas.licence import LicenceGranted, LicenceRevoked
from bus.schemas.penalty import PenaltyImposed, PenaltyRepaired, PenaltyRevoked
from bus.schemas.report import ReportIssued, ReportRequested
from bus.schemas.task import (
    TaskAccepted,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskEscalated,
    TaskOverdue,
    TaskRejected,
)
from bus.schemas.types import Payload, Uscc

SubjectKind = Literal["uscc", "key"]


@dataclass(frozen=True)
class EventSpec:
    """What the bus knows about one event type."""

    event_type: str
    family: str
    versions: dict[int, type[Payload]]
    subject: SubjectKind = "uscc"
    description: str = ""
    latest: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "latest", max(self.versions))


def _spec(event_type: str, *models: type[Payload], subject: SubjectKind = "uscc") -> EventSpec:
    family = event_type.split(".", 1)[0]
    doc = (models[-1].__doc__ or "").strip().splitlines()[0]
    versions = {i + 1: m for i, m in enumerate(models)}
    return EventSpec(event_type, family, versions, subject, doc)


EVENT_TYPES: dict[str, EventSpec] = {
    s.event_type: s
    for s in (
        _spec("enterprise.registered", EnterpriseRegistered),
        _spec("enterprise.changed", EnterpriseChanged),
        _spec("enterprise.deregistered", EnterpriseDeregistered),
        _spec("penalty.imposed", PenaltyImposed),
        _spec("penalty.revoked", PenaltyRevoked),
        _spec("penalty.repaired", PenaltyRepaired),
        _spec("licence.granted", LicenceGranted),
        _spec("licence.revoked", LicenceRevoked),
        _spec("certificate.requested", CertificateRequested),
        _spec("certificate.issued", CertificateIssued),
        _spec("approval.requested", ApprovalRequested),
        _spec("approval.opinion", ApprovalOpinion),
        _spec("approval.decided", ApprovalDecided, ApprovalDecidedV2),
        _spec("application.submitted", ApplicationSubmitted),
        _spec("application.withdrawn", ApplicationWithdrawn),
        _spec("application.decided", ApplicationDecided, ApplicationDecidedV2),
        _spec("report.requested", ReportRequested),
        _spec("report.issued", ReportIssued),
        _spec("task.created", TaskCreated),
        _spec("task.accepted", TaskAccepted),
        _spec("task.completed", TaskCompleted),
        _spec("task.rejected", TaskRejected),
        _spec("task.overdue", TaskOverdue),
        _spec("task.escalated", TaskEscalated),
        _spec("task.cancelled", TaskCancelled),
    )
}

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(s.family for s in EVENT_TYPES.values()))


def spec_for(event_type: str) -> EventSpec:
    """The spec of ``event_type``; ``UnknownEventType`` names the known ones otherwise."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise UnknownEventType(
            f"unknown event_type {event_type!r}; known types: {', '.join(sorted(EVENT_TYPES))}"
        ) from None


def model_for(event_type: str, version: int | None = None) -> type[Envelope]:
    """The concrete envelope class of one event type and version (latest by default).

    One class per (type, version), so ``isinstance`` and equality work across call sites.
    ``event_type`` and ``schema_version`` are fixed by the class and may be left out.
    """
    spec = spec_for(event_type)
    version = spec.latest if version is None else version
    if version not in spec.versions:
        raise UnknownEventType(
            f"{event_type} has no schema_version {version}; known: {sorted(spec.versions)}",
            reason="schema.unknown_version",
        )
    return _model(event_type, version)


@cache
def _model(event_type: str, version: int) -> type[Envelope]:
    spec = EVENT_TYPES[event_type]
    fields: dict[str, Any] = {
        "event_type": (Literal[event_type], event_type),
        "schema_version": (Literal[version], version),
        "payload": (spec.versions[version], ...),
    }
    if spec.subject == "uscc":
        fields["subject"] = (Uscc, ...)
    name = "".join(p.title() for p in event_type.replace("_", ".").split(".")) + f"V{version}"
    return create_model(name, __base__=Envelope, __module__=__name__, **fields)
