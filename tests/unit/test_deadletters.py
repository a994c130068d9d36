"""Dead letters without Kafka: the listing's order and filters, and what a replay picks.

The listing sorts and filters records as read; the replay plan decides, letter by letter,
what goes back and what is skipped and why.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from bus.agents.out import REPLAY_COUNT, REPLAY_FIRST, REPLAY_OF, rejection_headers
from bus.edge.publish import (
    plan_replay,
    replay_headers,
    replay_link,
    select_deadletters,
    since_ms,
    source_of,
)
from bus.streaming.client import Record

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
MS = int(NOW.timestamp() * 1000)
HOUR = 3_600_000
INGRESS = "bus.ingress"


def letter(
    origin: str,
    *,
    at: int = MS,
    partition: int = 0,
    offset: int = 0,
    reason: str = "auth.unknown_source",
    source: str | None = "ks.tax",
    stage: str = "ingest",
    **extra: str,
) -> Record:
    headers = {"bus.origin": origin, "bus.reason": reason, "bus.stage": stage,
               "bus.rejected_at": str(at), **extra}  # fmt: skip
    if source:
        headers["source"] = source
    return Record("bus.deadletter", partition, offset, at, b"k", b"{}", headers)


def test_the_listing_is_in_dead_letter_order_whatever_order_the_partitions_came_in() -> None:
    letters = [
        letter("a", at=MS - 1 * HOUR, partition=0, offset=0),
        letter("b", at=MS - 3 * HOUR, partition=2, offset=0),
        letter("c", at=MS - 2 * HOUR, partition=1, offset=0),
        letter("d", at=MS - 2 * HOUR, partition=0, offset=1),  # same ms: partition, offset
    ]
    first = [r.headers["bus.origin"] for r in select_deadletters(letters)]
    again = [r.headers["bus.origin"] for r in select_deadletters(letters[::-1])]
    assert first == again == ["b", "d", "c", "a"]


def test_limit_keeps_the_newest_shown_oldest_first() -> None:
    letters = [letter(str(i), at=MS + i, partition=i % 3, offset=i) for i in range(10)]
    shown = select_deadletters(letters[::-1], limit=3)
    assert [r.headers["bus.origin"] for r in shown] == ["7", "8", "9"]
    assert len(select_deadletters(letters, limit=0)) == 10


def test_filters_by_source_since_and_reason() -> None:
    letters = [
        letter("old", at=MS - 49 * HOUR, source="ks.enforcement.jinxi"),
        letter("tax", at=MS - 1 * HOUR, source="ks.tax", reason="schema.validation"),
        letter("jinxi", at=MS - 1 * HOUR, source="ks.enforcement.jinxi"),
        letter("bare", at=MS, source=None),
    ]
    pick = lambda **kw: [r.headers["bus.origin"] for r in select_deadletters(letters, **kw)]  # noqa: E731
    assert pick(source="ks.enforcement") == ["old", "jinxi"]  # every bureau under it
    assert pick(source="ks.enforcement.jinxi") == ["old", "jinxi"]
    assert pick(source="ks.enf") == []  # a code, not a string prefix
    assert pick(since=since_ms("1d", NOW)) == ["tax", "jinxi", "bare"]
    assert pick(since=since_ms("1d", NOW), reason="auth.") == ["jinxi", "bare"]


def test_since_takes_durations_and_dates() -> None:
    assert since_ms("2h", NOW) == MS - 2 * HOUR
    assert since_ms("30m", NOW) == MS - HOUR // 2
    assert since_ms("1d", NOW) == MS - 24 * HOUR
    assert since_ms("1w", NOW) == MS - 7 * 24 * HOUR
    assert since_ms("2026-05-10", NOW) == MS - 12 * HOUR  # UTC unless it says
    assert since_ms("2026-05-10T10:00", NOW) == MS - 2 * HOUR
    assert since_ms("2026-05-10T18:00+08:00", NOW) == MS - 2 * HOUR
    with pytest.raises(ValueError, match="neither a duration"):
        since_ms("yesterday", NOW)


def test_the_source_is_the_header_else_the_json() -> None:
    bare = letter("x", source=None)
    assert source_of(letter("x", source="ks.amr")) == "ks.amr"
    assert source_of(dataclasses.replace(bare, value=b'{"source": "ks.tax"}')) == "ks.tax"
    assert source_of(dataclasses.replace(bare, value=b"\x00\x01avro")) is None
    assert source_of(bare) is None


def test_a_dead_letter_keeps_the_link_to_the_letter_it_replays() -> None:
    original = [("source", b"ks.tax"), (REPLAY_OF, b"bus.ingress/0/9"), ("bus.reason", b"x"),
                (REPLAY_FIRST, b"bus.ingress/0/5"), (REPLAY_COUNT, b"2")]  # fmt: skip
    headers = dict(rejection_headers(original, "auth.unknown_source", "no", "ingest", "o/1/2"))
    assert headers[REPLAY_OF] == b"bus.ingress/0/9"
    assert headers[REPLAY_FIRST] == b"bus.ingress/0/5"
    assert headers[REPLAY_COUNT] == b"2"
    assert headers["bus.reason"] == b"auth.unknown_source"


def test_a_replay_counts_on_from_the_letter_it_replays() -> None:
    first = letter("bus.ingress/0/5")
    h = dict(replay_headers(first, to_sink=False))
    assert (h[REPLAY_OF], h[REPLAY_FIRST], h[REPLAY_COUNT]) == (
        b"bus.ingress/0/5", b"bus.ingress/0/5", b"1"
    )  # fmt: skip
    assert not {k for k in h if k.startswith("bus.")} - {REPLAY_OF, REPLAY_FIRST, REPLAY_COUNT}
    second = letter("bus.ingress/1/9", **{k: v.decode() for k, v in h.items()})
    h2 = dict(replay_headers(second, to_sink=False))
    assert (h2[REPLAY_OF], h2[REPLAY_FIRST], h2[REPLAY_COUNT]) == (
        b"bus.ingress/1/9", b"bus.ingress/0/5", b"2"
    )  # fmt: skip
    link = replay_link(second)
    assert link is not None
    assert (link.of, link.first, link.count) == ("bus.ingress/0/5", "bus.ingress/0/5", 1)


def chain() -> list[Record]:
    """A letter, replayed once while its cause was not fixed: the same reason again."""
    first = letter("bus.ingress/0/5", at=MS - HOUR)
    again = letter("bus.ingress/0/9", **{k: v.decode()
                   for k, v in replay_headers(first, to_sink=False)})  # fmt: skip
    return [first, again]


def test_a_replay_that_failed_again_for_the_same_reason_is_skipped_unless_forced() -> None:
    letters = chain()
    done = {"bus.ingress/0/5": "auth.unknown_source"}
    report, todo = plan_replay(letters, done, ingress=INGRESS)
    assert todo == []
    assert report.skipped["bus.ingress/0/5"] == "already replayed"
    why = report.skipped["bus.ingress/0/9"]
    assert "replay 1 of bus.ingress/0/5 failed again with auth.unknown_source" in why
    assert "--force" in report.skipped["bus.ingress/0/9"]
    forced, todo = plan_replay(letters, done, ingress=INGRESS, force=True)
    assert [(r.headers["bus.origin"], t) for r, t in todo] == [("bus.ingress/0/9", INGRESS)]
    assert forced.skipped == {"bus.ingress/0/5": "already replayed"}  # never twice, forced


def test_a_replay_that_failed_for_another_reason_is_replayed() -> None:
    first, again = chain()
    link = {k: v for k, v in again.headers.items() if k.startswith("bus.replay")}
    moved = letter("bus.ingress/0/9", reason="schema.validation", **link)
    report, todo = plan_replay([first, moved], {"bus.ingress/0/5": "auth.unknown_source"},
                               ingress=INGRESS)  # fmt: skip
    assert [r.headers["bus.origin"] for r, _ in todo] == ["bus.ingress/0/9"]
    # the marker expired or was never read: the earlier letter's own reason decides
    report, todo = plan_replay(chain(), {}, ingress=INGRESS)
    assert "bus.ingress/0/9" in report.skipped
    assert [r.headers["bus.origin"] for r, _ in todo] == ["bus.ingress/0/5"]
