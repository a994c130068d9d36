"""A small Kafka client for department systems, scripts and operators.

``BusClient.publish`` puts events on the ingress topic (the bus decides whether they are
accepted); ``read_topic`` reads records back, e.g. dead letters or a canonical topic. Both
speak only the Kafka protocol, so they work against any Kafka-compatible broker.

Example::

    async with BusClient(Settings()) as bus:
        receipt = await bus.edge.publish(event)   # an Envelope, a dict or JSON bytes
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownError, UnsupportedVersionError

from bus.errors import BrokerError
from bus.schemas.envelope import HISTORICAL, Envelope
from bus.settings import Settings
from bus.streaming.codec import EventCodec

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Receipt:
    """Where the broker put a published record."""

    event_id: str | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Record:
    """One record read from a topic, headers decoded to text where they are text."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


def _prepare(
    event: Envelope | dict[str, Any] | bytes, codec: EventCodec
) -> tuple[bytes, Headers, str | None, bytes | None]:
    """Bytes, headers, event id and key (the subject) for one event.

    The key matters: every copy of an event must land on the same ingress partition for
    the bus to recognise duplicates, so JSON (dict or bytes) is keyed by its ``subject``.
    A dict without an ``event_id`` gets one; bytes are sent exactly as given.
    """
    if isinstance(event, Envelope):
        key = event.subject.encode()
        return codec.encode(event), event.kafka_headers(), str(event.event_id), key
    data: bytes | None = None
    if isinstance(event, bytes):
        data = event
        try:
            parsed = json.loads(event)
        except ValueError:
            return event, [], None, None
        if not isinstance(parsed, dict):
            return event, [], None, None
        event = parsed
    else:
        event = {"event_id": str(uuid.uuid4()), **event}
    assert isinstance(event, dict)
    if data is None:
        data = json.dumps(event, ensure_ascii=False, default=str).encode()
    subject = event.get("subject")
    headers = [(k, str(event[k]).encode()) for k in _HEADER_FIELDS if isinstance(event.get(k), str)]
    event_id = event.get("event_id")
    return (
        data,
        headers,
        str(event_id) if event_id is not None else None,
        subject.encode() if isinstance(subject, str) else None,
    )


_HEADER_FIELDS = ("event_type", "event_id", "correlation_id", "source")


def kafka_consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """Every consumer of the bus, built one way: the settings' servers and login, then defaults.

    Defaults: no consumer group, offsets committed by hand, from the earliest record, and
    only committed records (a replay writes in transactions; what an aborted one wrote never
    happened). ``options`` override them.
    """
    return AIOKafkaConsumer(
        *topics,
        **{
            **settings.kafka(),
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
            **options,
        },
    )


#: A transactional producer's wait before a retry. A transaction's first record to a partition
#: often reaches the broker while it still completes the transaction before (the broker says
#: CONCURRENT_TRANSACTIONS, or NOT_ENOUGH_REPLICAS to aiokafka's older protocol versions); the
#: Java producer waits 20 ms for that instead of its usual 100, and so does the bus.
TXN_RETRY_BACKOFF_MS = 20


def kafka_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """Every producer of the bus: acknowledged by every in-sync replica, lingering 5 ms."""
    defaults: dict[str, Any] = {"acks": "all", "linger_ms": 5}
    if options.get("transactional_id"):
        defaults["retry_backoff_ms"] = TXN_RETRY_BACKOFF_MS
    return AIOKafkaProducer(**{**settings.kafka(), **defaults, **options})


NO_TRANSACTIONS = (UnknownError, UnsupportedVersionError)
"""What a broker without transactions answers to InitProducerId (Tansu: UnknownError)."""


def kafka_admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    """Every admin client of the bus."""
    return AIOKafkaAdminClient(**{**settings.kafka(), **options})


async def start_or_close(client: AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient) -> None:
    """Start a Kafka client; if it cannot (no broker), close what ``start()`` opened first.

    Otherwise a failed start leaves its connections open and an "Unclosed" warning on top of
    the error people need to read.
    """
    try:
        await client.start()
    except BaseException:
        if isinstance(client, AIOKafkaAdminClient):
            await client.close()
        else:
            await client.stop()
        raise


