"""The ingest agent through a real broker and a real ``bus worker`` process.

Proves: good events reach their canonical topic once, keyed by subject; every kind of bad
input ends in dead letters with its reason and original bytes while the worker keeps going;
duplicates are dead-lettered, not forwarded; a worker stopped or killed mid-stream and
restarted loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bus.dev.processes import WorkerProcess
from bus.dev.samples import penalties
from bus.settings import Settings
from bus.streaming.client import BusClient, Record, read_topic
from bus.streaming.codec import EventCodec
from tests.conftest import TestBroker

pytestmark = pytest.mark.integration


def publish(settings: Settings, events: list) -> list:
    async def go() -> list:
        async with BusClient(settings) as client:
            return await client.publish_many(events)

    return asyncio.run(go())


def read(
    settings: Settings, name: str, *, until: int | None = None, idle: float | None = None
) -> list[Record]:
    """``until`` records (waited for), or what comes until ``idle`` seconds of quiet, or else
    every record up to the end offsets now: never fewer because a first fetch was slow."""
    if until is None and idle is None:
        how: dict[str, Any] = {"to_end": True}
    else:
        how = {"idle": 90 if idle is None else idle, "until": until}

    async def go() -> list[Record]:
        return [r async for r in read_topic(settings, settings.topic(name), max_seconds=90, **how)]

    return asyncio.run(go())


def read_all_of(
    settings: Settings, name: str, wanted: set[str], seconds: float = 90
) -> list[Record]:
    """The records of ``name`` once every event id in ``wanted`` is among them (copies too)."""
    deadline = time.monotonic() + seconds
    while True:
        records = read(settings, name)
        if wanted <= set(ids(records)) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


class PacedPublisher(threading.Thread):
    """Publishes ``events`` in chunks over ``seconds``, so a worker can be stopped mid-stream."""

    def __init__(self, settings: Settings, events: list, seconds: float, chunks: int = 20) -> None:
        super().__init__(daemon=True)
        self.settings, self.events, self.pause, self.chunks = (
            settings,
            events,
            seconds / chunks,
            chunks,
        )
        self.published = 0

    def run(self) -> None:
        async def go() -> None:
            size = -(-len(self.events) // self.chunks)
            async with BusClient(self.settings) as client:
                for i in range(0, len(self.events), size):
                    await client.publish_many(self.events[i : i + size])
                    self.published = i + size
                    await asyncio.sleep(self.pause)

        asyncio.run(go())


def ids(records: list[Record]) -> list[str]:
    return [r.headers["event_id"] for r in records]


def count_after(settings: Settings, name: str, expected: int, max_seconds: float = 60) -> int:
    """Wait until ``name`` holds ``expected`` records (or time runs out); return the count."""
    deadline = time.monotonic() + max_seconds
    n = 0
    while time.monotonic() < deadline:
        n = len(read(settings, name, idle=0.5, until=expected))
        if n >= expected:
            return n
        time.sleep(0.5)
    return n


def test_good_events_reach_canonical_and_bad_ones_dead_letters(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"max_event_bytes": 4096})
    codec = EventCodec()
    good = penalties(20, seed=11)
    bad_uscc = json.loads(codec.to_json(good[0]))
    bad_uscc.pop("event_id")
    bad_uscc["subject"] = bad_uscc["subject"][:-1] + (
        "1" if bad_uscc["subject"].endswith("0") else "0"
    )
    unauthorised = json.loads(codec.to_json(good[1]))
    unauthorised.pop("event_id")
    unauthorised["source"] = "ks.housingfund"
    unknown_id = b"\x00" + struct.pack(">I", 9999) + b"\x02\x04"
    hostile = {
        b"": "schema.empty",
        b"not json, not avro": "schema.decode",
        unknown_id: "schema.unknown_id",
        codec.encode(good[2])[:40]: "schema.decode",  # truncated Avro
        json.dumps({"event_type": "penalty.imposed", "x": "y" * 5000}).encode(): "size.too_large",
        json.dumps(bad_uscc).encode(): "schema.uscc",
        json.dumps(unauthorised).encode(): "auth.event_type",
        json.dumps(
            {"event_type": "tax.evaded", "source": "ks.amr"}
        ).encode(): "schema.unknown_type",
    }
    with WorkerProcess(s, tmp_path / "worker.log"):
        publish(s, list(hostile))
        publish(s, good)  # after the garbage: the worker must still be working
        canonical = read(s, "events.penalty", until=len(good))
        dead = read(s, "deadletter", until=len(hostile))
    assert sorted(ids(canonical)) == sorted(str(e.event_id) for e in good)
    for r in canonical:
        assert r.key == codec.decode(r.value).subject.encode()
        assert r.headers["event_type"] == "penalty.imposed"
    by_value = {r.value: r.headers for r in dead}
    assert len(dead) == len(hostile)
    for value, reason in hostile.items():
        assert by_value[value]["bus.reason"] == reason, value[:60]
        assert by_value[value]["bus.origin"].startswith(s.topic("ingress") + "/")
    assert by_value[json.dumps(bad_uscc).encode()]["bus.field"] == "subject"


def test_duplicates_are_dead_lettered_not_forwarded(settings: Settings, tmp_path: Path) -> None:
    event, other = penalties(2, seed=12)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [event, event, other, event])  # same batch
        assert len(read(settings, "events.penalty", until=2)) == 2
        publish(settings, [event])  # a later batch: remembered through the seen-store
        dead = read(settings, "deadletter", until=3)
        canonical = read(settings, "events.penalty")
    assert Counter(ids(canonical)) == {str(event.event_id): 1, str(other.event_id): 1}
    assert [r.headers["bus.reason"] for r in dead] == ["duplicate.event_id"] * 3


@pytest.mark.slow("a worker stopped and started again mid-stream")
def test_restart_mid_stream_loses_nothing_and_repeats_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    events = penalties(3000, seed=13)
    publisher = PacedPublisher(settings, events, seconds=8)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publisher.start()
        count_after(settings, "events.penalty", 300)
        stopped_at = publisher.published
        # SIGTERM: finish batch, commit, leave (SIGKILL only after a minute: a busy machine)
        assert worker.stop(60) == 0, worker.log()[-2000:]
        worker.start()
        publisher.join()
        canonical = read(settings, "events.penalty", until=len(events))
    finally:
        worker.stop()
    assert stopped_at < len(events), "publishing finished before the worker was stopped"
    assert Counter(ids(canonical)) == Counter(str(e.event_id) for e in events)
    # Duplicates after a restart would show up here as dead letters (their ids were seen).
    assert read(settings, "deadletter", idle=1) == []


@pytest.mark.slow("a worker killed mid-stream; its successor waits out the session timeout")
def test_worker_killed_mid_stream_loses_nothing(
    settings: Settings, broker: TestBroker, tmp_path: Path
) -> None:
    events = penalties(4000, seed=14)
    publisher = PacedPublisher(settings, events, seconds=8)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publisher.start()
        count_after(settings, "events.penalty", 500)
        worker.kill()  # SIGKILL: no clean shutdown, offsets of the batch in flight uncommitted
        killed_at = publisher.published
        publisher.join()
        broker.forget_dead_members()
        worker.start()
        published = {str(e.event_id) for e in events}
        canonical = read_all_of(settings, "events.penalty", published)  # and re-forwarded copies
        dead = read(settings, "deadletter", idle=1)
    finally:
        worker.stop()
    assert killed_at < len(events), "publishing finished before the worker was killed"
    assert set(ids(canonical)) == published  # nothing lost
    # At-least-once: the batch in flight may be re-read. Its events are recognised as
    # duplicates (dead letters) unless the crash came between the canonical write and the
    # seen-store write of that very batch, which can re-forward at most one batch.
    repeated = len(canonical) - len(published)
    assert 0 <= repeated <= settings.batch_size
    assert all(r.headers["bus.reason"] == "duplicate.event_id" for r in dead)
    assert {r.headers.get("event_id") for r in dead} <= published
