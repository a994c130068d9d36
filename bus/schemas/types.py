"""Field types shared by every event model: USCC, department code, money, dates."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from bus.schemas.uscc import uscc_problem


def _check_uscc(value: str) -> str:
    problem = uscc_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid unified social credit code: {problem}")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware (e.g. 2026-03-02T09:30:00+08:00)")
    return value.astimezone(UTC)


Uscc = Annotated[str, AfterValidator(_check_uscc)]
"""An enterprise's unified social credit code, check character verified."""

DepartmentCode = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9_-]*)+$", max_length=64)
]
"""A department's dotted code, e.g. ``ks.enforcement.huaqiao``."""

Text = Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]
"""A short human text: a name, a reason, a legal basis."""

Money = Annotated[Decimal, Field(ge=0, max_digits=16, decimal_places=2)]
"""An amount in yuan with two decimals (Avro ``decimal(16, 2)``)."""

UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
"""A timezone-aware instant, normalised to UTC (naive values are rejected by the model)."""


class Payload(BaseModel):
    """Base of every event body: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)
