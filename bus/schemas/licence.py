"""Licences granted and revoked by the approval bureau (行政审批局) and sector regulators."""

from __future__ import annotations

from pydantic import Field, model_validator

from bus.schemas.types import Day, DepartmentCode, Line, Payload, Text, out_of_order


class LicenceGranted(Payload):
    """A licence was granted; joint discipline reviews it when its holder is penalised."""

    licence_number: Line = Field(min_length=4, max_length=64)
    licence_type: Text = Field(description="e.g. food business licence (食品经营许可证)")
    issuing_department: DepartmentCode
    scope: Text
    valid_from: Day
    valid_until: Day | None = None

    @model_validator(mode="after")
    def _valid_in_order(self) -> LicenceGranted:
        if self.valid_until is not None and self.valid_until < self.valid_from:
            raise out_of_order("valid_until", "valid_until must not be before valid_from")
        return self


class LicenceRevoked(Payload):
    """A licence was revoked or cancelled before it expired."""

    licence_number: Line = Field(min_length=4, max_length=64)
    reason: Text
    revoked_on: Day
