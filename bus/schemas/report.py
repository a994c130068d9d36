"""The special public-credit information report (专用信用报告): the request and the signed report.

Since 30 September 2025 Jiangsu replaces the per-department "no violation record" certificates
with one report generated from the public credit record, covering every domain at once. The
report lists each domain of the department directory, with "no record" or the records found in
the period and their state.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from bus.schemas.certificate import CertificatePurpose
from bus.schemas.types import Day, DepartmentCode, Line, Payload, Text, UtcDatetime, out_of_order

DomainCode = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")


class ReportResult(StrEnum):
    """The report as a whole: no record in any domain, or records in at least one."""

    CLEAN = "clean"
    RECORDS = "records"


class DomainResult(StrEnum):
    """One domain of the report: nothing found, or the records listed."""

    NO_RECORD = "no_record"
    RECORDS = "records"


class ReportRequested(Payload):
    """An enterprise or a department asked for the enterprise's credit report for a period."""

    period_start: Day
    period_end: Day
    purpose: CertificatePurpose
    requested_by: DepartmentCode = Field(description="The department that lodged the request")
    applicant: Text = Field(description="Who applies: a person for the enterprise, or an office")

    @model_validator(mode="after")
    def _period_in_order(self) -> ReportRequested:
        if self.period_end < self.period_start:
            raise out_of_order("period_end", "period_end must not be before period_start")
        return self


class ReportedRecord(Payload):
    """One record in a domain of the report, in its state on the record when decided."""

    case_number: Line
    agency: DepartmentCode
    kind: Line = Field(description="the kind of decision, e.g. fine or warning")
    decided_on: Day
    state: Line = Field(description="active, revoked or repaired")


class ReportDomain(Payload):
    """One domain of the report (e.g. tax): no record, or its records."""

    domain: Line = DomainCode
    name: Line = Field(min_length=1, max_length=200)
    result: DomainResult
    records: list[ReportedRecord] = Field(default_factory=list)


class ReportIssued(Payload):
    """A signed credit report; ``signature`` covers every other field (Ed25519, base64)."""

    serial: Line = Field(min_length=8, max_length=64)
    request_event_id: Line
    enterprise_name: Line = Field(
        min_length=1, max_length=200, description="As registered when decided"
    )
    period_start: Day
    period_end: Day
    purpose: CertificatePurpose
    result: ReportResult
    domains: list[ReportDomain] = Field(min_length=1, max_length=64)
    issuing_authority: DepartmentCode
    issued_at: UtcDatetime
    key_id: Line
    signature: Line
