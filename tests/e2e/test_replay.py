"""Dead letters as operators handle them: listed, replayed after a fix, by real processes.

The ``bus`` command runs as a child process, as in ``test_cli``; workers are real ``bus worker``
processes. Proves: concurrent replays replay each letter once (Kafka transactions; a run
fenced off says so); the listing has one order and filters by time and department; a replay
that fails again is linked to its original letter and not replayed again for the same reason
unless forced.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.agents.out import rejection_headers
from bus.dev.processes import WorkerProcess, settings_env
from bus.dev.samples import penalties
from bus.edge import publish
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import Record, read_topic
from bus.streaming.codec import EventCodec
from tests.conftest import TestBroker

pytestmark = pytest.mark.e2e
codec = EventCodec()
SHIPPED = Path(__file__).resolve().parents[2] / "bus" / "data" / "departments.yaml"


def bus(*args: str, settings: Settings, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250", **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "bus.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def read(settings: Settings, name: str) -> list[Record]:
    """Every committed record on ``<prefix>.<name>`` now: up to the end offsets, so a slow
    first fetch on a busy machine cannot return fewer."""

    async def go() -> list[Record]:
        return [r async for r in read_topic(settings, settings.topic(name), to_end=True)]

    return asyncio.run(go())


def wait_records(settings: Settings, name: str, done: Callable[[list[Record]], bool],
                 seconds: float = 60) -> list[Record]:  # fmt: skip
    """The records of a topic once ``done(records)`` holds (workers are asynchronous)."""
    deadline = time.monotonic() + seconds
    while True:
        records = read(settings, name)
        if done(records):
            return records
        assert time.monotonic() < deadline, f"{name}: condition not met in {seconds} s"
        time.sleep(0.3)


def without(settings: Settings, tmp_path: Path, codes: set[str]) -> Settings:
    """Settings whose directory forgot these departments: their events are dead-lettered."""
    directory = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    directory["departments"] = [d for d in directory["departments"] if d["code"] not in codes]
    path = tmp_path / "forgetful-departments.yaml"
    path.write_text(yaml.safe_dump(directory, allow_unicode=True), encoding="utf-8")
    return settings.model_copy(update={"departments_file": path})


def ids_on_ingress(settings: Settings) -> Counter[str]:
    """How often each event id stands on ingress, committed (what ingest reads)."""
    return Counter(r.headers.get("event_id", "") for r in read(settings, "ingress"))


async def _send(settings: Settings, topic: str, records: list[tuple[Any, ...]]) -> None:
    producer = AIOKafkaProducer(**settings.kafka(), acks="all")
    await producer.start()
    try:
        for partition, key, value, headers in records:
            await producer.send_and_wait(settings.topic(topic), value, key=key,
                                         partition=partition, headers=headers)  # fmt: skip
    finally:
        await producer.stop()


def flush_ingest(settings: Settings) -> None:
    """Wait until ingest has handled everything on ingress now: a bad record behind it on
    every partition, and each one's dead letter."""
    marks = [(p, None, f"{{flush {p}".encode(), []) for p in range(settings.partitions)]
    asyncio.run(_send(settings, "ingress", marks))
    wait_records(settings, "deadletter", lambda rs: sum(
        (r.value or b"").startswith(b"{flush") for r in rs) == settings.partitions)  # fmt: skip


@pytest.mark.slow(
    "three replay processes at once over 74 letters, then every letter's fate read back"
)
def test_concurrent_replays_replay_each_dead_letter_once(
    broker: TestBroker, settings: Settings, tmp_path: Path
) -> None:
    if broker.engine == "tansu":
        pytest.skip("Tansu has no transactions: replays there are one at a time (warned)")
    # Two bureaus the directory of the day forgot: their penalties are dead-lettered.
    gone = {"ks.enforcement.jinxi", "ks.enforcement.bacheng"}
    events = [e for e in penalties(400, seed=93) if e.source in gone]
    broken = without(settings, tmp_path, gone)
    (tmp_path / "e.jsonl").write_text("".join(codec.to_json(e) + "\n" for e in events))
    with WorkerProcess(broken, tmp_path / "worker.log"):
        first = bus("publish", str(tmp_path / "e.jsonl"), settings=broken)
    assert f"{len(events)} published, 0 accepted" in first.stdout, first.stdout[-2000:]
    # The directory is fixed; three operators (or a cron job and two people) replay at once.
    env = {**os.environ, "COLUMNS": "250", **settings_env(settings)}
    runs = [subprocess.Popen([sys.executable, "-m", "bus.cli", "deadletters", "replay",
                              "--reason", "auth."], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)]  # fmt: skip
    outcomes = [(run.wait(120), *run.communicate()) for run in runs]
    replayed = 0
    for code, out, err in outcomes:
        assert "Traceback" not in err, err
        assert code in (0, 3), (code, out, err)
        if code == 3:
            assert "another replay is running" in err, err
        found = re.search(r"(\d+) replayed, (\d+) skipped", out)
        assert found, out
        replayed += int(found[1])
    assert 0 in [code for code, _, _ in outcomes]
    assert replayed == len(events), outcomes
    # On ingress, committed: each event once as published and once replayed, never more.
    on_ingress = ids_on_ingress(settings)
    assert {str(e.event_id): on_ingress[str(e.event_id)] for e in events} == {
        str(e.event_id): 2 for e in events
    }
    assert len({r.key for r in read(settings, "state.replayed")}) == len(events)
    # The worker takes each replayed event once: nothing a fenced run wrote reaches it.
    with WorkerProcess(settings, tmp_path / "worker.log"):
        wait_records(settings, "events.penalty", lambda rs: len(rs) >= len(events))
        flush_ingest(settings)
        canonical = read(settings, "events.penalty")
        dead = read(settings, "deadletter")
    assert sorted(r.headers["event_id"] for r in canonical) == sorted(
        str(e.event_id) for e in events
    )
    assert not [r for r in dead if r.headers.get("bus.reason", "").startswith("duplicate.")]


