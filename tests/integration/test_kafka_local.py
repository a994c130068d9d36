"""``bus broker --engine kafka``: Apache Kafka from its jars, as a developer starts it.

Runs the real command; checks that it serves Kafka clients, keeps its log across a restart on
the same data folder, stops on SIGTERM, and says what to install when Java is missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.dev.kafka_local import kafka_jars

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("java"), reason="needs java (Apache Kafka)"),
]
URL = re.compile(r"BUS_BROKER=kafka://(\S+)")


def start(
    data_dir: Path, log: Path, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``bus broker --engine kafka`` on free ports; returns the process and its address."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "broker", "--engine", "kafka", "--port", "0",
             "--data-dir", str(data_dir)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"}, cwd=cwd,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (found := URL.findall(log.read_text())):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc, found[-1]


async def roundtrip(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    """Create ``topic`` if missing, append ``values``, read everything back."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        got: list[bytes] = []
        while len(got) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                got += [r.value or b"" for r in records]
        return got
    finally:
        await consumer.stop()


@pytest.mark.timeout(300)
def test_bus_broker_kafka_serves_keeps_its_log_across_a_restart_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    data, log = tmp_path / "broker", tmp_path / "first.log"
    topic = f"t{uuid.uuid4().hex[:8]}"
    # A data folder relative to where it is typed, as the README's `bus broker` has it.
    proc, bootstrap = start(Path("broker"), log, cwd=tmp_path)
    try:
        assert asyncio.run(roundtrip(bootstrap, topic, [b"a", b"b"])) == [b"a", b"b"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    assert (data / "node-1" / "data" / "meta.properties").exists()
    log = tmp_path / "second.log"
    proc, bootstrap = start(data, log)
    try:  # the same storage, formatted once: the topic and its records are still there
        assert asyncio.run(roundtrip(bootstrap, topic, [b"c"])) == [b"a", b"b", b"c"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()


def test_without_java_the_error_says_what_to_install(tmp_path: Path) -> None:
    kafka_jars()  # the jars are there; only java is missing
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mvn",):  # a PATH with Maven and Python but no java
        (bin_dir / tool).symlink_to(shutil.which(tool) or "/bin/false")
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", "broker", "--engine", "kafka", "--port", "0",
         "--data-dir", str(tmp_path / "broker")],
        env={**os.environ, "PATH": str(bin_dir), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "needs `java`" in result.stderr
    assert "apt-get install openjdk-17-jre-headless" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_three_nodes_need_the_kafka_engine(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bus.cli", "broker", "--engine", "noida", "--nodes", "3",
         "--data-dir", str(tmp_path / "broker")],
        env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--nodes 3 needs the kafka engine" in result.stderr


def test_cluster_ids_never_look_like_an_option() -> None:
    from bus.dev.kafka_local import _cluster_id

    ids = [_cluster_id() for _ in range(5000)]  # about 78 would start with '-' otherwise
    assert all(len(i) == 22 for i in ids)
    assert not [i for i in ids if i.startswith("-")]


@pytest.mark.timeout(300)
def test_a_new_cluster_whose_chosen_port_was_taken_starts_again_on_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a busy machine a port found free can be taken by another process before a node binds
    # it; the node then exits with "Address already in use". Here that port is held on purpose.
    import socket

    from bus.dev import kafka_local
    from bus.dev.brokers import free_port

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    handed = iter([taken])
    monkeypatch.setattr(
        kafka_local, "free_port", lambda host: next(handed, None) or free_port(host)
    )
    said: list[str] = []
    cluster = kafka_local.KafkaCluster(data_dir=tmp_path / "k", say=said.append)
    try:
        cluster.start()
        assert taken not in cluster.ports
        assert any("a port was taken meanwhile" in s for s in said), said
    finally:
        cluster.stop()
        held.close()
