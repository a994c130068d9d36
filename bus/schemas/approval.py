"""Parallel approval (并联审批): one application, opinions from several departments at once."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bus.schemas.types import Day, DepartmentCode, Line, Lines, Payload, Text

ApplicationNumber = Field(min_length=4, max_length=64, description="e.g. KS-SP-2026-000123")


class Opinion(StrEnum):
    """A department's answer; any refusal refuses the application."""

    APPROVE = "approve"
    REFUSE = "refuse"


class ApprovalRequested(Payload):
    """The approval bureau asks the named departments for their opinions, in parallel."""

    application_number: Line = ApplicationNumber
    title: Text = Field(description="e.g. 建设工程施工许可 (construction permit)")
    departments: list[DepartmentCode] = Field(min_length=1, max_length=20)
    applicant: Text
    submitted_on: Day


class ApprovalOpinion(Payload):
    """One department's opinion on an application."""

    application_number: Line = ApplicationNumber
    opinion: Opinion
    note: Lines | None = Field(default=None, max_length=2000)


class DepartmentOpinion(Payload):
    """An opinion as the decision records it."""

    department: DepartmentCode
    opinion: Opinion
    note: Lines | None = None


class ApprovalDecided(Payload):
    """The decision once every opinion is in: approved only if all approve."""

    application_number: Line = ApplicationNumber
    decision: Opinion
    opinions: list[DepartmentOpinion]


class ApprovalDecidedV2(ApprovalDecided):
    """The decision once every opinion is in: approved only if all approve.

    Version 2: signed by the bus when its matter says so (``issue: decision``); ``signature``
    covers the decision document (``bus.domain.decisions``).
    """

    __avro_name__ = "ApprovalDecided"  # the record of version 1, read by readers of either

    key_id: Line | None = Field(default=None, description="The signing key, when signed")
    signature: Line | None = Field(default=None, description="Ed25519, base64, when signed")
