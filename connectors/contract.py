"""The contract every connector keeps, as reusable test classes: what an integrator runs.

A connector's test file subclasses ``SourceContract`` or ``SinkContract`` (their names do not
start with ``Test``, so pytest collects only the subclasses) and fills in a few hooks; the
contract's tests then run against a real broker::

    # conftest.py
    pytest_plugins = ["connectors.contract"]

    # test_directory_source.py
    from connectors.contract import SourceContract

    class TestDirectorySource(SourceContract):
        def make_connector(self, settings: Settings, **kwargs: Any) -> Source:
            return DirectorySource(settings, folder=self.tmp_path / "inbox", **kwargs)

        async def feed(self, n: int) -> list[str]:
            events = sample_events(n)
            write_jsonl(self.tmp_path / "inbox" / f"{uuid4()}.jsonl", events)
            return [str(e.event_id) for e in events]

As a plugin (``pytest_plugins`` above) this module gives the ``settings`` fixture the contract
needs: the broker ``BUS_TEST_BROKER`` names (``host:port``), or else a one-node Apache Kafka
started from its Maven Central jars (``java`` and ``mvn`` on PATH); every test gets its own
topic prefix with the catalogue's topics created, and deleted after it. Install the SDK with
``pip install "collaboration-bus[contract]"``.

Every hook runs on the test's own instance, after ``self.settings`` (a ``Settings`` with its own
topic prefix, every topic created) and ``self.tmp_path`` are set; ``setup_outside`` and
``teardown_outside`` (both optional, async) wrap each test, for a database table or an HTTP
server. ``make_connector`` must pass ``**kwargs`` (``name``, ``backoff``, ``metrics``) on to the
connector's constructor: the contract uses them for fast retries and to read the metrics.

What a **source** promises (``SourceContract``):

* with N events available in its outside system, running it puts exactly those events on the
  ingress topic, in order per subject (compared by ``event_id``);
* running it again over the same data, or after a crash part-way, puts no event with a new
  ``event_id`` on ingress (stable ids: effectively once);
* ``stop()`` makes ``serve()`` return within ``stop_within`` seconds, busy or idle;
* it declares its ``guarantee``, and its class docstring names it.

Hooks: ``make_connector(settings, **kwargs)``, ``feed(n) -> expected event ids`` (``n`` may be
0: get the outside system ready with nothing in it). A re-run serves for ``rerun_seconds``
(1 s) before it is stopped: configure the source to poll more often than that.

What a **sink** promises (``SinkContract``):

* records on its topic are all given to ``write()``, in offset order;
* a retriable failure of the outside system is retried until it heals: nothing lost, nothing
  out of order;
* once the retry budget is spent the batch goes to the dead-letter topic with ``bus.reason``
  and ``bus.stage = connector.<name>`` headers, and the sink moves on to the next records;
* offsets are committed: a restarted sink does not re-deliver what was written;
* ``stop()`` makes ``serve()`` return promptly; ``guarantee`` is declared and documented.

Hooks: ``make_connector(settings, **kwargs)``, ``received() -> event ids delivered so far, in
delivery order``, ``break_outside()`` / ``heal_outside()`` (make the outside system fail in a
way the connector must treat as retriable, then recover), and optionally ``sink_topic``
(the inbox of ``department`` by default). The contract puts the records on the topic itself
(``put``), Avro-encoded with the bus's headers, as the bus's agents write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.dev.samples import penalties
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import (
    BusClient,
    Record,
    _text,
    kafka_admin,
    kafka_consumer,
    topic_partitions,
)
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics, inbox_topic
from connectors.base import Backoff, Connector, ConnectorMetrics, Guarantee, Sink, Source


@contextlib.contextmanager
def fresh_topics(bootstrap: str, tmp_path: Path, **overrides: Any) -> Iterator[Settings]:
    """Settings for one test: its own app id and topic prefix, topics created, then deleted."""
    run = f"t{uuid.uuid4().hex[:10]}"
    s = Settings(**{
        "broker": bootstrap, "app_id": run, "topic_prefix": run, "partitions": 3,
        "data_dir": tmp_path / "var", "web_port": 0, "metrics_port": 0, "batch_wait": 0.02,
        **overrides,
    })  # fmt: skip
    asyncio.run(create_topics(s))
    try:
        yield s
    finally:
        asyncio.run(drop_topics(s))


async def drop_topics(settings: Settings) -> None:
    """Delete one test's topics, so a session's broker does not carry every test's."""
    admin = kafka_admin(settings)
    try:
        await admin.start()
        ours = (settings.topic_prefix + ".", settings.app_id + "-")  # and Faust's changelogs
        mine = [t for t in await admin.list_topics() if t.startswith(ours)]
        if mine:
            await admin.delete_topics(mine)
    except Exception as exc:  # an embedded broker without DeleteTopics: keep them
        print(f"topics of {settings.topic_prefix} not deleted: {exc!r}")
    finally:
        await admin.close()


