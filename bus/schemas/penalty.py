"""Administrative penalties (行政处罚): imposed and revoked by enforcement, repaired by credit."""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import Field

from bus.schemas.types import DepartmentCode, Money, Payload, Text


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

    case_number: str = CaseNumber
    kind: PenaltyKind
    violation: Text
    legal_basis: Text
    amount: Money = Field(description="Fine in yuan; 0 for penalties without a fine")
    decided_on: date
    agency: DepartmentCode = Field(description="The issuing agency's department code")
    publicity_until: date | None = Field(
        default=None, description="End of the publicity period; repair is possible afterwards"
    )


class PenaltyRevoked(Payload):
    """A penalty decision was revoked (撤销), e.g. after reconsideration or litigation."""

    case_number: str = CaseNumber
    reason: Text
    revoked_on: date


class PenaltyRepaired(Payload):
    """Credit repair (信用修复): the penalty leaves the public credit record."""

    case_number: str = CaseNumber
    repaired_on: date
    decision_number: str = Field(min_length=4, max_length=64)
