"""Shared fixtures: a real Kafka-protocol broker for the whole session, fresh topics per test.

By default an embedded noida broker is started on a free loopback port with a fresh data
dir (docs/broker.md says why noida). ``BUS_TEST_BROKER=host:port`` points the suite at any
other Kafka-compatible broker instead (a real Apache Kafka, say); tests that must restart
the broker are then skipped with that reason printed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.brokers import EmbeddedBroker
from bus.settings import Settings
from bus.topics import create_topics


class TestBroker:
    """The broker the tests talk to, and whether the suite may restart it."""

    __test__ = False

    def __init__(self, bootstrap: str, embedded: EmbeddedBroker | None) -> None:
        self.bootstrap = bootstrap
        self.embedded = embedded

    def restart(self) -> None:
        """Restart the embedded broker on the same port and data dir (noida keeps its data).

        noida never evicts a consumer-group member that died without leaving (SIGKILL); a
        restart clears that, so tests that kill a worker call this before starting the next.
        """
        if self.embedded is None:
            pytest.skip("BUS_TEST_BROKER names an external broker; it cannot be restarted here")
        self.embedded.restart()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    """A Kafka-protocol broker for the session."""
    external = os.environ.get("BUS_TEST_BROKER")
    if external:
        yield TestBroker(external.removeprefix("kafka://"), None)
        return
    b = EmbeddedBroker("noida", data_dir=tmp_path_factory.mktemp("noida"))
    b.start()
    try:
        yield TestBroker(b.bootstrap, b)
    finally:
        b.stop()


@pytest.fixture
def settings(broker: TestBroker, tmp_path: Path) -> Settings:
    """Settings for one test: its own app id and topic prefix, topics created, 3 partitions."""
    run = f"t{uuid.uuid4().hex[:10]}"
    s = Settings(
        broker=broker.bootstrap,
        app_id=run,
        topic_prefix=run,
        partitions=3,
        data_dir=tmp_path / "var",
        web_port=0,
        metrics_port=0,
        batch_wait=0.02,
    )
    asyncio.run(create_topics(s))
    return s
