"""Exactly once: a batch's outputs, state and offsets in one Kafka transaction.

Proves, on Apache Kafka with real ``bus worker`` processes: a worker frozen past its session
timeout and woken after its partitions moved (a zombie), and a worker killed with SIGKILL
mid-stream and restarted, leave every published event exactly once on its canonical topic,
read as the bus's consumers read (committed records only), with every certificate, task and
enterprise record as the scenario requires (``bench.scaleout.handover``). The same scenarios
under ``at_least_once`` leave re-delivered copies, which is why the counts are exact here.
Also: a restore reads committed changelog records only; and on a broker without
transactions (Tansu) ``auto`` falls back to at least once with one warning per agent, while
an explicit ``exactly_once`` stops the worker with the reason.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from bench.scaleout import Handover, handover
from bus.agents.stores import SeenStore
from bus.dev.brokers import EmbeddedBroker
from bus.dev.processes import WorkerProcess
from bus.dev.samples import penalties
from bus.errors import BusError
from bus.settings import Settings
from bus.streaming.client import kafka_producer, read_topic
from bus.streaming.topics import INGEST_SEEN, create_topics
from tests.conftest import TestBroker
from tests.integration.test_scaleout import publish

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(broker: TestBroker) -> str:
    """The session's broker, when it has transactions and consumer groups that rebalance."""
    if broker.engine in ("noida", "tansu"):
        pytest.skip("needs Apache Kafka: transactions and rebalances (noida's groups lock)")
    return broker.bootstrap


def run(bootstrap: str, tmp_path: Path, action: str, cycles: int) -> Handover:
    return asyncio.run(
        handover(
            bootstrap, tmp_path, action=action, cycles=cycles, firms=100,
            penalty_count=1600, seconds=8 + 6 * cycles, seed=random.randrange(1 << 16),
            settings={"processing_guarantee": "exactly_once"},
        )
    )  # fmt: skip


def assert_exactly_once(result: Handover, cycles: int) -> None:
    assert result.lost == set(), result.summary()
    assert result.duplicates == 0, result.summary()  # at_least_once: re-delivered copies
    assert result.unhandled == set(), result.summary()
    assert result.missing_certificates == set(), result.summary()
    assert result.doubled_certificates == set(), result.summary()
    assert result.doubled_tasks == set(), result.summary()
    assert result.incomplete_cases == set(), result.summary()
    assert result.bad_records == {}, result.summary()
    assert result.parked == 0, result.summary()
    # Nothing came twice to ingest: a re-delivery would be dead-lettered as a duplicate.
    assert dict(result.deadletters) == {}, result.summary()
    assert len(result.takeover_s) == cycles, result.summary()


@pytest.mark.slow("two worker processes, one frozen past its session timeout under load")
@pytest.mark.timeout(900)
def test_a_woken_zombie_leaves_every_event_exactly_once(kafka: str, tmp_path: Path) -> None:
    """SIGSTOP a worker past its session timeout while events flow; the other takes over and
    its producers fence the frozen one's; SIGCONT: the zombie's batch in hand is refused."""
    assert_exactly_once(run(kafka, tmp_path, "pause", 1), 1)


@pytest.mark.slow("two worker processes, SIGKILLed and restarted under load")
@pytest.mark.timeout(900)
def test_workers_killed_mid_stream_and_restarted_leave_every_event_exactly_once(
    kafka: str, tmp_path: Path
) -> None:
    """kill -9 one worker mid-stream, restart it under load, then kill -9 the other."""
    assert_exactly_once(run(kafka, tmp_path, "kill", 2), 2)


async def test_a_restore_reads_committed_changelog_records_only(
    broker: TestBroker, settings: Settings
) -> None:
    """An aborted transaction's state record is never restored; the committed ones are,
    and the restore ends although the partition ends with a transaction marker."""
    if broker.engine == "tansu":
        pytest.skip("Tansu has no transactions")
    topic = settings.topic(INGEST_SEEN.name)
    kept, aborted = uuid.uuid4().bytes, uuid.uuid4().bytes
    producer = kafka_producer(settings, transactional_id=f"{settings.app_id}.restore-test")
    await producer.start()
    try:
        for value, commit in ((kept, True), (aborted, False)):
            await producer.begin_transaction()
            await (await producer.send(topic, value, partition=0))
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    store = SeenStore(topic)
    restored = await asyncio.wait_for(store.restore(settings, [0]), 30)
    assert restored == 1
    assert store.seen(0, kept)
    assert not store.seen(0, aborted)


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[str]:
    """An embedded Tansu broker: consumer groups, but no transactions (InitProducerId fails)."""
    embedded = EmbeddedBroker("tansu", data_dir=tmp_path / "tansu")
    embedded.start()
    try:
        yield embedded.bootstrap
    finally:
        embedded.stop(timeout=1)


def tansu_settings(bootstrap: str, tmp_path: Path, guarantee: str) -> Settings:
    run = f"t{uuid.uuid4().hex[:10]}"
    return Settings(
        broker=bootstrap, app_id=run, topic_prefix=run, partitions=3,
        data_dir=tmp_path / run, web_port=0, metrics_port=0, batch_wait=0.02,
        processing_guarantee=guarantee,
    )  # fmt: skip


FALLBACK = "the broker refused transactions"


@pytest.mark.slow("an embedded Tansu broker and two worker processes")
@pytest.mark.timeout(240)
def test_without_transactions_auto_runs_at_least_once_and_exactly_once_refuses(
    tansu: str, tmp_path: Path
) -> None:
    """auto: the events flow and each agent says once that it runs at least once; an
    explicit exactly_once stops the worker and names the setting."""
    s = tansu_settings(tansu, tmp_path, "auto")
    asyncio.run(create_topics(s))
    events = penalties(50, seed=71)
    with WorkerProcess(s, tmp_path / "auto.log") as worker:
        asyncio.run(publish(s, events))

        async def canonical() -> set[str]:
            got: set[str] = set()
            reading = read_topic(s, s.topic("events.penalty"), idle=3, max_seconds=90)
            async with aclosing(reading) as records:  # its consumer closed on this loop
                async for r in records:
                    got.add(r.headers.get("event_id", ""))
                    if len(got) >= len(events):
                        break
            return got

        assert asyncio.run(canonical()) == {str(e.event_id) for e in events}
        log = worker.log()
    for agent in ("ingest", "correlate", "cases"):  # each says it once (cases: its decisions)
        assert log.count(f"{agent}: {FALLBACK}") == 1, log[-3000:]
    assert log.count(FALLBACK) == 3, log[-3000:]

    strict = tansu_settings(tansu, tmp_path, "exactly_once")
    asyncio.run(create_topics(strict))
    refused = WorkerProcess(strict, tmp_path / "strict.log")
    try:
        with pytest.raises(BusError, match="exited"):
            refused.start(timeout=90)
    finally:
        refused.stop()
    assert "BUS_PROCESSING_GUARANTEE" in refused.log()
