"""Working-day arithmetic on the official calendar, and the statutory-days fallback.

Facts for 2025/2026 come from chinese-calendar 1.11 (State Council notices). The 2027 files
written here are hypothetical test data: the 2027 schedule is not published yet.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from bus.domain.workdays import CHINA_TZ, WorkingCalendar, statutory_holidays
from bus.errors import ConfigurationError

HYPOTHETICAL_2027 = """\
year: 2027
source: "hypothetical test data, not an official notice"
holidays:
  - {date: "2027-01-01", name: New Year's Day}
  - {from: 2027-02-06, to: 2027-02-12, name: Spring Festival}
adjusted_workdays:
  - {date: 2027-02-14, name: Spring Festival}
"""


@pytest.fixture
def cal() -> WorkingCalendar:
    return WorkingCalendar.load(None)


def cst(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=CHINA_TZ)


def write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_national_day_2025(cal: WorkingCalendar) -> None:
    for day in range(1, 9):
        assert not cal.is_working_day(date(2025, 10, day))
    assert cal.is_working_day(date(2025, 9, 28))  # Sunday, adjusted working day
    assert cal.is_working_day(date(2025, 10, 11))  # Saturday, adjusted working day
    assert cal.is_working_day(date(2025, 10, 9))
    assert not cal.is_working_day(date(2025, 10, 12))  # ordinary Sunday


def test_spring_festival_2026(cal: WorkingCalendar) -> None:
    for offset in range(9):  # 2026-02-15 .. 2026-02-23
        assert not cal.is_working_day(date(2026, 2, 15) + timedelta(days=offset))
    assert cal.is_working_day(date(2026, 2, 14))  # Saturday, adjusted
    assert cal.is_working_day(date(2026, 2, 28))  # Saturday, adjusted
    assert cal.is_working_day(date(2026, 2, 24))


def test_deadline_across_national_day(cal: WorkingCalendar) -> None:
    # 09-30 (Tue) is excluded; working days after it: 10-09, 10-10, 10-11 (adjusted Saturday).
    assert cal.add_working_days(cst(2025, 9, 30), 3) == cst(2025, 10, 11)
    assert cal.working_days_between(date(2025, 9, 30), date(2025, 10, 11)) == 3


def test_start_on_non_working_day_counts_from_next_working_day(cal: WorkingCalendar) -> None:
    assert cal.add_working_days(cst(2025, 10, 1, 9), 1) == cst(2025, 10, 10, 9)
    assert cal.add_working_days(cst(2025, 10, 3, 9), 0) == cst(2025, 10, 9, 9)
    assert cal.add_working_days(cst(2025, 9, 30, 9), 0) == cst(2025, 9, 30, 9)


def test_deadline_keeps_input_timezone_and_shanghai_clock(cal: WorkingCalendar) -> None:
    start = datetime(2025, 9, 30, 20, 0, tzinfo=UTC)  # 2025-10-01 04:00 in Shanghai, a holiday
    due = cal.add_working_days(start, 1)
    assert due.tzinfo is UTC
    assert due == cst(2025, 10, 10, 4)


def test_rejects_naive_and_negative(cal: WorkingCalendar) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.add_working_days(datetime(2025, 9, 30, 10), 1)
    with pytest.raises(ValueError, match=">= 0"):
        cal.add_working_days(cst(2025, 9, 30), -1)
    with pytest.raises(TypeError):
        cal.is_working_day(cst(2025, 9, 30))


def test_working_days_between(cal: WorkingCalendar) -> None:
    # after Fri 09-26: 09-28 (adjusted), 09-29, 09-30, 10-09, 10-10, 10-11 (adjusted)
    assert cal.working_days_between(date(2025, 9, 26), date(2025, 10, 12)) == 6
    assert cal.working_days_between(date(2025, 10, 12), date(2025, 9, 26)) == -6
    assert cal.working_days_between(date(2025, 10, 1), date(2025, 10, 1)) == 0


def test_known_years(cal: WorkingCalendar) -> None:
    assert set(range(2004, 2027)) <= cal.known_years()
    assert cal.covers(2026)
    assert not cal.covers(2027)
    assert cal.fallback_years == frozenset()


def test_unknown_year_keeps_statutory_holidays_and_warns_once(
    cal: WorkingCalendar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bus.domain.workdays")
    assert not cal.is_working_day(date(2027, 1, 1))  # a Friday, New Year's Day by law
    assert not cal.is_working_day(date(2027, 1, 2))  # Saturday
    assert cal.is_working_day(date(2027, 1, 4))  # Monday
    # 2026-12-31 (Thu) + 2 -> 2027-01-04 (Mon), 2027-01-05 (Tue): New Year's Day is skipped
    assert cal.add_working_days(cst(2026, 12, 31), 2) == cst(2027, 1, 5)
    records = [r for r in caplog.records if r.name == "bus.domain.workdays"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "2027" in message
    assert "weekends only" not in message  # the statutory days are counted
    assert "statutory holidays" in message
    assert "swapped days (调休) are unknown" in message
    assert cal.fallback_years == frozenset({2027})
    assert not cal.covers(2027)  # a health check still sees that the notice is missing
    cal.is_working_day(date(2028, 3, 1))
    assert cal.fallback_years == frozenset({2027, 2028})
    assert len([r for r in caplog.records if r.name == "bus.domain.workdays"]) == 2


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@pytest.mark.parametrize(
    ("year", "off"),
    [
        # Lunar New Year 2027-02-06: New Year's Eve 02-05 (Fri) to the 3rd, 02-08 (Mon).
        # Qingming 04-05 (Mon), Dragon Boat 06-09 (Wed), Mid-Autumn 09-15 (Wed).
        (2027, [date(2027, 1, 1), *days(date(2027, 2, 5), date(2027, 2, 8)), date(2027, 4, 5),
                date(2027, 6, 9), date(2027, 9, 15), *days(date(2027, 10, 1), date(2027, 10, 3))]),
        # Lunar New Year 2028-01-26: 01-25 (Tue) to 01-28 (Fri); Qingming 04-04 (Tue);
        # Labour Day Mon-Tue; National Day Sun-Tue (Mid-Autumn falls on 10-03).
        (2028, [date(2028, 1, 1), *days(date(2028, 1, 25), date(2028, 1, 28)), date(2028, 4, 4),
                date(2028, 5, 1), date(2028, 5, 2), *days(date(2028, 10, 1), date(2028, 10, 3))]),
    ],
)  # fmt: skip
def test_statutory_holidays_are_not_working_days_without_a_notice(
    cal: WorkingCalendar, year: int, off: list[date]
) -> None:
    assert not cal.covers(year)
    for d in off:
        assert not cal.is_working_day(d), d
    assert cal.fallback_years == frozenset({year})
    # Around them, weekdays still work: no swaps are guessed.
    assert cal.is_working_day(date(year, 10, 8) if year == 2027 else date(year, 1, 24))


def test_statutory_rule_agrees_with_the_notices_of_known_years() -> None:
    from chinese_calendar import constants

    for year in (2025, 2026):
        for day, name in statutory_holidays(year).items():
            assert constants.holidays.get(day) == name, (day, name)
    assert len(statutory_holidays(2027)) == 13  # 1 + 4 + 1 + 2 + 1 + 1 + 3 days
    assert statutory_holidays(2027)[date(2027, 2, 5)] == "Spring Festival"  # New Year's Eve
    with pytest.raises(ValueError, match="from 2025"):
        statutory_holidays(2024)


def test_known_years_keep_their_swaps(cal: WorkingCalendar) -> None:
    # 2026 from the package: the adjusted Saturday 02-14 works, the Monday 02-23 is off,
    # neither of which the statutory rule alone would say.
    assert cal.is_working_day(date(2026, 2, 14))
    assert not cal.is_working_day(date(2026, 2, 23))
    assert cal.is_working_day(date(2026, 9, 20))  # Sunday, adjusted for National Day
    assert cal.fallback_years == frozenset()


def test_operator_file_for_2027_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cal = WorkingCalendar.load(write(tmp_path, "2027.yaml", HYPOTHETICAL_2027))
    assert cal.covers(2027)
    assert 2027 in cal.known_years()
    assert not cal.is_working_day(date(2027, 1, 1))
    assert not cal.is_working_day(date(2027, 2, 8))  # Monday inside the from/to range
    assert cal.is_working_day(date(2027, 2, 14))  # Sunday, adjusted
    assert cal.fallback_years == frozenset()
    assert not [r for r in caplog.records if r.name == "bus.domain.workdays"]


def test_operator_file_replaces_package_year(tmp_path: Path) -> None:
    text = 'year: 2026\nsource: "test correction"\nholidays:\n  - {date: 2026-01-01}\n'
    cal = WorkingCalendar.load(write(tmp_path, "2026.yaml", text))
    assert not cal.is_working_day(date(2026, 1, 1))
    assert cal.is_working_day(date(2026, 10, 5))  # a Monday the package lists as a holiday
    assert not cal.is_working_day(date(2026, 2, 14))  # Saturday, no longer adjusted


def test_empty_directory_is_fine(tmp_path: Path) -> None:
    assert WorkingCalendar.load(tmp_path).known_years() == WorkingCalendar.load(None).known_years()


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        WorkingCalendar.load(tmp_path / "nope")


HEAD = 'year: 2027\nsource: "test"\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (HEAD + "holidays:\n  - {date: 2027-01-01}\n  - {date: 2026-12-31}\n", "holidays[1]"),
        (
            HEAD + "holidays:\n  - {from: 2027-02-06, to: 2027-02-12, name: Spring Festival}\n"
            "adjusted_workdays:\n  - {date: 2027-02-07, name: Spring Festival}\n",
            "adjusted_workdays[0] (Spring Festival): 2027-02-07 is also a holiday",
        ),
        (HEAD + "holidays:\n  - {from: 2027-02-12, to: 2027-02-06}\n", "holidays[0]: from"),
        (HEAD + "holidays:\n  - {date: 2027-01-01, nmae: x}\n", "holidays[0]: unknown keys"),
        (HEAD + "holiday:\n  - {date: 2027-01-01}\n", "unknown keys ['holiday']"),
        (HEAD + "adjusted_workdays:\n  - {date: 2027-01-04}\n", "is a weekday"),
        (HEAD + "holidays:\n  - {date: 2027-01-01, from: 2027-01-01}\n", "holidays[0]: give"),
        (HEAD + "holidays:\n  - {date: 2027-13-01}\n", "holidays[0]: '2027-13-01' is not"),
        (HEAD + "holidays:\n  - {date: 2027-01-01 10:00}\n", "holidays[0]"),
        ("year: 2027\nholidays: []\n", "source"),
        ("year: 2028\nsource: x\n", "file name says 2027"),
        ("- just a list\n", "must be a mapping"),
        ("year: [\n", "cannot read"),
    ],
)
def test_bad_file_names_file_and_entry(tmp_path: Path, body: str, expected: str) -> None:
    write(tmp_path, "2027.yaml", body)
    with pytest.raises(ConfigurationError) as info:
        WorkingCalendar.load(tmp_path)
    assert "2027.yaml" in str(info.value)
    assert expected in str(info.value)


def test_two_files_for_one_year(tmp_path: Path) -> None:
    write(tmp_path, "2027.yaml", HYPOTHETICAL_2027)
    write(tmp_path, "2027-fix.yaml", HYPOTHETICAL_2027)
    with pytest.raises(ConfigurationError, match="second file for year 2027"):
        WorkingCalendar.load(tmp_path)
