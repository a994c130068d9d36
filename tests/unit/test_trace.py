"""How ``bus trace`` shows time between events: milliseconds and months in one column."""

from __future__ import annotations

import pytest

from bus.edge.trace import elapsed


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 ms"), (0.0364, "36 ms"), (0.9994, "999 ms"), (0.9996, "1.00 s"), (2.0591, "2.06 s"),
     (59.99, "59.99 s"), (60, "1 min 00 s"), (243.7, "4 min 03 s"), (3600, "1 h 00 min"),
     (86_399, "23 h 59 min"), (86_400, "1 d 0 h"), (6_124_652.13, "70 d 21 h")],
)  # fmt: skip
def test_elapsed_reads_at_every_scale(seconds: float, shown: str) -> None:
    assert elapsed(seconds) == shown
