"""Kafka principals are departments, on a real Kafka with SASL (SCRAM-SHA-512) and ACLs.

One node started for this module (``KafkaCluster(sasl=True)``: ``User:bus`` is the super
user). The bus's topics are created; two departments and the workers' principal
(``bus-worker``) are made principals by running what ``bus topics acls`` prints, with Kafka's
own tools, and a real ``bus worker`` runs as ``bus-worker``: the ACLs printed for it are all
it needs (the flow's and the case engine's transactions, Faust's topics and groups). Then,
as a department's system would, with a plain Kafka producer: its own ingress takes events in
its own name; another department's ingress and the shared one are refused by
the broker; an event in another's name on its own ingress is a dead letter
(``auth.source_mismatch``) and a replay sends a dead letter back to the ingress it came by;
it reads its own inbox with its own consumer groups only; a wrong password does not log in.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from bus.dev.kafka_local import KafkaCluster
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.departments import Directory
from bus.edge.publish import replay_deadletters
from bus.errors import BrokerError
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.acls import acl_commands, worker_acl_commands
from bus.streaming.client import Record, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.reach import wait_for_broker
from bus.streaming.topics import create_topics, department_ingress_topic, inbox_topic

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow("a Kafka with SASL of its own, started for the module"),
    pytest.mark.skipif(
        not (shutil.which("java") and shutil.which("mvn")), reason="needs java and mvn (Kafka)"
    ),
    pytest.mark.timeout(300),  # the first test also starts the broker, the tools and a worker
]
Z, H = "ks.enforcement.zhoushi", "ks.enforcement.huaqiao"
PASSWORDS = {Z: "zhoushi-pw-1", H: "huaqiao-pw-2"}
WORKER, WORKER_PASSWORD = "bus-worker", "worker-pw-3"
codec = EventCodec()


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One Kafka node whose clients log in, with ACLs and ``bus`` as super user."""
    cluster = KafkaCluster(1, data_dir=tmp_path_factory.mktemp("kafka-sasl"), sasl=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(timeout=10)


@pytest.fixture(scope="module")
def bus_settings(sasl_kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The bus logged in as ``bus``, its topics created, Z and H made principals."""
    run = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(
        broker=sasl_kafka.url, sasl_username="bus", sasl_password=sasl_kafka.bus_password,
        app_id=run, topic_prefix=run, partitions=3, data_dir=tmp_path_factory.mktemp("var"),
        web_port=0, metrics_port=0, batch_wait=0.02,
    )  # fmt: skip
    asyncio.run(create_topics(settings))
    secrets = tmp_path_factory.mktemp("secrets")
    for code, password in {**PASSWORDS, WORKER: WORKER_PASSWORD}.items():
        (secrets / code).write_text(password)
    tools = {"bootstrap": sasl_kafka.bootstrap, "command_config": str(sasl_kafka.admin_config),
             "secrets": str(secrets)}  # fmt: skip
    script = acl_commands(settings, Directory.load(), departments=[Z, H], **tools)
    script += worker_acl_commands(settings, WORKER, **tools)
    ran = subprocess.run(
        ["sh", "-e", "-c", "\n".join(script)], capture_output=True, text=True, timeout=240,
        env={"PATH": f"{sasl_kafka.tools_dir}:/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return settings


@pytest.fixture(scope="module")
def worker(
    bus_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A real ``bus worker`` logged in as the workers' principal, with its ACLs only."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    # Deadline ticks every second: the case engine's batches, transactions and offset commits.
    login = {"sasl_username": WORKER, "sasl_password": WORKER_PASSWORD, "task_check_interval": 1}
    with WorkerProcess(bus_settings.model_copy(update=login), log).start(timeout=120) as w:
        yield w


def as_department(cluster: KafkaCluster, code: str, password: str | None = None) -> dict[str, Any]:
    """aiokafka options of a department's own system."""
    return {
        "bootstrap_servers": cluster.bootstrap,
        **cluster.security(code, PASSWORDS[code] if password is None else password),
    }


def fine(by: str, seed: int) -> Envelope:
    """A ``penalty.imposed`` by department ``by``, on an enterprise of its own."""
    rng = random.Random(seed)
    event = penalty(enterprise(rng), rng)
    payload = event.payload.model_copy(update={"agency": by})
    return event.model_copy(update={"source": by, "payload": payload})


async def produce(options: dict[str, Any], topic: str, event: Envelope) -> None:
    """What a department's system does: the event's Avro, keyed by its subject."""
    producer = AIOKafkaProducer(**options, acks="all", request_timeout_ms=20_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, codec.encode(event), key=event.subject.encode())
    finally:
        await producer.stop()


def wait_records(
    settings: Settings, name: str, done: Callable[[list[Record]], bool], seconds: float = 90
) -> list[Record]:
    """Records of topic ``name`` once ``done(records)`` holds (the worker is asynchronous)."""
    deadline = time.monotonic() + seconds

    async def read() -> list[Record]:
        return [r async for r in read_topic(settings, settings.topic(name), idle=0.5)]

    while True:
        records = asyncio.run(read())
        if done(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def with_id(event: Envelope) -> Callable[[list[Record]], bool]:
    return lambda records: any(r.headers.get("event_id") == str(event.event_id) for r in records)


def test_a_department_publishes_in_its_own_name_on_its_own_ingress(
    sasl_kafka: KafkaCluster, bus_settings: Settings, worker: WorkerProcess
) -> None:
    event = fine(Z, seed=1)
    own = department_ingress_topic(bus_settings, Z)
    asyncio.run(produce(as_department(sasl_kafka, Z), own, event))
    canonical = wait_records(bus_settings, "events.penalty", with_id(event))
    accepted = [r for r in canonical if r.headers.get("event_id") == str(event.event_id)]
    assert len(accepted) == 1, worker.log()[-3000:]
    assert codec.decode(accepted[0].value or b"").source == Z
    assert accepted[0].key == event.subject.encode()


@pytest.mark.parametrize("where", ["another department's ingress", "the shared ingress"])
def test_the_broker_refuses_any_other_ingress(
    sasl_kafka: KafkaCluster, bus_settings: Settings, where: str
) -> None:
    topic = (
        department_ingress_topic(bus_settings, H)
        if where.startswith("another")
        else bus_settings.topic("ingress")
    )
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(produce(as_department(sasl_kafka, Z), topic, fine(Z, seed=2)))


def test_another_departments_name_on_its_own_ingress_is_a_dead_letter(
    sasl_kafka: KafkaCluster, bus_settings: Settings, worker: WorkerProcess
) -> None:
    forged = fine(H, seed=3)  # H's penalty, H's agency: all but the way in says H
    asyncio.run(produce(as_department(sasl_kafka, Z), department_ingress_topic(bus_settings, Z),
                        forged))  # fmt: skip
    sent = codec.encode(forged)  # a dead letter has the original bytes and headers (none here)
    dead = wait_records(bus_settings, "deadletter", lambda rs: any(r.value == sent for r in rs))
    (letter,) = [r for r in dead if r.value == sent]
    assert letter.headers["bus.reason"] == "auth.source_mismatch"
    assert letter.headers["bus.field"] == "source"
    assert f"source {H} on the ingress of {Z}" in letter.headers["bus.error"]
    assert letter.headers["bus.origin"].startswith(department_ingress_topic(bus_settings, Z) + "/")
    canonical = wait_records(bus_settings, "events.penalty", lambda rs: True)
    assert str(forged.event_id) not in {r.headers.get("event_id") for r in canonical}


def test_a_replay_goes_back_to_the_departments_own_ingress(
    sasl_kafka: KafkaCluster, bus_settings: Settings, worker: WorkerProcess
) -> None:
    """Replayed to the shared ingress, an event would shed the binding to its publisher."""
    rng = random.Random(4)
    refused = registered(enterprise(rng), rng).model_copy(update={"source": Z})  # not Z's type
    forged = fine(H, seed=5)
    own = department_ingress_topic(bus_settings, Z)
    for event in (refused, forged):
        asyncio.run(produce(as_department(sasl_kafka, Z), own, event))
    sent = {codec.encode(e) for e in (refused, forged)}
    dead = wait_records(bus_settings, "deadletter",
                        lambda rs: sent <= {r.value for r in rs})  # fmt: skip
    origin = {r.value: r.headers["bus.origin"] for r in dead if r.value in sent}
    report = asyncio.run(replay_deadletters(
        bus_settings, origins={origin[codec.encode(refused)], origin[codec.encode(forged)]}
    ))  # fmt: skip
    assert report.replayed == [origin[codec.encode(refused)]]
    assert "auth.source_mismatch: nothing to replay" in report.skipped.values()
    again = [r for r in wait_records(
        bus_settings, "deadletter",
        lambda rs: sum(r.value == codec.encode(refused) for r in rs) == 2,
    ) if r.value == codec.encode(refused)]  # fmt: skip
    assert [r.headers["bus.reason"] for r in again] == ["auth.event_type"] * 2
    assert all(r.headers["bus.origin"].startswith(own + "/") for r in again), again


def test_a_department_reads_its_own_inbox_with_its_own_groups_only(
    sasl_kafka: KafkaCluster, bus_settings: Settings
) -> None:
    mine, theirs = inbox_topic(bus_settings, Z), inbox_topic(bus_settings, H)

    async def deliver() -> None:  # as the bus does: one record in each inbox
        producer = AIOKafkaProducer(**bus_settings.kafka(), acks="all")
        await producer.start()
        try:
            for topic in (mine, theirs):
                await producer.send_and_wait(topic, f"for {topic}".encode())
        finally:
            await producer.stop()

    async def read(topic: str, group: str, got: list[bytes], seconds: float) -> None:
        """Read from the start, as ``group``, then commit the position in the group."""
        consumer = AIOKafkaConsumer(**as_department(sasl_kafka, Z), group_id=group,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            deadline = time.monotonic() + seconds
            while not got and time.monotonic() < deadline:
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    got += [r.value or b"" for r in records]
            await consumer.commit({tp: len(got)})
        finally:
            await consumer.stop()

    asyncio.run(deliver())
    got: list[bytes] = []
    asyncio.run(read(mine, f"{Z}.case-system", got, seconds=30))
    assert got == [f"for {mine}".encode()]
    got = []
    with pytest.raises(TopicAuthorizationFailedError):  # fetches get nothing, commits refused
        asyncio.run(read(theirs, f"{Z}.case-system", got, seconds=2))
    assert got == []
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(read(mine, f"{H}.case-system", got, seconds=2))


def test_the_worker_runs_under_its_own_acls(
    sasl_kafka: KafkaCluster, bus_settings: Settings, worker: WorkerProcess
) -> None:
    """Its case engine claims its partitions and commits its offsets in transactions."""
    from bench.scaleout import committed

    topic = bus_settings.topic("cases")
    deadline = time.monotonic() + 90
    while len(done := asyncio.run(committed(bus_settings, bus_settings.app_id, topic))) < 3:
        assert time.monotonic() < deadline, (done, worker.log()[-3000:])
        time.sleep(1)
    assert "AuthorizationFailed" not in worker.log()
    assert worker.running


def test_bus_status_and_the_gateway_health_check_log_in(bus_settings: Settings) -> None:
    """Their reachability probe: a SASL listener answers nothing before login."""
    asyncio.run(wait_for_broker(bus_settings.broker, 30, bus_settings.kafka_security()))
    with pytest.raises(BrokerError):
        asyncio.run(wait_for_broker(bus_settings.broker, 1))


@pytest.mark.parametrize("user", [Z, "ks.nobody"])
def test_a_wrong_password_does_not_log_in(sasl_kafka: KafkaCluster, user: str) -> None:
    async def login() -> None:
        host, port = sasl_kafka.address(1).rsplit(":", 1)
        conn = await create_conn(host, int(port), **sasl_kafka.security(user, "not-the-password"))
        conn.close()

    with pytest.raises(SaslAuthenticationFailed):
        asyncio.run(login())
