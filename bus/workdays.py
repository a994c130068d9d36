"""Working days on the official Chinese calendar, for cross-agency deadlines.

A day is a working day unless it is a weekend or an official holiday, except that adjusted
working days (调休: a Saturday or Sunday worked to lengthen a holiday) are working days too.
The official schedule comes from the chinese-calendar package (read as plain data, never via its
functions, which raise for years it does not know) and from operator YAML files, one per year
(format: docs/calendar-data.md). An operator file replaces the package's data for its whole year,
so a corrected notice is applied as published. A year nobody knows (the State Council publishes
next year's schedule late in the year) is counted weekends-only with a WARNING, never an error;
``fallback_years`` lists such years for health checks.

Deadline rule (``add_working_days``): as in Chinese administrative practice, the start day itself
is not counted; a task that arrives on a non-working day is treated as arriving on the next working
day. The deadline is the start's wall-clock time (Asia/Shanghai) on the n-th working day after that.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from chinese_calendar import constants as _cc

from bus.errors import ConfigurationError

CHINA_TZ = ZoneInfo("Asia/Shanghai")
log = logging.getLogger("bus.workdays")
_ONE_DAY = timedelta(days=1)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FILE_KEYS = {"year", "source", "holidays", "adjusted_workdays"}
_ENTRY_KEYS = {"date", "from", "to", "name"}

__all__ = ["CHINA_TZ", "WorkingCalendar", "YearData", "load_year_file"]


@dataclass(frozen=True)
class YearData:
    """One year's official schedule: days off and weekend days worked, plus where it came from."""

    year: int
    holidays: frozenset[date]
    adjusted_workdays: frozenset[date]
    source: str


def _package_years() -> dict[int, YearData]:
    """The package's data grouped by year; its known range is min..max of its holiday years."""
    first, last = min(_cc.holidays).year, max(_cc.holidays).year
    src = "chinese-calendar package"
    return {
        y: YearData(
            y,
            frozenset(d for d in _cc.holidays if d.year == y),
            frozenset(d for d in _cc.workdays if d.year == y),
            src,
        )
        for y in range(first, last + 1)
    }


def _as_date(d: date) -> date:
    """Reject datetimes: which calendar day an instant falls on depends on its timezone."""
    if isinstance(d, datetime):
        raise TypeError("pass a date, not a datetime (convert to Asia/Shanghai first)")
    return d


