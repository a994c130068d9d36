"""One way to build a Kafka client: every consumer, producer and admin client of the bus comes
from ``bus.streaming.client``'s factory, so a login, TLS or default set there reaches all
of them."""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import SecretStr

from bus.settings import Settings
from bus.streaming.client import kafka_admin, kafka_consumer, kafka_producer

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}


def test_no_kafka_client_is_built_outside_the_factory() -> None:
    found = []
    for path in [*(ROOT / "bus").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]:
        if path == ROOT / "bus" / "streaming" / "client.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in CLIENTS:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


async def test_the_factory_logs_in_and_reads_committed_records_only() -> None:
    s = Settings(broker="kafka://k1:9092;kafka://k2:9092", sasl_username="ks.tax",
                 sasl_password=SecretStr("s3cret"))  # fmt: skip
    consumer = kafka_consumer(s, "bus.inbox.ks.tax", group_id="ks.tax.reader")
    producer = kafka_producer(s, linger_ms=20)
    admin = kafka_admin(s)
    assert consumer._client._sasl_plain_username == "ks.tax"
    assert consumer._client._security_protocol == "SASL_PLAINTEXT"
    assert consumer._isolation_level == "read_committed"
    assert sorted(h[:2] for h in consumer._client.hosts) == [("k1", 9092), ("k2", 9092)]
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    assert producer._message_accumulator._linger_time == 0.02  # an option overrides 5 ms
    assert admin._client._sasl_plain_password == "s3cret"
    await admin.close()
    await consumer.stop()
    await producer.stop()