def _letters(settings: Settings, events: list[Envelope]) -> list[tuple[Any, ...]]:
    """Ingest dead letters of these events, as the ingest agent writes them."""
    out = []
    for i, e in enumerate(events):
        origin = f"{settings.topic('ingress')}/0/{i}"
        headers = rejection_headers(e.kafka_headers(), "auth.unknown_source", "not in the "
                                    "directory", "ingest", origin)  # fmt: skip
        out.append((i % settings.partitions, e.subject.encode(), codec.to_json(e).encode(),
                    headers))  # fmt: skip
    return out


async def test_a_replay_fenced_mid_transaction_replays_nothing_the_next_one_replays_all(
    broker: TestBroker, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if broker.engine == "tansu":
        pytest.skip("Tansu has no transactions")
    events = penalties(6, seed=94)
    await _send(settings, "deadletter", _letters(settings, events))
    # The first run has sent its replays and is about to commit when a second run starts.
    commit = AIOKafkaProducer.commit_transaction
    later: list[publish.ReplayReport] = []

    async def second_run_starts_first(self: AIOKafkaProducer) -> None:
        if not later:
            later.append(publish.ReplayReport([], {}))
            later[0] = await publish.replay_deadletters(settings)
        await commit(self)

    monkeypatch.setattr(AIOKafkaProducer, "commit_transaction", second_run_starts_first)
    first = await publish.replay_deadletters(settings)
    assert first.taken_over
    assert first.replayed == []
    [second] = later
    assert not second.taken_over
    assert sorted(second.replayed) == sorted(f"{settings.topic('ingress')}/0/{i}"
                                             for i in range(len(events)))  # fmt: skip
    # The first run's copies are on ingress, aborted; readers see the second run's only.
    committed = await asyncio.to_thread(ids_on_ingress, settings)
    uncommitted: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(**settings.kafka(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic("ingress"), p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                uncommitted.update(dict(r.headers)["event_id"].decode() for r in records)
    finally:
        await consumer.stop()
    ids = {str(e.event_id) for e in events}
    assert {i: committed[i] for i in ids} == dict.fromkeys(ids, 1)
    assert {i: uncommitted[i] for i in ids} == dict.fromkeys(ids, 2)
    again = await publish.replay_deadletters(settings)
    assert again.replayed == []
    assert set(again.skipped.values()) == {"already replayed"}

    def worker_takes_each_once() -> tuple[list[Record], list[Record]]:
        with WorkerProcess(settings, tmp_path / "worker.log"):
            wait_records(settings, "events.penalty", lambda rs: len(rs) >= len(events))
            flush_ingest(settings)
            return read(settings, "events.penalty"), read(settings, "deadletter")

    canonical, dead = await asyncio.to_thread(worker_takes_each_once)
    assert sorted(r.headers["event_id"] for r in canonical) == sorted(ids)
    assert not [r for r in dead if r.headers.get("bus.reason", "").startswith("duplicate.")]


def test_the_listing_has_one_order_and_filters_by_time_and_department(
    settings: Settings,
) -> None:
    now = datetime.now(UTC)
    ingress = settings.topic("ingress")

    def letter(partition: int, ago: timedelta, source: str, reason: str, error: str,
               offset: int) -> tuple[Any, ...]:  # fmt: skip
        headers = dict(rejection_headers([("source", source.encode())], reason, error, "ingest",
                                         f"{ingress}/0/{offset}"))  # fmt: skip
        headers["bus.rejected_at"] = str(int((now - ago).timestamp() * 1000)).encode()
        return partition, b"k", b"{}", list(headers.items())

    # Written so that partition and write order disagree with dead-letter time.
    asyncio.run(_send(settings, "deadletter", [
        letter(0, timedelta(minutes=10), "ks.tax", "schema.decode", "not JSON", 104),
        letter(0, timedelta(days=3), "ks.enforcement.jinxi", "auth.unknown_source", "who", 101),
        letter(2, timedelta(hours=5), "ks.tax", "schema.validation",
               "payload.amount: one of [1, 2] expected", 102),
        letter(1, timedelta(hours=1), "ks.enforcement.zhoushi", "auth.not_owner", "not", 103),
    ]))  # fmt: skip
    order = [f"{ingress}/0/{n}" for n in (101, 102, 103, 104)]

    def shown(*args: str) -> list[str]:
        result = bus("deadletters", *args, settings=settings)
        assert result.returncode == 0, result.stdout + result.stderr
        found = sorted((result.stdout.find(o), o) for o in order if o in result.stdout)
        return [o for _, o in found]

    listing = bus("deadletters", settings=settings)
    assert listing.returncode == 0, listing.stderr
    assert bus("deadletters", settings=settings).stdout == listing.stdout  # the same each run
    assert shown() == order
    assert "[1, 2]" in listing.stdout  # brackets are text, not markup
    for source in ("ks.tax", "ks.enforcement.jinxi", "ks.enforcement.zhoushi"):
        assert source in listing.stdout
    day = (now - timedelta(days=3)).strftime("%Y-%m-%d")
    assert re.search(rf"{day} \d\d:\d\d:\d\d", listing.stdout), listing.stdout
    assert shown("--limit", "2") == order[2:]  # the newest two, newest last
    assert shown("--since", "1d") == order[1:]
    assert shown("--since", (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")) == order[2:]
    assert shown("--source", "ks.tax") == [order[1], order[3]]
    assert shown("--source", "ks.enforcement", "--limit", "1") == [order[2]]
    assert shown("--reason", "auth.", "--since", "2d") == [order[2]]
    rows = [json.loads(line) for line in
            bus("deadletters", "--json", settings=settings).stdout.splitlines()]  # fmt: skip
    assert [r["origin"] for r in rows] == order
    assert [r["source"] for r in rows][:2] == ["ks.enforcement.jinxi", "ks.tax"]
    assert rows[0]["time"].startswith(day)
    bad = bus("deadletters", "--since", "yesterday", settings=settings)
    assert bad.returncode == 2
    assert "neither a duration" in bad.stderr


@pytest.mark.slow("several replay rounds through a real worker")
def test_a_replay_that_fails_again_is_linked_to_its_letter_and_not_repeated_unforced(
    broker: TestBroker, settings: Settings, tmp_path: Path
) -> None:
    jinxi = next(e for e in penalties(200, seed=95) if e.source == "ks.enforcement.jinxi")
    eid = str(jinxi.event_id)
    broken = without(settings, tmp_path, {"ks.enforcement.jinxi"})
    (tmp_path / "e.jsonl").write_text(codec.to_json(jinxi) + "\n")

    def letters(n: int) -> list[Record]:
        return wait_records(settings, "deadletter", lambda rs: len(rs) >= n)

    with WorkerProcess(broken, tmp_path / "worker.log"):
        assert "auth.unknown_source" in bus("publish", str(tmp_path / "e.jsonl"),
                                            settings=broken).stdout  # fmt: skip
        [first] = letters(1)
        original = first.headers["bus.origin"]
        # "Fixed", says the operator; it is not: the replay is dead-lettered again.
        once = bus("deadletters", "replay", "--reason", "auth.", settings=settings)
        assert "1 replayed" in once.stdout, once.stdout + once.stderr
        # Without transactions (Tansu) it still works, and says what it cannot promise.
        assert ("refused transactions" in once.stderr) == (broker.engine == "tansu"), once.stderr
        second = letters(2)[1]
        assert second.headers["bus.replay_of"] == original
        assert second.headers["bus.replay_first"] == original
        assert second.headers["bus.replay_count"] == "1"
        listing = bus("deadletters", settings=settings)
        assert f"replay 1 of {original}" in listing.stdout, listing.stdout
        assert re.search(rf"{re.escape(original)}\s.*\breplayed\b", listing.stdout)
        # Again, unforced: nothing goes back, and the operator is told why.
        again = bus("deadletters", "replay", "--reason", "auth.", settings=settings)
        assert again.returncode == 0, again.stderr
        assert "0 replayed, 2 skipped" in again.stdout, again.stdout
        assert "failed again with auth.unknown_source" in again.stdout
        assert "--force" in again.stdout
        assert ids_on_ingress(settings)[eid] == 2
        forced = bus("deadletters", "replay", "--reason", "auth.", "--force", settings=settings)
        assert "1 replayed" in forced.stdout, forced.stdout
        third = letters(3)[2]
        assert third.headers["bus.replay_of"] == second.headers["bus.origin"]
        assert third.headers["bus.replay_first"] == original
        assert third.headers["bus.replay_count"] == "2"
        assert f"replay 2 of {original}" in bus("deadletters", settings=settings).stdout
    # Now fixed for real: forced, since the last letter failed like the one before it.
    with WorkerProcess(settings, tmp_path / "worker.log"):
        fixed = bus("deadletters", "replay", "--reason", "auth.", "--force", settings=settings)
        assert "1 replayed" in fixed.stdout, fixed.stdout
        [accepted] = wait_records(settings, "events.penalty", lambda rs: len(rs) >= 1)
    assert accepted.headers["event_id"] == eid
    assert ids_on_ingress(settings)[eid] == 4