def pytest_configure(config: pytest.Config) -> None:
    """As a plugin: declare the contract's marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line("markers", "integration: needs a Kafka broker")


@pytest.fixture(scope="session")
def bus_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``BUS_TEST_BROKER`` (``host:port``), or a one-node Apache Kafka for the session."""
    if address := os.environ.get("BUS_TEST_BROKER", "").strip():
        yield address
        return
    if not (shutil.which("java") and shutil.which("mvn")):
        pytest.fail("the connector contract needs a broker: set BUS_TEST_BROKER=host:port, "
                    "or put java (17+) and maven on PATH for a local Apache Kafka")  # fmt: skip
    from bus.dev.kafka_local import KafkaCluster  # a development tool, only here

    cluster = KafkaCluster(1, data_dir=tmp_path_factory.mktemp("kafka"))
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def settings(bus_broker: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one contract test, on its own topics (see ``fresh_topics``)."""
    with fresh_topics(bus_broker, tmp_path) as s:
        yield s


def sample_events(n: int, *, subjects: int = 3, seed: int | None = None) -> list[Envelope]:
    """``n`` valid ``penalty.imposed`` events over a few enterprises (several per subject).

    A fresh seed each call unless given, so two feeds in one test never share an event id.
    """
    if n == 0:
        return []
    return penalties(n, seed=random.randrange(2**32) if seed is None else seed,
                     enterprises=subjects)  # fmt: skip


def unique(ids: Sequence[str]) -> list[str]:
    """``ids`` without repeats, first occurrence kept: at-least-once seen as once."""
    return list(dict.fromkeys(ids))


class TopicWatcher:
    """Reads a topic from its beginning with one consumer and keeps every record it saw.

    Cheaper and more exact than re-reading the topic in a loop: tests wait on a condition
    over ``records`` rather than sleeping.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.records: list[Record] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicWatcher:
        consumer = kafka_consumer(self.settings, isolation_level="read_uncommitted")
        await consumer.start()
        self._consumer = consumer
        partitions: set[int] | None = None
        for _ in range(50):  # a topic made a moment ago may not be in the metadata yet
            if partitions := (await topic_partitions(consumer, [self.topic])).get(self.topic):
                break
            await asyncio.sleep(0.1)
        assert partitions, f"topic {self.topic} does not exist"
        consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, within: float = 0.1) -> int:
        """Fetch what arrives within ``within`` seconds; how many records that was."""
        assert self._consumer is not None, "use TopicWatcher as an async context manager"
        batches = await self._consumer.getmany(timeout_ms=int(within * 1000), max_records=1000)
        n = 0
        for records in batches.values():
            for r in records:
                self.records.append(
                    Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value,
                           {k: _text(v) for k, v in (r.headers or ())})
                )  # fmt: skip
                n += 1
        return n

    async def wait_for(
        self,
        condition: Callable[[list[Record]], bool],
        timeout: float = 20.0,  # noqa: ASYNC109  (a polling deadline that names what timed out)
        what: str = "",
    ) -> list[Record]:
        """Poll until ``condition(records)`` holds; fail naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not condition(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.topic}: {what or 'condition'} not met after {timeout}s; "
                    f"{len(self.records)} records seen"
                )
            await self.poll()
        return self.records

    async def wait_count(self, n: int, timeout: float = 20.0) -> list[Record]:  # noqa: ASYNC109
        """Wait until at least ``n`` records were seen."""
        return await self.wait_for(lambda rs: len(rs) >= n, timeout, f"{n} records")

    async def settle(self, quiet: float = 0.5) -> list[Record]:
        """Keep reading until nothing new came for ``quiet`` seconds: then nothing is late."""
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet:
            if await self.poll():
                quiet_since = time.monotonic()
        return self.records

    def ids(self) -> list[str]:
        """The ``event_id`` header of every record seen, in the order seen."""
        return [r.headers.get("event_id", "") for r in self.records]


async def wait_until(
    condition: Callable[[], Any],
    timeout: float = 20.0,  # noqa: ASYNC109  (a polling deadline that names what timed out)
    what: str = "",
    every: float = 0.05,
) -> None:
    """Await ``condition()`` (sync or async) until truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met after {timeout}s")
        await asyncio.sleep(every)


