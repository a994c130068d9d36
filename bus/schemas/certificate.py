"""Compliance certificates (合规证明): the request and the signed answer."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from bus.schemas.types import Day, DepartmentCode, Line, Payload, Text, UtcDatetime, out_of_order


class CertificatePurpose(StrEnum):
    """Why the enterprise needs the certificate; some purposes need longer periods."""

    IPO = "ipo"
    FINANCING = "financing"
    BIDDING = "bidding"
    QUALIFICATION = "qualification"
    OTHER = "other"


class CertificateResult(StrEnum):
    """The answer: no record in the period, or a record (with the review outcome)."""

    CLEAN = "clean"
    RECORD_FOUND = "record_found"
    REFUSED = "refused"


class CertificateRequested(Payload):
    """An enterprise asked, through a department (e.g. the Financial Office), for a certificate."""

    period_start: Day
    period_end: Day
    purpose: CertificatePurpose
    requested_by: DepartmentCode = Field(description="The department that lodged the request")
    applicant: Text = Field(description="Name of the person applying for the enterprise")

    @model_validator(mode="after")
    def _period_in_order(self) -> CertificateRequested:
        if self.period_end < self.period_start:
            raise out_of_order("period_end", "period_end must not be before period_start")
        return self


class RecordedPenalty(Payload):
    """One penalty on the record a certificate was decided on."""

    case_number: Line
    agency: DepartmentCode
    decided_on: Day
    state: Line = Field(description="active, revoked or repaired")


class CertificateIssued(Payload):
    """A signed certificate; ``signature`` covers every other field (Ed25519, base64)."""

    serial: Line = Field(min_length=8, max_length=64)
    request_event_id: Line
    enterprise_name: Line = Field(
        min_length=1, max_length=200, description="As registered when decided"
    )
    period_start: Day
    period_end: Day
    purpose: CertificatePurpose
    result: CertificateResult
    record: list[RecordedPenalty] = Field(default_factory=list)
    issuing_authority: DepartmentCode
    issued_at: UtcDatetime
    key_id: Line
    signature: Line
