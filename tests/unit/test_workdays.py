"""Working-day arithmetic on the official calendar, and the weekends-only fallback.

Facts for 2025/2026 come from chinese-calendar 1.11 (State Council notices). The 2027 files
written here are hypothetical test data: the 2027 schedule is not published yet.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from bus.errors import ConfigurationError
from bus.workdays import CHINA_TZ, WorkingCalendar

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


def test_unknown_year_falls_back_to_weekends_and_warns_once(
    cal: WorkingCalendar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bus.workdays")
    assert cal.is_working_day(date(2027, 1, 1))  # a Friday; no data, so a working day
    assert not cal.is_working_day(date(2027, 1, 2))  # Saturday
    # 2026-12-31 (Thu) + 2 -> 2027-01-01 (Fri), 2027-01-04 (Mon)
    assert cal.add_working_days(cst(2026, 12, 31), 2) == cst(2027, 1, 4)
    records = [r for r in caplog.records if r.name == "bus.workdays"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "2027" in records[0].getMessage()
    assert "weekends only" in records[0].getMessage()
    assert cal.fallback_years == frozenset({2027})
    cal.is_working_day(date(2028, 3, 1))
    assert cal.fallback_years == frozenset({2027, 2028})
    assert len([r for r in caplog.records if r.name == "bus.workdays"]) == 2


def test_operator_file_for_2027_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cal = WorkingCalendar.load(write(tmp_path, "2027.yaml", HYPOTHETICAL_2027))
    assert cal.covers(2027)
    assert 2027 in cal.known_years()
    assert not cal.is_working_day(date(2027, 1, 1))
    assert not cal.is_working_day(date(2027, 2, 8))  # Monday inside the from/to range
    assert cal.is_working_day(date(2027, 2, 14))  # Sunday, adjusted
    assert cal.fallback_years == frozenset()
    assert not [r for r in caplog.records if r.name == "bus.workdays"]


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
