"""Shared fixtures: a real broker for the whole session, fresh topics per test.

``BUS_TEST_BROKER`` chooses it: ``kafka`` (Apache Kafka from Maven Central, one KRaft node;
the default where ``java`` and ``mvn`` are on PATH), ``noida`` or ``tansu`` (embedded brokers
from PyPI, the default without Java: noida), or ``host:port`` of a broker already running.
Whatever an embedded broker needs bent (docs/broker.md) is bent here, never in the product.
Tests that need three nodes take ``kafka3``, a cluster started the first time one asks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.dev.kafka_local import LOCAL_ENGINES, KafkaCluster, LocalBroker, local_broker
from bus.settings import Settings
from connectors.contract import fresh_topics

pytest_plugins = ["tests.postgres", "tests.fuzzstats"]


def chosen_engine() -> str:
    """The engine ``BUS_TEST_BROKER`` names, or the default for this machine."""
    chosen = os.environ.get("BUS_TEST_BROKER", "").strip()
    if chosen:
        return chosen if chosen in LOCAL_ENGINES else "external"
    return "kafka" if shutil.which("java") and shutil.which("mvn") else "noida"


class TestBroker:
    """The broker the tests talk to, and what a test may do to it."""

    __test__ = False

    def __init__(self, url: str, engine: str, local: LocalBroker | None) -> None:
        self.bootstrap = url
        self.engine = engine
        self.local = local

    @property
    def groups_rebalance(self) -> bool:
        """Whether a consumer group hands a dead or departed member's partitions on.

        noida never evicts a member that died without leaving, and locks the group instead.
        """
        return self.engine != "noida"

    def forget_dead_members(self) -> None:
        """After a worker was killed: make sure the next one gets the partitions.

        Kafka evicts the dead member after the session timeout; noida only forgets it when it
        restarts, which it survives with its data.
        """
        if self.engine == "noida":
            self.restart()

    def restart(self) -> None:
        """Restart the session's broker on the same ports and data."""
        if self.local is None:
            pytest.skip("BUS_TEST_BROKER names an external broker; it cannot be restarted here")
        self.local.restart()


#: Seconds a test that starts processes (``integration``, ``e2e``) or is ``slow`` may take unless
#: it names its own timeout. On two cores shared with other work, tests with a worker and a few
#: CLI runs took 120 s, the default, and slow ones 200 s: only a hang should reach these.
PROCESS_TIMEOUT = 300
SLOW_TIMEOUT = 600


#: Files whose tests run two or more bus workers through kills, freezes and rebalances. Under
#: ``pytest -n 3 --dist loadfile`` they are one unit and so run one after another in one
#: process: two such rounds side by side on two cores starved each other. Most other tests
#: wait on Kafka, so two more processes run them meanwhile (12.6 minutes idle, against 16
#: with ``-n 2``).
HANDOVER_FILES = frozenset({"test_scaleout.py", "test_exactly_once.py", "test_case_engine.py"})


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile``, with :data:`HANDOVER_FILES` counted as one file.

    (xdist's own ``loadgroup`` marks do not take effect with pytest 9.2.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HandoversTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "handovers" if Path(path).name in HANDOVER_FILES else path

    return HandoversTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A slow test says why it is slow: ``@pytest.mark.slow("three Kafka nodes, one killed")``.

    Slow tests and tests that start processes get ``SLOW_TIMEOUT`` and ``PROCESS_TIMEOUT``
    instead of the default timeout unless they set their own. :data:`HANDOVER_FILES` come
    first, so that under xdist their long serial run starts at once beside everything else.
    """
    items.sort(key=lambda item: item.path.name not in HANDOVER_FILES)
    for item in items:
        for mark in item.iter_markers("slow"):
            if not (mark.args and isinstance(mark.args[0], str) and mark.args[0].strip()):
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.slow needs the reason")
        if item.get_closest_marker("timeout"):
            continue
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
        elif item.get_closest_marker("e2e") or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.timeout(PROCESS_TIMEOUT))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    """The broker for the session (see the module docstring)."""
    engine = chosen_engine()
    if engine == "external":
        yield TestBroker(os.environ["BUS_TEST_BROKER"], engine, None)
        return
    data_dir = tmp_path_factory.mktemp(engine)
    # A test's topics are deleted after it, but a session still makes thousands of partitions
    # over its life: more heap than a demo's broker needs.
    b = (
        KafkaCluster(1, data_dir=data_dir, heap="1g")
        if engine == "kafka"
        else local_broker(engine, data_dir=data_dir)
    )
    b.start()
    try:
        yield TestBroker(b.url, engine, b)
    finally:
        b.stop()


@pytest.fixture(scope="session")
def kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A three-node Apache Kafka cluster (replication 3, two in sync), for fail-over tests."""
    if not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("three-node tests need Apache Kafka: install java (17+) and maven")
    cluster = KafkaCluster(3, data_dir=tmp_path_factory.mktemp("kafka3"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout=10)


@pytest.fixture
def settings(broker: TestBroker, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one test: its own app id and topic prefix, topics created, 3 partitions."""
    with fresh_topics(broker.bootstrap, tmp_path) as s:
        yield s
