"""Administrative penalties (行政处罚): imposed and revoked by enforcement, repaired by credit."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, model_validator

from bus.schemas.types import (
    Day,
    DepartmentCode,
    Line,
    Money,
    Payload,
    Text,
    latest_day,
    out_of_order,
)


class PenaltyKind(StrEnum):
    """The kinds of administrative penalty in the Administrative Penalty Law, art. 9."""

    WARNING = "warning"
    FINE = "fine"
    CONFISCATION = "confiscation"
    QUALIFICATION_DOWNGRADE = "qualification_downgrade"
    PRODUCTION_SUSPENSION = "production_suspension"
    LICENCE_REVOCATION = "licence_revocation"
    DETENTION = "detention"
    OTHER = "other"


CaseNumber = Field(min_length=4, max_length=64, description="e.g. 昆综执罚决字〔2026〕第0123号")


class PenaltyImposed(Payload):
    """A penalty decision: what every compliance check has to look at."""

    case_number: Line = CaseNumber
    kind: PenaltyKind
    violation: Text
    legal_basis: Text
    amount: Money = Field(description="Fine in yuan; 0 for penalties without a fine")
    decided_on: Day
    agency: DepartmentCode = Field(description="The issuing agency's department code")
    publicity_until: Day | None = Field(
        default=None, description="End of the publicity period; repair is possible afterwards"
    )

    @model_validator(mode="after")
    def _publicity_after_decision(self) -> PenaltyImposed:
        if self.publicity_until is not None and self.publicity_until < self.decided_on:
            raise out_of_order("publicity_until", "publicity_until must not be before decided_on")
        return self

    def check_occurred_at(self, occurred_at: datetime) -> None:
        """A decision is published once made: ``decided_on`` is not after ``occurred_at``."""
        if self.decided_on > latest_day(occurred_at):
            raise out_of_order(
                "decided_on",
                f"{self.decided_on} is after the event occurred ({occurred_at.isoformat()}): "
                "a decision is published once it is made",
            )


class PenaltyRevoked(Payload):
    """A penalty decision was revoked (撤销), e.g. after reconsideration or litigation."""

    case_number: Line = CaseNumber
    reason: Text
    revoked_on: Day


class PenaltyRepaired(Payload):
    """Credit repair (信用修复): the penalty leaves the public credit record."""

    case_number: Line = CaseNumber
    repaired_on: Day
    decision_number: Line = Field(min_length=4, max_length=64)
