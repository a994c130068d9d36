"""Field types shared by every event model: USCC, department code, text, money, dates.

Text and dates are bounded here, once, so every event type refuses the same hostile input
with the same reason: ``schema.text`` for control, bidi and line-break characters,
``schema.date_range`` for dates outside ``EARLIEST_YEAR``..``LATEST_YEAR``, and
``schema.date_order`` for dates in the wrong order (the codec maps these error types to
reasons). docs/gateway.md says why the bounds are what they are.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from bus.schemas.uscc import uscc_problem

REASON_TEXT = "schema.text"
REASON_DATE_RANGE = "schema.date_range"
REASON_DATE_ORDER = "schema.date_order"

EARLIEST_YEAR = 1949
"""No administrative record the bus carries predates the People's Republic."""

LATEST_YEAR = 2100
"""Room for long validity and publicity periods; sentinels such as 9999-12-31 are refused."""

EASTERNMOST_OFFSET = timedelta(hours=14)
"""The most eastern UTC offset (UTC+14): no calendar day anywhere is later than UTC + 14 h."""

# C0 and C1 controls and DEL; bidi embeddings, overrides, isolates and marks; line and
# paragraph separators. (pydantic itself refuses unpaired surrogates.)
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_NOT_IN_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\u2028\u2029]")
_NOT_IN_LINES = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI}\u2028\u2029]")


def _kind(c: str) -> str:
    if c in "\u2028\u2029":
        return "a line break"
    if unicodedata.category(c) == "Cf":
        return f"a bidi control ({unicodedata.name(c)})"
    return "a control character"


def _text_checker(forbidden: re.Pattern[str], what: str) -> BeforeValidator:
    # Before stripping: a control character at either end is refused, not silently dropped
    # (Avro is forwarded as written, and readers other than the bus would still see it).
    def check(value: Any) -> Any:
        found = forbidden.search(value) if isinstance(value, str) else None
        if found is not None:
            c = found.group()
            raise PydanticCustomError(
                REASON_TEXT,
                "{problem}",
                {
                    "problem": f"character {found.start() + 1} is U+{ord(c):04X}, {_kind(c)}: "
                    f"{what} may not hold control or bidi characters"
                },
            )
        return value

    return BeforeValidator(check)


def date_range_error(value: date) -> PydanticCustomError:
    """The error for a date or instant outside the plausible years."""
    return PydanticCustomError(
        REASON_DATE_RANGE,
        "{problem}",
        {
            "problem": f"{value.isoformat()} is outside the years "
            f"{EARLIEST_YEAR}..{LATEST_YEAR} the bus accepts"
        },
    )


def out_of_order(field: str, problem: str) -> PydanticCustomError:
    """The error of a model validator whose dates are in the wrong order; names ``field``."""
    return PydanticCustomError(REASON_DATE_ORDER, "{problem}", {"problem": problem, "field": field})


def latest_day(instant: datetime) -> date:
    """The latest calendar day it is anywhere on earth at ``instant`` (at UTC+14)."""
    return (instant.astimezone(UTC) + EASTERNMOST_OFFSET).date()


def _check_uscc(value: str) -> str:
    problem = uscc_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid unified social credit code: {problem}")
    return value


def _plausible_day(value: date) -> date:
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise date_range_error(value)
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware (e.g. 2026-03-02T09:30:00+08:00)")
    # Roughly bounded before converting (at year 1 or 9999 the conversion overflows), then
    # exactly in UTC, the form that is stored and validated again when read.
    if not EARLIEST_YEAR - 1 <= value.year <= LATEST_YEAR + 1:
        raise date_range_error(value)
    utc = value.astimezone(UTC)
    if not EARLIEST_YEAR <= utc.year <= LATEST_YEAR:
        raise date_range_error(value)
    return utc


_ONE_LINE = _text_checker(_NOT_IN_LINE, "a single-line field")

Line = Annotated[str, _ONE_LINE]
"""Single-line text or an identifier: no control, bidi or line-break characters."""

Lines = Annotated[str, _text_checker(_NOT_IN_LINES, "free text")]
"""Free text over several lines: as ``Line``, but ``\\n`` is allowed."""

Uscc = Annotated[str, AfterValidator(_check_uscc)]
"""An enterprise's unified social credit code, check character verified."""

DepartmentCode = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9_-]*)+$", max_length=64)
]
"""A department's dotted code, e.g. ``ks.enforcement.huaqiao``."""

Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=500, strip_whitespace=True),
    _ONE_LINE,
]
"""A short human text on one line: a name, a reason, a legal basis."""

Money = Annotated[Decimal, Field(ge=0, max_digits=16, decimal_places=2)]
"""An amount in yuan with two decimals (Avro ``decimal(16, 2)``)."""

Day = Annotated[date, AfterValidator(_plausible_day)]
"""A calendar day in ``EARLIEST_YEAR``..``LATEST_YEAR``: a decision, a validity limit."""

UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
"""A timezone-aware instant in the plausible years, normalised to UTC (naive is refused)."""


class Payload(BaseModel):
    """Base of every event body: immutable, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    def check_occurred_at(self, occurred_at: datetime) -> None:
        """Refuse a payload that cannot be true of an event at ``occurred_at``.

        The envelope calls it once the event is valid; raise ``out_of_order`` naming the
        payload field. Most payloads have nothing to check.
        """
