"""Faust's own series on a worker's /metrics: rebalances, commits, events per agent, recovery.

Real processes on real Kafka, scraped over HTTP: a ``bus worker``, and a small Faust app with
one agent and one table (``tests/integration/faust_app.py``) observed by the same
``bus.streaming.faust_metrics.observe`` the worker calls.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from bus.dev.brokers import free_port
from bus.dev.processes import WorkerProcess, terminate
from bus.dev.samples import penalties
from bus.settings import Settings
from bus.streaming.client import kafka_admin, kafka_producer
from tests.integration import faust_app
from tests.integration.test_correlate import publish
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_for(
    port: int, ok: Callable[[Samples], bool], what: str, log: Callable[[], str], timeout: float = 60
) -> Samples:
    """Scrape ``port`` until ``ok`` holds; fail with the last scrape and the process's log."""
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        try:
            samples = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            samples = {}
        if samples and ok(samples):
            return samples
        time.sleep(0.2)
    faust = {k: v for k, v in samples.items() if k[0].startswith("faust_")}
    raise AssertionError(f"not seen in {timeout}s: {what}\n{faust}\n{log()[-3000:]}")


def settled(samples: Samples) -> bool:
    """At least one rebalance, none going on, nothing being recovered."""
    return (
        value(samples, "faust_rebalances_total") >= 1
        and value(samples, "faust_rebalance_in_progress") == 0
        and value(samples, "faust_table_recovery_in_progress") == 0
    )


# --- a real `bus worker`


def test_worker_exports_faust_rebalances_on_its_metrics_port(
    settings: Settings, tmp_path: Path
) -> None:
    """The worker's Faust consumer group: rebalances are counted and timed, and move when a
    second worker joins. (The worker's Faust consumer has no agent stream yet, so commits and
    events per agent are checked on the Faust app below.)"""
    one = settings.model_copy(
        update={"metrics_port": free_port(), "data_dir": settings.data_dir.parent / "w1"}
    )
    two = settings.model_copy(
        update={"metrics_port": free_port(), "data_dir": settings.data_dir.parent / "w2"}
    )
    with WorkerProcess(one, tmp_path / "worker1.log") as first:
        at_start = wait_for(one.metrics_port, settled, "first rebalance done", first.log)
        assert value(at_start, "faust_rebalance_seconds_count") >= 1
        assert value(at_start, "faust_commit_seconds_count") == 0  # the series exists
        # the bus's own series are on the same endpoint, from the same registry
        publish(one, penalties(5, seed=7))
        wait_for(
            one.metrics_port,
            lambda s: value(s, "bus_events_in_total", agent="ingest") == 5,
            "the bus's own series beside Faust's",
            first.log,
        )
        rebalances = value(at_start, "faust_rebalances_total")
        with WorkerProcess(two, tmp_path / "worker2.log") as second:
            after = wait_for(
                one.metrics_port,
                lambda s: value(s, "faust_rebalances_total") > rebalances and settled(s),
                "a rebalance when the second worker joined",
                first.log,
            )
            assert value(after, "faust_rebalance_seconds_count") > value(
                at_start, "faust_rebalance_seconds_count"
            )
            wait_for(two.metrics_port, settled, "second worker's rebalance", second.log)


# --- a Faust app with one agent and one table


class FaustApp:
    """``tests/integration/faust_app.py`` as a process, with its own metrics port."""

    def __init__(self, settings: Settings, app_id: str, topic: str, log_file: Path) -> None:
        self.port = free_port()
        self.log_file = log_file
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FAUST_APP_ID": app_id,
            "FAUST_APP_BROKER": settings.broker,
            "FAUST_APP_TOPIC": topic,
            "FAUST_APP_METRICS_PORT": str(self.port),
            "FAUST_APP_DATADIR": str(log_file.with_suffix(".data")),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    @contextmanager
    def running(self) -> Iterator[FaustApp]:
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.faust_app",
                    "worker",
                    "-l",
                    "info",
                    "--without-web",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            yield self
        finally:
            terminate(self.proc, 30)

    def wait(self, ok: Callable[[Samples], bool], what: str, timeout: float = 60) -> Samples:
        def alive_and_ok(s: Samples) -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log()[-3000:]
            return ok(s)

        return wait_for(self.port, alive_and_ok, what, self.log, timeout)


async def _create_topic(settings: Settings, topic: str) -> None:
    admin = kafka_admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def _send(settings: Settings, topic: str, records: list[tuple[str, str]]) -> None:
    producer = kafka_producer(settings)
    await producer.start()
    try:
        for key, text in records:
            await producer.send(topic, text.encode(), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.slow("two Faust processes in turn, each joining a group and one recovering a table")
def test_events_per_agent_and_table_recovery_after_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    """An agent's events, its table's changelog writes and commits are counted; a restarted
    app rebuilds the table from its changelog, and the recovery series name the table."""
    # Named under the test's prefix, so the changelog topic is deleted with the test's topics.
    app_id = f"{settings.topic_prefix}.faustapp"
    topic = f"{settings.topic_prefix}.words"
    changelog = f"{app_id}-{faust_app.TABLE}-changelog"
    asyncio.run(_create_topic(settings, topic))
    records = [(f"k{i % 6}", f"word {i}") for i in range(30)]

    def seen(name: str, n: float, **labels: str) -> Callable[[Samples], bool]:
        return lambda s: value(s, name, **labels) >= n

    first = FaustApp(settings, app_id, topic, tmp_path / "first.log")
    with first.running():
        started = first.wait(settled, "the first app's rebalance done")
        assert value(started, "faust_table_recovered_records_total", table=faust_app.TABLE) == 0
        asyncio.run(_send(settings, topic, records))
        done = first.wait(
            lambda s: (
                value(s, "faust_event_seconds_count", agent=faust_app.AGENT) == 30
                and value(s, "faust_messages_sent_total", topic=changelog) == 30
                and value(s, "faust_commit_seconds_count") >= 1
            ),
            "30 events through the agent, 30 changelog writes, a commit",
        )
    assert value(done, "faust_events_in_total", agent=faust_app.AGENT, topic=topic) == 30
    assert value(done, "faust_send_errors_total") == 0
    assert value(done, "faust_send_seconds_count") >= 30

    second = FaustApp(settings, app_id, topic, tmp_path / "second.log")
    with second.running():
        recovered = second.wait(
            lambda s: (
                settled(s)
                and value(s, "faust_table_recovered_records_total", table=faust_app.TABLE) > 0
            ),
            "the table recovered from its changelog",
        )
        # every changelog record of every partition, read once; nothing left over
        assert value(recovered, "faust_table_recovered_records_total", table=faust_app.TABLE) == 30
        remaining = ("faust_table_recovery_remaining_offsets", (("table", faust_app.TABLE),))
        assert recovered[remaining] == 0
        assert value(recovered, "faust_table_recovery_last_seconds") > 0
        # the endpoint was up before recovery ended, so a long one can be watched
        log = second.log()
        assert log.index("metrics on http://") < log.index("Recovery complete"), log
        # the offsets the first app committed hold: the second takes only what is new
        asyncio.run(_send(settings, topic, [("k0", "one more")]))
        after = second.wait(seen("faust_event_seconds_count", 1, agent=faust_app.AGENT), "1 event")
        assert value(after, "faust_events_in_total", agent=faust_app.AGENT, topic=topic) == 1