def metric(connector: Connector, name: str, **labels: str) -> float:
    """A connector metric's current value (0 when never touched)."""
    value = connector.metrics.registry.get_sample_value(
        name, {"connector": connector.name, **labels}
    )
    return value or 0.0


FAST = Backoff(initial=0.02, maximum=0.1, attempts=3, jitter=0.1)
"""Retries quick enough for tests; the contract passes it (or a variant) to make_connector."""


class _Contract:
    """What both contracts share: per-test state, the outside system's lifecycle, guarantee."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.integration, pytest.mark.asyncio,
    ]  # fmt: skip

    stop_within: ClassVar[float] = 5.0
    """Seconds ``serve()`` may take to return after ``stop()``."""
    timeout: ClassVar[float] = 20.0
    """Seconds to wait for events to show up before a test fails."""

    settings: Settings
    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _contract_state(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path

    def make_connector(self, settings: Settings, **kwargs: Any) -> Connector:
        """The connector under test, talking to the outside system this test set up."""
        raise NotImplementedError

    async def setup_outside(self) -> None:
        """Optional: create the outside system (a table, a server) before each test."""

    async def teardown_outside(self) -> None:
        """Optional: tear it down after each test, pass or fail."""

    @contextlib.asynccontextmanager
    async def outside(self) -> AsyncIterator[None]:
        await self.setup_outside()
        try:
            yield
        finally:
            await self.teardown_outside()

    def connector(self, **kwargs: Any) -> Connector:
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("metrics", ConnectorMetrics())
        return self.make_connector(self.settings, **kwargs)

    async def stop_and_join(self, connector: Connector, task: asyncio.Task[None]) -> float:
        """``stop()``, then wait for ``serve()`` to return; seconds it took (raises its error)."""
        t0 = time.monotonic()
        connector.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.stop_within)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise AssertionError(
                f"serve() did not return within {self.stop_within}s of stop()"
            ) from None
        return time.monotonic() - t0

    async def test_guarantee_is_declared_and_documented(self) -> None:
        async with self.outside():
            cls = type(self.connector())
        assert isinstance(cls.guarantee, Guarantee)
        assert cls.guarantee.value in (cls.__doc__ or ""), (
            f"{cls.__name__}'s docstring should say it is {cls.guarantee.value}"
        )


class SourceContract(_Contract):
    """Tests every ``Source`` passes; see the module docstring for the hooks."""

    n_events: ClassVar[int] = 12
    """Events fed per test: enough for several per subject, few enough to stay fast."""
    rerun_seconds: ClassVar[float] = 1.0
    """How long a re-run serves before it is stopped: longer than the source's poll interval."""

    async def feed(self, n: int) -> list[str]:
        """Make ``n`` new events available in the outside system; their ids, in order."""
        raise NotImplementedError

    def source(self, **kwargs: Any) -> Source:
        connector = self.connector(**kwargs)
        assert isinstance(connector, Source)
        return connector

    async def run_until(
        self, source: Source, ingress: TopicWatcher, expected: Sequence[str], linger: float = 0
    ) -> None:
        """Serve until every expected id is on ingress (or serve returned), then stop.

        ``linger``: serve that much longer first, so a re-run has time to do (wrong) work
        even when everything it should publish is on ingress already.
        """
        task = asyncio.create_task(source.serve())
        want = set(expected)
        try:
            await ingress.wait_for(
                lambda rs: task.done() or want <= {r.headers.get("event_id") for r in rs},
                self.timeout,
                f"{len(want)} events from {source.name}",
            )
            if linger:
                await asyncio.wait({task}, timeout=linger)
        finally:
            await self.stop_and_join(source, task)
        await ingress.wait_for(
            lambda rs: want <= {r.headers.get("event_id") for r in rs}, self.timeout,
            f"{len(want)} events from {source.name}",
        )  # fmt: skip

    def ingress(self) -> TopicWatcher:
        return TopicWatcher(self.settings, self.settings.topic("ingress"))

    async def test_publishes_exactly_the_available_events_in_order_per_subject(self) -> None:
        async with self.outside(), self.ingress() as ingress:
            expected = await self.feed(self.n_events)
            assert len(expected) == self.n_events
            source = self.source()
            await self.run_until(source, ingress, expected)
            await ingress.settle()
            seen = ingress.ids()
            assert sorted(seen) == sorted(expected), "not exactly the events fed, once each"
            by_subject: dict[bytes | None, list[str]] = {}
            for r in ingress.records:
                by_subject.setdefault(r.key, []).append(r.headers["event_id"])
            assert len(by_subject) > 1, "events should be keyed by their subject"
            position = {eid: i for i, eid in enumerate(expected)}
            for subject, ids in by_subject.items():
                assert ids == sorted(ids, key=position.__getitem__), f"out of order for {subject!r}"
            published = metric(source, "bus_connector_deliveries_total", outcome="published")
            assert published == self.n_events

    async def test_a_second_run_over_the_same_data_adds_no_new_event_id(self) -> None:
        async with self.outside(), self.ingress() as ingress:
            expected = await self.feed(self.n_events)
            await self.run_until(self.source(), ingress, expected)
            first = set(ingress.ids())
            await self.run_until(self.source(), ingress, expected, linger=self.rerun_seconds)
            await ingress.settle()
            assert first == set(expected)
            assert set(ingress.ids()) == first, "a second run published new event ids"

    async def test_a_crash_part_way_then_a_rerun_is_effectively_once(self) -> None:
        async with self.outside(), self.ingress() as ingress:
            expected = await self.feed(self.n_events)
            crashing = self.source()
            task = asyncio.create_task(crashing.serve())
            await ingress.wait_for(lambda rs: bool(rs) or task.done(), self.timeout, "an event")
            task.cancel()  # no clean stop: whatever was in hand is abandoned
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.run_until(self.source(), ingress, expected, linger=self.rerun_seconds)
            await ingress.settle()
            assert set(ingress.ids()) == set(expected), "lost or invented events across a crash"

    async def test_stop_returns_promptly_while_busy(self) -> None:
        async with self.outside(), self.ingress() as ingress:
            await self.feed(self.n_events)
            source = self.source()
            task = asyncio.create_task(source.serve())
            await ingress.wait_for(lambda rs: bool(rs) or task.done(), self.timeout, "an event")
            took = await self.stop_and_join(source, task)
            assert took < self.stop_within

    async def test_stop_returns_promptly_when_idle(self) -> None:
        async with self.outside():
            await self.feed(0)
            source = self.source()
            task = asyncio.create_task(source.serve())
            await asyncio.sleep(0.3)  # let it reach its idle wait: that is what stop() must end
            took = await self.stop_and_join(source, task)
            assert took < self.stop_within


