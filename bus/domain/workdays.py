"""Working days on the official Chinese calendar, for cross-agency deadlines.

A day is a working day unless it is a weekend or an official holiday, except that adjusted
working days (调休: a Saturday or Sunday worked to lengthen a holiday) are working days too.
The official schedule comes from the chinese-calendar package (read as plain data, never via its
functions, which raise for years it does not know) and from operator YAML files, one per year
(format: docs/calendar-data.md). An operator file replaces the package's data for its whole year,
so a corrected notice is applied as published. A year without a notice (the State Council
publishes next year's schedule late in the year) is not an error: its statutory holidays are
computed from the rules in force since 2025 (``statutory_holidays``: Gregorian and lunar dates,
Qingming by its solar term) and only the notice's swaps are missing, which a WARNING says once
per year; ``fallback_years`` lists such years for health checks.

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
from lunar_python import Lunar, Solar

from bus.errors import ConfigurationError

CHINA_TZ = ZoneInfo("Asia/Shanghai")
log = logging.getLogger("bus.domain.workdays")
_ONE_DAY = timedelta(days=1)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FILE_KEYS = {"year", "source", "holidays", "adjusted_workdays"}
_ENTRY_KEYS = {"date", "from", "to", "name"}

__all__ = ["CHINA_TZ", "WorkingCalendar", "YearData", "load_year_file", "statutory_holidays"]

STATUTORY_SINCE = 2025
"""First year of the current rules (全国年节及纪念日放假办法 as revised in November 2024)."""


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


def _lunar(year: int, month: int, day: int) -> date:
    solar = Lunar.fromYmd(year, month, day).getSolar()
    return date(solar.getYear(), solar.getMonth(), solar.getDay())


def _qingming(year: int) -> date:
    """The day (China Standard Time) of the Qingming solar term: 4 or 5 April this century."""
    for day in range(3, 7):
        if Solar.fromYmd(year, 4, day).getLunar().getJieQi() == "清明":
            return date(year, 4, day)
    raise AssertionError(f"no Qingming found in early April {year}")  # pragma: no cover


def statutory_holidays(year: int) -> dict[date, str]:
    """The days off the law itself fixes for ``year``, each with its holiday's name.

    Rules in force since 2025 (the State Council's 2024 revision of 全国年节及纪念日放假办法):
    New Year's Day 1 day (1 January); Spring Festival 4 days (lunar New Year's Eve and the
    1st to 3rd of the first lunar month); Qingming 1 day (the Qingming solar term); Labour Day
    2 days (1 and 2 May); Dragon Boat Festival 1 day (5th of the fifth lunar month); Mid-Autumn
    1 day (15th of the eighth lunar month); National Day 3 days (1 to 3 October).

    What only the yearly notice says is not here: weekend days worked to join days off into a
    week (调休), and the weekday given off for a statutory day that falls on a weekend.
    """
    if year < STATUTORY_SINCE:
        raise ValueError(f"the statutory rules here apply from {STATUTORY_SINCE}, not {year}")
    new_year = _lunar(year, 1, 1)
    days = {
        date(year, 1, 1): "New Year's Day",
        new_year - _ONE_DAY: "Spring Festival",
        **{new_year + timedelta(days=i): "Spring Festival" for i in range(3)},
        _qingming(year): "Tomb-sweeping Day",
        date(year, 5, 1): "Labour Day",
        date(year, 5, 2): "Labour Day",
        _lunar(year, 5, 5): "Dragon Boat Festival",
        _lunar(year, 8, 15): "Mid-autumn Festival",
    }
    # Mid-Autumn can fall on 1-3 October (as in 2028): the notice then makes up the day,
    # and only the notice can say which.
    days.update({date(year, 10, d): "National Day" for d in (1, 2, 3)})
    return days


def _as_date(d: date) -> date:
    """Reject datetimes: which calendar day an instant falls on depends on its timezone."""
    if isinstance(d, datetime):
        raise TypeError("pass a date, not a datetime (convert to Asia/Shanghai first)")
    return d


class WorkingCalendar:
    """Official working days; a year without a notice keeps its statutory holidays, loudly."""

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
        self._estimated: dict[int, YearData] = {}

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
        """Years counted without a notice so far (for metrics and health checks)."""
        return frozenset(self._fallback)

    def is_working_day(self, d: date) -> bool:
        """Weekday and not a holiday, or an adjusted working day."""
        d = _as_date(d)
        yd = self._years.get(d.year) or self._without_notice(d.year)
        return d in yd.adjusted_workdays or (d.weekday() < 5 and d not in yd.holidays)

    def _without_notice(self, year: int) -> YearData:
        """The statutory holidays alone, for a year nobody gave the calendar (warned once)."""
        yd = self._estimated.get(year)
        if yd is None:
            statutory = statutory_holidays(year) if year >= STATUTORY_SINCE else {}
            yd = YearData(year, frozenset(statutory), frozenset(), "statutory holidays only")
            self._estimated[year] = yd
            self._warn_fallback(year)
        return yd

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
        if year < STATUTORY_SINCE:  # older rules differed; the package covers those years
            counted = "weekends only"
        else:
            counted = "weekends and the statutory holidays; its swapped days (调休) are unknown"
        log.warning(
            "no State Council holiday notice for %d: counting %s; add bus calendar data "
            "file %d.yaml%s (see docs/calendar-data.md)",
            year,
            counted,
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
