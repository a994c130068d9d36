"""What the fuzz tests tried, shown at the end of every run in a ``fuzz`` section.

A fuzz test takes ``fuzz_counts`` (a ``Counter`` kept per test) and adds one per input under
its outcome (a reason code, ``accepted``, a status class); the terminal summary prints the
totals, so CI output says how much was tried and what came of it.
"""

from __future__ import annotations

from collections import Counter

import pytest

_COUNTS: dict[str, Counter[str]] = {}


@pytest.fixture
def fuzz_counts(request: pytest.FixtureRequest) -> Counter[str]:
    """This test's outcome counts (one ``Counter`` for all its examples)."""
    return _COUNTS.setdefault(request.node.nodeid, Counter())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counted = {test: counts for test, counts in _COUNTS.items() if counts}
    if not counted:
        return
    terminalreporter.section("fuzz: inputs tried and their outcomes")
    for test, counts in counted.items():
        terminalreporter.write_line(f"{test}: {counts.total()} inputs")
        for outcome, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            terminalreporter.write_line(f"    {n:>6}  {outcome}")