async def topic_partitions(
    consumer: AIOKafkaConsumer, topics: Iterable[str]
) -> dict[str, set[int]]:
    """Partition numbers of ``topics`` that exist, from a fresh metadata request.

    A consumer that is not subscribed keeps no metadata for a topic (``partitions_for_topic``
    answers ``None``), so ask the cluster. A topic created a moment ago may be missing for a
    short while: the caller decides whether to wait.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return {t: parts for t in topics if (parts := cluster.partitions_for_topic(t))}


class BusClient:
    """Publish to the ingress topic; an async context manager."""

    def __init__(self, settings: Settings | None = None, codec: EventCodec | None = None) -> None:
        self.settings = settings or Settings()
        self.codec = codec or EventCodec()
        self._producer = kafka_producer(self.settings)

    async def __aenter__(self) -> BusClient:
        await start_or_close(self._producer)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> Receipt:
        """Put bytes on a topic as they are (operator tools: replay, repairs)."""
        md = await (await self._producer.send(topic, value, key=key, headers=headers))
        return Receipt(None, md.topic, md.partition, md.offset)

    async def publish(self, event: Envelope | dict[str, Any] | bytes) -> Receipt:
        """Publish one event to ingress and wait until the broker has it."""
        return (await self.publish_many([event]))[0]

    async def publish_many(
        self, events: Iterable[Envelope | dict[str, Any] | bytes], *, historical: bool = False
    ) -> list[Receipt]:
        """Publish many events, pipelined; receipts in the same order.

        ``historical``: the events record the past (an import of last year's registrations):
        the bus folds them into its records but starts no matter for them.
        """
        topic = self.settings.topic("ingress")
        pending = []
        for event in events:
            value, headers, event_id, key = _prepare(event, self.codec)
            if historical:
                headers = [*headers, (HISTORICAL, b"1")]
            fut = await self._producer.send(topic, value, key=key, headers=headers)
            pending.append((event_id, fut))
        receipts = []
        for event_id, fut in pending:
            md = await fut
            receipts.append(Receipt(event_id, md.topic, md.partition, md.offset))
        return receipts


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.hex()


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    idle: float = 1.0,
    max_seconds: float = 30.0,
    until: int | None = None,
    to_end: bool = False,
) -> AsyncGenerator[Record, None]:
    """Read a topic from the beginning until it has been quiet for ``idle`` seconds.

    Stops early after ``until`` records. Waiting for quiet rather than for the end offsets
    lets a caller collect what a worker is still producing. With ``to_end`` it stops at the
    end offsets the topic had when reading began instead: a snapshot, which a slow first
    fetch cannot cut short (``idle`` is then ignored; ``BrokerError`` after ``max_seconds``).
    Only committed records are read: a replay writes in transactions, and what an aborted
    one wrote never happened.
    """
    consumer = kafka_consumer(settings)
    await start_or_close(consumer)
    try:
        partitions: set[int] | None = None
        for _ in range(50):  # a topic created a moment ago may not be in the metadata yet
            if partitions := (await topic_partitions(consumer, [topic])).get(topic):
                break
            await asyncio.sleep(0.1)
        if not partitions:
            return
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = {tp: n for tp, n in (await consumer.end_offsets(tps)).items() if n} if to_end else {}
        deadline = time.monotonic() + max_seconds
        quiet_since = time.monotonic()
        count = 0
        while time.monotonic() < deadline:
            if to_end and not ends:
                return
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp in [tp for tp, n in ends.items() if await consumer.position(tp) >= n]:
                del ends[tp]
            if not batches:
                if not to_end and time.monotonic() - quiet_since >= idle:
                    return
                continue
            quiet_since = time.monotonic()
            for records in batches.values():
                for r in records:
                    yield Record(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.timestamp,
                        r.key,
                        r.value,
                        {k: _text(v) for k, v in (r.headers or ())},
                    )
                    count += 1
                    if until is not None and count >= until:
                        return
        if to_end:
            raise BrokerError(f"{topic} not read to its end in {max_seconds:.0f} s")
    finally:
        await consumer.stop()
