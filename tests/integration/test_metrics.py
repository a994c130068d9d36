"""A worker's /metrics: what operators graph and alert on, checked against what happened."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.dev.brokers import free_port
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalties, penalty, registered
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import read_topic
from bus.streaming.codec import EventCodec
from tests.integration.test_correlate import publish

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and wanted <= set(pairs))


def on_topic(s: Settings, name: str) -> list[Envelope]:
    """Every event on a topic now, up to its end offsets."""

    async def go() -> list[Envelope]:
        codec = EventCodec()
        return [codec.decode(r.value or b"")
                async for r in read_topic(s, s.topic(name), to_end=True)]  # fmt: skip

    return asyncio.run(go())


def settled(port: int, s: Settings, seconds: float = 60) -> dict[Any, float]:
    """The samples once every count the test checks has got there: the agents work
    asynchronously, and the task gauge follows at the next deadline tick."""
    ingress, penalty_topic = s.topic("ingress"), s.topic("events.penalty")
    least = [
        ("bus_events_in_total", {"agent": "ingest", "topic": ingress}, 24),
        ("bus_deadletters_total", {"agent": "ingest"}, 2),
        ("bus_events_in_total", {"agent": "correlate", "topic": penalty_topic}, 21),
        ("bus_tasks", {"matter": "opening-a-business", "state": "open"}, 4),
        ("bus_handover_events_total", {"result": "taken"}, 22),
        ("bus_delivery_seconds_count", {"agent": "correlate"}, 6),
        ("bus_transaction_seconds_count", {"agent": "cases"}, 1),
    ]
    deadline = time.monotonic() + seconds
    while True:
        samples = scrape(port)
        if all(value(samples, name, **labels) >= n for name, labels, n in least):
            return samples
        if time.monotonic() > deadline:
            return samples  # the assertions say which count fell short
        time.sleep(0.2)


def test_metrics_count_what_the_agents_did(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"metrics_port": free_port(), "task_check_interval": 0.2})
    rng = random.Random(81)
    firm = enterprise(rng)
    good = penalties(20, seed=82)
    old = penalty(firm, rng, decided_on=date(2026, 3, 2))  # decided months before it is sent
    bad = json.loads(EventCodec().to_json(good[0]))
    bad.pop("event_id")
    bad["source"] = "ks.finance"
    with WorkerProcess(s, tmp_path / "worker.log"):
        publish(s, [registered(firm, rng), *good, old])
        publish(s, [json.dumps(bad).encode(), b"not json"])  # type: ignore[list-item]
        samples = settled(s.metrics_port, s)
    opened = [e for e in on_topic(s, "events.task") if e.event_type == "task.created"]
    assert [e.payload.matter for e in opened].count("opening-a-business") == 4
    ingress, penalty_topic = s.topic("ingress"), s.topic("events.penalty")
    assert value(samples, "bus_events_in_total", agent="ingest", topic=ingress) == 24
    assert value(samples, "bus_events_out_total", agent="ingest", topic=penalty_topic) == 21
    assert value(samples, "bus_deadletters_total", agent="ingest", reason="auth.event_type") == 1
    assert value(samples, "bus_deadletters_total", agent="ingest", reason="schema.decode") == 1
    assert value(samples, "bus_events_in_total", agent="correlate", topic=penalty_topic) == 21
    assert value(samples, "bus_tasks", matter="opening-a-business", state="open") == 4
    assert value(samples, "bus_tasks", department="ks.tax", state="open") == 1
    assert (
        value(samples, "bus_events_typed_total", agent="ingest", event_type="penalty.imposed") == 21
    )
    assert value(samples, "bus_batch_seconds_count", agent="ingest") >= 1
    # Exactly once on Kafka: every agent committed transactions, and each committed one has
    # its commit time (a scrape may fall between a commit's count and its time: one apart).
    for agent in ("ingest", "correlate", "cases"):
        committed = value(samples, "bus_transactions_total", agent=agent, outcome="committed")
        timed = value(samples, "bus_transaction_seconds_count", agent=agent)
        assert committed >= 1, agent
        assert abs(committed - timed) <= 1, (agent, committed, timed)
        assert timed - value(samples, "bus_transaction_seconds_bucket", agent=agent, le="10.0") <= 1
    # Correlate took the 22 accepted events as ingest decoded them; it decoded only the bus's
    # own task.created events, which ingest never saw.
    assert value(samples, "bus_handover_events_total", result="taken") == 22
    assert value(samples, "bus_handover_events_total", result="decoded") >= 4
    # Delivery time is the bus's delay, not the event's age: the penalty decided in March
    # (and the registration, and the tasks) reached their inboxes within seconds.
    delivered = value(samples, "bus_delivery_seconds_count", agent="correlate")
    assert delivered >= 6, delivered  # the registration, the old penalty, the 4 tasks
    assert value(samples, "bus_delivery_seconds_bucket", agent="correlate", le="10.0") == delivered
    # Bounded labels: no USCC, event id or person anywhere in the series.
    labels = " ".join(v for _, pairs in samples for _, v in pairs)
    assert firm.uscc not in labels
    assert str(good[0].event_id) not in labels
