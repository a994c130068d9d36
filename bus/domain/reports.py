"""Special public-credit information reports (专用信用报告): the document, built and signed.

A report covers every credit domain of the department directory at once (market regulation,
tax, ecology and environment, ...): each domain says "no record", or lists the records found
in the period with their state. Which records a report shows (e.g. whether repaired ones
appear) is the matter's to say, in the list it names; ``build_report`` only sorts them into
their domains.

It is signed and verified exactly like a certificate (``bus.domain.certificates``): the
document as JSON without ``signature``, in RFC 8785 canonical form, signed with Ed25519; only
the ``format`` tag differs, so neither can pass for the other.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bus.domain.certificates import (
    KeyId,
    Signature,
    Signer,
    Verifier,
    canonical_bytes,
    read_document,
    validate_document,
)
from bus.domain.departments import Directory
from bus.errors import BusError
from bus.schemas.certificate import CertificatePurpose
from bus.schemas.report import (
    DomainResult,
    ReportDomain,
    ReportIssued,
    ReportResult,
)
from bus.schemas.types import Day, DepartmentCode, Line, Uscc, UtcDatetime, out_of_order

FORMAT: Final = "gov.ks.bus.report/1"
"""The ``format`` tag of this document layout; a new layout gets a new tag."""

REASON_REPORT_MALFORMED = "report.malformed"
REASON_REPORT_BAD_SIGNATURE = "report.bad_signature"
REASON_REPORT_UNKNOWN_KEY = "report.unknown_key"
REASON_REPORT_UNREADABLE = "report.unreadable"

OTHER = ("other", "其他 (other)")
"""The domain of a record whose agency the directory gives none."""


class UnsignedReport(BaseModel):
    """Everything a report says, before it is signed."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    format: Literal["gov.ks.bus.report/1"] = FORMAT
    uscc: Uscc
    enterprise_name: Line = Field(min_length=1, max_length=200)
    serial: Line = Field(min_length=8, max_length=64)
    request_event_id: Line
    period_start: Day
    period_end: Day
    purpose: CertificatePurpose
    result: ReportResult
    domains: list[ReportDomain] = Field(min_length=1, max_length=64)
    issuing_authority: DepartmentCode
    issued_at: UtcDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.period_end < self.period_start:
            raise out_of_order("period_end", "period_end must not be before period_start")
        for d in self.domains:
            if (d.result == DomainResult.RECORDS) != bool(d.records):
                raise ValueError(f"domain {d.domain}: result {d.result.value} with "
                                 f"{len(d.records)} records")  # fmt: skip
        any_records = any(d.records for d in self.domains)
        if (self.result == ReportResult.RECORDS) != any_records:
            raise ValueError(f"result {self.result.value} does not match the domains")
        return self


class SignedReport(UnsignedReport):
    """The report as stored and shown: ``signature`` covers every other field."""

    key_id: KeyId
    signature: Signature

    @classmethod
    def from_payload(cls, payload: ReportIssued, *, uscc: str) -> SignedReport:
        """The document behind a ``report.issued`` event; ``uscc`` is its subject."""
        return validate_document(cls, {**payload.model_dump(), "uscc": uscc}, "report")

    def to_payload(self) -> ReportIssued:
        """The ``report.issued`` payload: every field but ``format`` and ``uscc``."""
        wanted = ReportIssued.model_fields
        return ReportIssued(**{k: getattr(self, k) for k in type(self).model_fields if k in wanted})

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers."""
        return canonical_bytes(self.model_dump(mode="json", exclude={"signature"}))

    def to_json_bytes(self, *, indent: int | None = 2) -> bytes:
        """The file form: readable JSON in field order (layout does not affect the signature)."""
        text = json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=indent)
        return text.encode("utf-8") + b"\n"

    def write(self, path: Path | str) -> None:
        """Store the report as a JSON file."""
        Path(path).write_bytes(self.to_json_bytes())


def report_domains(
    directory: Directory, records: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Every domain of the directory, in its order, with the records of its agencies.

    A record of an agency the directory gives no domain comes last, under "other", which is
    shown only then. Records within a domain: by decision date, then case number.
    """
    by_domain: dict[str, list[dict[str, Any]]] = {d.code: [] for d in directory.domains}
    for r in records:
        agency = str(r.get("agency") or "unknown.agency")
        domain = directory.domain_of(agency)
        entry = {
            "case_number": r["case_number"],
            "agency": agency,
            "kind": str(r.get("kind") or "penalty"),
            "decided_on": r.get("decided_on"),
            "state": r.get("state", "active"),
        }
        by_domain.setdefault(domain if domain in by_domain else OTHER[0], []).append(entry)
    names = {d.code: d.name for d in directory.domains} | {OTHER[0]: OTHER[1]}
    return [
        {
            "domain": code,
            "name": names[code],
            "result": DomainResult.RECORDS if found else DomainResult.NO_RECORD,
            "records": sorted(found, key=lambda e: (str(e["decided_on"]), e["case_number"])),
        }
        for code, found in by_domain.items()
        if found or code != OTHER[0]
    ]


def sign_report(signer: Signer, draft: UnsignedReport) -> SignedReport:
    """Sign ``draft``; the result carries ``key_id`` and ``signature``."""
    body = draft.model_dump(mode="json")
    body["key_id"] = signer.key_id
    body["signature"] = base64.b64encode(signer.sign_bytes(canonical_bytes(body))).decode("ascii")
    return SignedReport.model_validate(body)


def verify_report_bytes(verifier: Verifier, data: bytes) -> SignedReport:
    """Check a report file's bytes; the signature covers the members as written.

    Raises ``ValidationFailed`` (``report.malformed``, ``field`` names the member), then
    ``BusError`` (``report.unknown_key``, ``report.bad_signature``).
    """
    raw = read_document(data, "report")
    report = validate_document(SignedReport, raw, "report")
    verifier.check_document(raw, "report")
    return report


def verify_report_file(verifier: Verifier, path: Path | str) -> SignedReport:
    """Read and check a report file (see ``verify_report_bytes``)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BusError(
            f"cannot read report file {path}: {exc.strerror or exc}",
            reason=REASON_REPORT_UNREADABLE,
        ) from None
    return verify_report_bytes(verifier, data)


__all__ = [
    "FORMAT",
    "SignedReport",
    "UnsignedReport",
    "report_domains",
    "sign_report",
    "verify_report_bytes",
    "verify_report_file",
]
