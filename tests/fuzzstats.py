"""What the fuzz tests tried, shown at the end of every run in a ``fuzz`` section.

A fuzz test takes ``fuzz_counts`` (a ``Counter`` kept per test) and adds one per input under
its outcome (a reason code, ``accepted``, a status class); the terminal summary prints the
totals, so CI output says how much was tried and what came of it. The counts travel in the
test's report (``user_properties``), so a run split over several processes prints them too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

_COUNTS: dict[str, Counter[str]] = {}
_KEY = "fuzz_counts"


@pytest.fixture
def fuzz_counts(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """This test's outcome counts (one ``Counter`` for all its examples)."""
    counts: Counter[str] = Counter()
    yield counts
    request.node.user_properties.append((_KEY, dict(counts)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "teardown":
        return
    for name, value in report.user_properties:
        if name == _KEY and value:
            _COUNTS.setdefault(report.nodeid, Counter()).update(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counted = {test: counts for test, counts in _COUNTS.items() if counts}
    if not counted:
        return
    terminalreporter.section("fuzz: inputs tried and their outcomes")
    for test, counts in counted.items():
        terminalreporter.write_line(f"{test}: {counts.total()} inputs")
        for outcome, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            terminalreporter.write_line(f"    {n:>6}  {outcome}")
