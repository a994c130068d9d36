"""Three Apache Kafka nodes; one is killed under load and comes back: nothing acknowledged is lost.

Topics have three replicas with two in sync, as in production
(bus/streaming/kafka_settings.py), so a write acknowledged by the cluster survives the loss of
any one node. Department systems keep
publishing through the gateway and ``bus publish`` while the node is down; the worker is never
restarted and must carry on through the leader elections, and after the node returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from bus.dev.kafka_local import KafkaCluster
from bus.dev.processes import WorkerProcess, settings_env
from bus.dev.samples import penalties
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e
codec = EventCodec()
VICTIM = 1  # the first bootstrap address too: clients must find the others


@pytest.fixture
def settings(kafka3: KafkaCluster, tmp_path: Path) -> Iterator[Settings]:
    """This module's settings: the three-node cluster, every topic replicated three ways."""
    run = f"f{uuid.uuid4().hex[:10]}"
    s = Settings(
        broker=kafka3.url, app_id=run, topic_prefix=run, partitions=3, replication_factor=3,
        data_dir=tmp_path / "var", web_port=0, metrics_port=0, batch_wait=0.02,
        session_timeout=6, heartbeat_interval=1, rebalance_timeout=10,
    )  # fmt: skip
    asyncio.run(create_topics(s))
    yield s
    if not kafka3.running:  # a failed test must not leave the next one with two nodes
        kafka3.start_node(VICTIM)


def canonical_ids(settings: Settings, want: set[str], seconds: float) -> set[str]:
    """Event ids on the penalty topic, read until ``want`` are all there or time is up."""

    async def collect() -> set[str]:
        found: set[str] = set()
        topic = settings.topic("events.penalty")
        deadline = time.monotonic() + seconds
        while not want <= found and time.monotonic() < deadline:
            async with aclosing(read_topic(settings, topic, idle=1, max_seconds=30)) as records:
                found |= {r.headers.get("event_id", "") async for r in records}
        return found

    return asyncio.run(collect())


def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    """Wait for a condition (never a fixed time): the machine may be busy."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class GatewayLoad(threading.Thread):
    """One event per request, as a small department system sends them, until told to stop."""

    def __init__(self, gateway: Gateway, events: list[Envelope]) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.events = events
        self.acked: set[str] = set()
        self.refused: list[str] = []
        self.done = threading.Event()
        # Set when the test ends: a load left running posts through a closed client.
        self.stopped = threading.Event()

    def run(self) -> None:
        keys = {e.source: self.gateway.key(e.source) for e in self.events}
        for event in self.events:
            if self.stopped.is_set():
                return
            body = json.loads(codec.to_json(event))
            r = self.gateway.http.post("/v1/events", json=body, headers=keys[event.source])
            if r.status_code == 202:
                self.acked.add(str(event.event_id))
            else:
                self.refused.append(f"{r.status_code} {r.text[:200]}")
            time.sleep(0.02)  # about 40 a second: it lasts through the whole scenario
        self.done.set()


def bus_publish(settings: Settings, events: list[Envelope], folder: Path) -> tuple[int, str]:
    """``bus publish`` of a JSON-lines file, waiting for the worker's verdicts."""
    path = folder / f"batch-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(codec.to_json(e) + "\n" for e in events))
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", "publish", str(path), "--wait", "90"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return result.returncode, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.slow(
    "three Kafka nodes, one killed and restarted under load, and the leaders' elections waited for"
)
@pytest.mark.timeout(600)
def test_a_node_killed_under_load_loses_nothing_acknowledged_and_the_bus_carries_on(
    kafka3: KafkaCluster, settings: Settings, gateway: Gateway, tmp_path: Path
) -> None:
    events = penalties(1000, seed=61)
    by_gateway, by_cli = events[:600], events[600:]
    chunks = [by_cli[i : i + 100] for i in range(0, len(by_cli), 100)]
    cli_results: list[tuple[int, str]] = []
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        pid = worker.proc.pid if worker.proc else None
        load = GatewayLoad(gateway, by_gateway)
        load.start()
        try:
            # The first acknowledgements wait for three cold brokers' replicas: on a machine busy
            # with other tests that took more than a minute (2026-12-06); then about 40 a second.
            wait_until(lambda: len(load.acked) >= 100, 240)
            cli_results.append(bus_publish(settings, chunks[0], tmp_path))
            kafka3.kill(VICTIM)  # SIGKILL, mid-stream: partitions it led elect new leaders
            down_at = len(load.acked)
            cli_results += [bus_publish(settings, c, tmp_path) for c in chunks[1:3]]
            wait_until(lambda: len(load.acked) >= down_at + 50 or load.done.is_set(), 120)
            acked_while_down = len(load.acked) - down_at
            kafka3.start_node(VICTIM)
            cli_results += [bus_publish(settings, c, tmp_path) for c in chunks[3:]]
            load.join(240)
            assert load.done.is_set(), "the gateway load did not finish"
            # After the node is back, the same worker still accepts what comes in.
            later = penalties(20, seed=62)
            cli_results.append(bus_publish(settings, later, tmp_path))
            published = {str(e.event_id) for e in [*by_gateway, *by_cli, *later]}
            on_topic = canonical_ids(settings, published, 120)
            assert worker.running, "the worker died"
            assert worker.proc is not None
            assert worker.proc.pid == pid, "the worker was restarted"
        finally:
            load.stopped.set()
    assert load.refused == [], load.refused[:3]
    assert all(code == 0 for code, _ in cli_results), [out for code, out in cli_results if code]
    assert acked_while_down > 0, "nothing was published through the gateway while a node was down"
    assert published <= on_topic, f"{len(published - on_topic)} acknowledged events lost"