class SinkContract(_Contract):
    """Tests every ``Sink`` passes; see the module docstring for the hooks."""

    n_events: ClassVar[int] = 8
    department: ClassVar[str] = "ks.enforcement.huaqiao"
    """Whose inbox the sink reads, unless ``sink_topic`` is overridden."""
    deadletter_reason: ClassVar[str] = "connector.retries_exhausted"
    """``bus.reason`` expected on a dead letter once the budget is spent."""

    async def received(self) -> list[str]:
        """Event ids the outside system has been given so far, in the order it got them."""
        raise NotImplementedError

    async def break_outside(self) -> None:
        """Make the outside system fail in a retriable way (refuse, 503, connection reset)."""
        raise NotImplementedError

    async def heal_outside(self) -> None:
        """Undo ``break_outside``."""
        raise NotImplementedError

    def sink_topic(self, settings: Settings) -> str:
        """The topic the sink reads (the connector must be configured to read this one)."""
        return inbox_topic(settings, self.department)

    def sink(self, **kwargs: Any) -> Sink:
        connector = self.connector(**kwargs)
        assert isinstance(connector, Sink)
        assert connector.topic == self.sink_topic(self.settings), "sink reads another topic"
        return connector

    async def put(self, n: int) -> list[str]:
        """Put ``n`` events on the sink's topic as the bus does; their ids in offset order."""
        events = sample_events(n)
        codec = EventCodec()
        topic = self.sink_topic(self.settings)
        async with BusClient(self.settings, codec) as client:
            for e in events:  # one by one: offset order is the order given
                await client.send_raw(topic, e.subject.encode(), codec.encode(e), e.kafka_headers())
        return [str(e.event_id) for e in events]

    async def until_received(self, n: int, task: asyncio.Task[None] | None = None) -> list[str]:
        got: list[str] = []

        async def enough() -> bool:
            nonlocal got
            if task is not None and task.done():
                task.result()  # a crashed sink: show its error, not a timeout
            got = await self.received()
            return len(unique(got)) >= n

        await wait_until(enough, self.timeout, f"{n} events received")
        return got

    async def test_writes_every_record_in_offset_order(self) -> None:
        async with self.outside():
            expected = await self.put(self.n_events)
            sink = self.sink()
            task = asyncio.create_task(sink.serve())
            try:
                await self.until_received(self.n_events, task)
            finally:
                await self.stop_and_join(sink, task)
            assert await self.received() == expected
            assert metric(sink, "bus_connector_deliveries_total", outcome="delivered") == len(
                expected
            )

    async def test_a_retriable_failure_is_retried_until_it_heals(self) -> None:
        async with self.outside():
            await self.break_outside()
            expected = await self.put(self.n_events)
            sink = self.sink(backoff=Backoff(initial=0.02, maximum=0.1, attempts=None))
            task = asyncio.create_task(sink.serve())
            try:
                await wait_until(
                    lambda: metric(sink, "bus_connector_retries_total") >= 2, self.timeout,
                    "two retries",
                )  # fmt: skip
                assert await self.received() == [], "a broken outside system received events"
                await self.heal_outside()
                await self.until_received(self.n_events, task)
            finally:
                await self.stop_and_join(sink, task)
            assert unique(await self.received()) == expected, "lost or reordered across retries"
            assert metric(sink, "bus_connector_deliveries_total", outcome="deadlettered") == 0

    async def test_after_the_retry_budget_the_batch_is_dead_lettered_and_the_sink_moves_on(
        self,
    ) -> None:
        async with self.outside():
            deadletters = TopicWatcher(self.settings, self.settings.topic("deadletter"))
            async with deadletters:
                await self.break_outside()
                lost = await self.put(self.n_events)
                sink = self.sink(backoff=Backoff(initial=0.01, maximum=0.02, attempts=2))
                task = asyncio.create_task(sink.serve())
                try:
                    await deadletters.wait_count(self.n_events, self.timeout)
                    await self.heal_outside()
                    later = await self.put(3)
                    await self.until_received(3, task)
                finally:
                    await self.stop_and_join(sink, task)
                await deadletters.settle(0.3)
            assert sorted(deadletters.ids()) == sorted(lost)  # keyed by subject: many partitions
            for r in deadletters.records:
                assert r.headers["bus.reason"] == self.deadletter_reason
                assert r.headers["bus.stage"] == f"connector.{sink.name}"
                assert r.headers["bus.origin"].startswith(self.sink_topic(self.settings) + "/")
                assert r.value, "the dead letter keeps the original bytes"
            assert unique(await self.received()) == later, "the sink did not move on"

    async def test_a_restarted_sink_does_not_redeliver_what_it_wrote(self) -> None:
        async with self.outside():
            first = await self.put(self.n_events)
            sink = self.sink()
            task = asyncio.create_task(sink.serve())
            try:
                await self.until_received(len(first), task)
            finally:
                await self.stop_and_join(sink, task)
            second = await self.put(4)
            again = self.sink()  # same name, so same consumer group and committed offsets
            task = asyncio.create_task(again.serve())
            try:
                await self.until_received(len(first) + len(second), task)
                await asyncio.sleep(0.3)  # anything re-delivered would arrive now
            finally:
                await self.stop_and_join(again, task)
            assert await self.received() == first + second

    async def test_stop_returns_promptly_while_idle(self) -> None:
        async with self.outside():
            sink = self.sink()
            task = asyncio.create_task(sink.serve())
            await asyncio.sleep(0.3)
            took = await self.stop_and_join(sink, task)
            assert took < self.stop_within


__all__ = [
    "FAST",
    "SinkContract",
    "SourceContract",
    "TopicWatcher",
    "bus_broker",
    "drop_topics",
    "fresh_topics",
    "metric",
    "sample_events",
    "settings",
    "unique",
    "wait_until",
]
