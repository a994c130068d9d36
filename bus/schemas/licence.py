"""Licences granted and revoked by the approval bureau (行政审批局) and sector regulators."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from bus.schemas.types import DepartmentCode, Payload, Text


class LicenceGranted(Payload):
    """A licence was granted; joint discipline reviews it when its holder is penalised."""

    licence_number: str = Field(min_length=4, max_length=64)
    licence_type: Text = Field(description="e.g. food business licence (食品经营许可证)")
    issuing_department: DepartmentCode
    scope: Text
    valid_from: date
    valid_until: date | None = None


class LicenceRevoked(Payload):
    """A licence was revoked or cancelled before it expired."""

    licence_number: str = Field(min_length=4, max_length=64)
    reason: Text
    revoked_on: date