class WorkingCalendar:
    """Official working days; years without data fall back to weekends-only, loudly."""

    def __init__(
        self,
        operator_years: Iterable[YearData] = (),
        *,
        use_package: bool = True,
        data_dir: Path | None = None,
    ) -> None:
        self._years: dict[int, YearData] = _package_years() if use_package else {}
        self._years.update({yd.year: yd for yd in operator_years})
        self._data_dir = data_dir
        self._fallback: set[int] = set()

    @classmethod
    def load(cls, data_dir: Path | None = None) -> WorkingCalendar:
        """Package data plus every ``*.yaml`` in ``data_dir`` (an empty directory is fine)."""
        years: dict[int, YearData] = {}
        if data_dir is not None:
            if not data_dir.is_dir():
                raise ConfigurationError(f"calendar data directory {data_dir} does not exist")
            for path in sorted(data_dir.glob("*.yaml")):
                yd = load_year_file(path)
                if yd.year in years:
                    raise ConfigurationError(f"{path}: a second file for year {yd.year}")
                years[yd.year] = yd
        return cls(years.values(), data_dir=data_dir)

    def known_years(self) -> set[int]:
        """Years with official data (package or operator files)."""
        return set(self._years)

    def covers(self, year: int) -> bool:
        """Whether ``year`` has official data; a health check can ask this for next year."""
        return year in self._years

    @property
    def fallback_years(self) -> frozenset[int]:
        """Years that were counted weekends-only so far (for metrics and health checks)."""
        return frozenset(self._fallback)

    def is_working_day(self, d: date) -> bool:
        """Weekday and not a holiday, or an adjusted working day."""
        d = _as_date(d)
        yd = self._years.get(d.year)
        if yd is None:
            self._warn_fallback(d.year)
            return d.weekday() < 5
        return d in yd.adjusted_workdays or (d.weekday() < 5 and d not in yd.holidays)

    def add_working_days(self, start: datetime, n: int) -> datetime:
        """Deadline ``n`` working days after ``start`` (rule in the module docstring)."""
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if n < 0:
            raise ValueError("n must be >= 0")
        local = start.astimezone(CHINA_TZ)
        day = local.date()
        while not self.is_working_day(day):
            day += _ONE_DAY
        for _ in range(n):
            day += _ONE_DAY
            while not self.is_working_day(day):
                day += _ONE_DAY
        due = datetime.combine(day, local.time(), tzinfo=CHINA_TZ)
        return due.astimezone(start.tzinfo)

    def working_days_between(self, a: date, b: date) -> int:
        """Working days in (a, b]: start excluded, like ``add_working_days`` from a working day."""
        a, b = _as_date(a), _as_date(b)
        if b < a:
            return -self.working_days_between(b, a)
        count, day = 0, a + _ONE_DAY
        while day <= b:
            count += self.is_working_day(day)
            day += _ONE_DAY
        return count

    def _warn_fallback(self, year: int) -> None:
        if year in self._fallback:
            return
        self._fallback.add(year)
        where = f" in {self._data_dir}" if self._data_dir is not None else ""
        log.warning(
            "no official holiday data for %d: counting weekends only; add bus calendar data "
            "file %d.yaml%s (see docs/calendar-data.md)",
            year,
            year,
            where,
        )


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves dates as text, so a bad date is reported with its entry."""


_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _fail(path: Path, what: str) -> ConfigurationError:
    return ConfigurationError(f"calendar data {path}: {what}")


def _parse_day(path: Path, where: str, value: Any) -> date:
    text = str(value)
    try:
        if not _DATE_RE.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise _fail(path, f"{where}: {text!r} is not a YYYY-MM-DD date") from None


def _entries(path: Path, doc: Mapping[str, Any], key: str, year: int) -> dict[date, str]:
    """Expand ``{date}``/``{from, to}`` entries to days, each mapped to its entry's label."""
    raw = doc.get(key) or []
    if not isinstance(raw, list):
        raise _fail(path, f"{key} must be a list")
    days: dict[date, str] = {}
    for i, entry in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(path, f"{where} must be a mapping, got {entry!r}")
        if unknown := set(entry) - _ENTRY_KEYS:
            raise _fail(path, f"{where}: unknown keys {sorted(map(str, unknown))}")
        if not isinstance(name := entry.get("name", ""), str):
            raise _fail(path, f"{where}: name must be text")
        if "date" in entry and not {"from", "to"} & set(entry):
            first = last = _parse_day(path, where, entry["date"])
        elif "date" not in entry and {"from", "to"} <= set(entry):
            first = _parse_day(path, where, entry["from"])
            last = _parse_day(path, where, entry["to"])
            if first > last:
                raise _fail(path, f"{where}: from {first} is after to {last}")
        else:
            raise _fail(path, f"{where}: give either 'date' or both 'from' and 'to'")
        for d in (first, last):
            if d.year != year:
                raise _fail(path, f"{where}: {d} is outside the file's year {year}")
        label = f"{where} ({name})" if name else where
        day = first
        while day <= last:
            days[day] = label
            day += _ONE_DAY
    return days


def load_year_file(path: Path) -> YearData:
    """Parse and strictly validate one operator file; every error names the file and entry."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(path, f"cannot read: {exc}") from exc
    if not isinstance(doc, dict):
        raise _fail(path, "must be a mapping with year, source, holidays, adjusted_workdays")
    if unknown := set(doc) - _FILE_KEYS:
        raise _fail(path, f"unknown keys {sorted(map(str, unknown))}")
    year = doc.get("year")
    if not isinstance(year, int) or isinstance(year, bool):
        raise _fail(path, f"year must be an integer, got {year!r}")
    if path.stem.isdigit() and int(path.stem) != year:
        raise _fail(path, f"file name says {path.stem} but year is {year}")
    source = doc.get("source")
    if not isinstance(source, str) or not source.strip():
        raise _fail(path, "source (the notice the data comes from) is required")
    holidays = _entries(path, doc, "holidays", year)
    workdays = _entries(path, doc, "adjusted_workdays", year)
    for d, label in workdays.items():
        if d in holidays:
            raise _fail(path, f"{label}: {d} is also a holiday in {holidays[d]}")
        if d.weekday() < 5:
            raise _fail(path, f"{label}: {d} is a weekday, so it cannot be an adjusted workday")
    return YearData(year, frozenset(holidays), frozenset(workdays), source.strip())
