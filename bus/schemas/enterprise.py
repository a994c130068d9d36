"""Enterprise lifecycle events, published by market regulation (市场监督管理局)."""

from __future__ import annotations

from pydantic import Field

from bus.schemas.types import Day, Money, Payload, Text


class EnterpriseRegistered(Payload):
    """An enterprise was registered: the profile every other department correlates with."""

    name: Text
    legal_representative: Text
    legal_representative_id: str = Field(
        pattern=r"^\d{17}[\dX]$", description="Resident ID number; personal data, masked in logs"
    )
    registered_capital: Money = Field(description="Registered capital in yuan")
    enterprise_type: Text = Field(description="e.g. 有限责任公司 (limited liability company)")
    industry_code: str = Field(pattern=r"^[A-T]\d{2,4}$", description="GB/T 4754 industry code")
    town: Text = Field(description="Town or district where it sits, e.g. Huaqiao")
    address: Text
    established_on: Day


class EnterpriseChanged(Payload):
    """Registered particulars changed; only the changed fields are set."""

    name: Text | None = None
    legal_representative: Text | None = None
    legal_representative_id: str | None = Field(default=None, pattern=r"^\d{17}[\dX]$")
    registered_capital: Money | None = None
    industry_code: str | None = Field(default=None, pattern=r"^[A-T]\d{2,4}$")
    town: Text | None = None
    address: Text | None = None
    effective_on: Day


class EnterpriseDeregistered(Payload):
    """The enterprise was deregistered (注销); its record is kept as evidence."""

    reason: Text
    deregistered_on: Day
