"""The connector SDK's base classes (``connectors/base.py``), against the real broker.

Back-off arithmetic and retry decisions are checked directly; ``Source`` and ``Sink`` are
checked through two minimal connectors whose outside system is a Python list, which also
run the whole contract suite: if the base classes break a promise, every connector would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from bus.errors import BrokerError, ConnectorError, ValidationFailed
from bus.settings import Settings
from bus.streaming.client import BusClient, kafka_admin, kafka_consumer, topic_partitions
from bus.streaming.topics import inbox_topic
from connectors.base import (
    Backoff,
    ConnectorMetrics,
    Guarantee,
    Sink,
    SinkRecord,
    Source,
    is_retriable,
)
from connectors.contract import (
    SinkContract,
    SourceContract,
    TopicWatcher,
    metric,
    sample_events,
    wait_until,
)

# --- minimal connectors over a list -------------------------------------------------------


class ListSource(Source):
    """Publishes the rows of a shared list, remembering how far it got (effectively-once).

    ``sent`` is the outside system's "already sent" mark, moved only after ``produce``
    returned: a crash in between re-sends rows with the same ids, which the bus ignores.
    """

    guarantee = Guarantee.EFFECTIVELY_ONCE
    kind = "list-source"

    def __init__(self, settings: Settings, rows: list[Any], state: dict[str, int],
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(settings, **kwargs)
        self.rows = rows
        self.state = state

    async def run(self) -> None:
        while not self.stopping:
            sent = self.state.get("sent", 0)
            batch = self.rows[sent : sent + 5]
            if not batch:
                await self.sleep(0.05)
                continue
            await self.produce(batch)
            self.state["sent"] = sent + len(batch)


class ListSink(Sink):
    """Appends each batch's event ids to a list; fails while ``broken`` (at-least-once)."""

    guarantee = Guarantee.AT_LEAST_ONCE
    kind = "list-sink"

    def __init__(self, settings: Settings, topic: str, outside: dict[str, Any],
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(settings, topic, batch_wait=0.05, **kwargs)
        self.outside = outside

    async def write(self, batch: list[SinkRecord]) -> None:
        self.outside["batches"].append(batch)
        if self.outside["broken"]:
            raise self.outside["broken"]
        self.outside["got"].extend(r.event_id for r in batch)


class TestListSource(SourceContract):
    rows: list[Any]
    state: dict[str, int]

    async def setup_outside(self) -> None:
        self.rows, self.state = [], {}

    def make_connector(self, settings: Settings, **kwargs: Any) -> Source:
        return ListSource(settings, self.rows, self.state, **kwargs)

    async def feed(self, n: int) -> list[str]:
        events = sample_events(n)
        self.rows.extend(events)
        return [str(e.event_id) for e in events]


class TestListSink(SinkContract):
    outside_state: dict[str, Any]

    async def setup_outside(self) -> None:
        self.outside_state = {"got": [], "broken": None, "batches": []}

    def make_connector(self, settings: Settings, **kwargs: Any) -> Sink:
        return ListSink(settings, self.sink_topic(settings), self.outside_state, **kwargs)

    async def received(self) -> list[str]:
        return list(self.outside_state["got"])

    async def break_outside(self) -> None:
        self.outside_state["broken"] = ConnectorError("endpoint said 503", retriable=True)

    async def heal_outside(self) -> None:
        self.outside_state["broken"] = None


# --- Backoff -------------------------------------------------------------------------------


def test_delays_grow_by_the_multiplier_up_to_the_cap_within_the_budget() -> None:
    b = Backoff(initial=0.5, maximum=3.0, multiplier=2.0, attempts=6, jitter=0.0)
    assert list(b.delays()) == [0.5, 1.0, 2.0, 3.0, 3.0]  # 6 tries: 5 pauses between them


def test_one_attempt_means_no_retry_and_none_means_forever() -> None:
    assert list(Backoff(attempts=1).delays()) == []
    forever = Backoff(initial=1.0, maximum=4.0, attempts=None, jitter=0.0).delays()
    assert list(itertools.islice(forever, 1000))[-3:] == [4.0, 4.0, 4.0]


def test_jitter_scatters_each_delay_within_its_fraction() -> None:
    b = Backoff(initial=1.0, maximum=1.0, attempts=None, jitter=0.25)
    sample = list(itertools.islice(b.delays(), 2000))
    assert all(0.75 <= d <= 1.25 for d in sample)
    assert max(sample) - min(sample) > 0.4, "jitter should actually scatter the delays"
    assert min(Backoff(initial=1.0, jitter=2.0, attempts=200).delays()) >= 0.0


async def test_run_retries_retriable_errors_until_success() -> None:
    calls: list[float] = []
    retries: list[tuple[int, str, float]] = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "done"

    b = Backoff(initial=0.01, maximum=0.05, attempts=5, jitter=0.0)
    result = await b.run(flaky, on_retry=lambda n, exc, d: retries.append((n, str(exc), d)))
    assert result == "done"
    assert len(calls) == 3
    assert retries == [(1, "reset by peer", 0.01), (2, "reset by peer", 0.02)]
    assert calls[2] - calls[0] >= 0.03 - 0.005  # it did wait between tries


async def test_run_raises_a_non_retriable_error_at_once() -> None:
    calls = 0

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise ValidationFailed("subject is not a USCC", field="subject")

    with pytest.raises(ValidationFailed):
        await Backoff(initial=0.01, attempts=5).run(wrong)
    assert calls == 1


async def test_run_gives_up_after_the_budget_with_retries_exhausted() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectorError(f"503 on try {calls}", retriable=True)

    with pytest.raises(ConnectorError) as info:
        await Backoff(initial=0.001, attempts=4).run(down)
    assert calls == 4
    assert info.value.reason == "connector.retries_exhausted"
    assert "503 on try 4" in info.value.message
    assert isinstance(info.value.__cause__, ConnectorError)


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (OSError("refused"), True),
        (TimeoutError(), True),
        (BrokerError("down"), True),
        (ConnectorError("503", retriable=True), True),
        (ConnectorError("400"), False),
        (ValidationFailed("bad"), False),
        (KafkaConnectionError(), True),
        (UnknownTopicOrPartitionError(), True),
        (ValueError("bug"), False),
    ],
)
def test_is_retriable(exc: BaseException, retriable: bool) -> None:
    assert is_retriable(exc) is retriable


# --- Connector lifecycle ---------------------------------------------------------------------


async def test_sleep_wakes_early_on_stop(settings: Settings) -> None:
    source = ListSource(settings, [], {})
    asyncio.get_running_loop().call_later(0.05, source.stop)
    t0 = time.monotonic()
    assert await source.sleep(10) is True
    assert time.monotonic() - t0 < 1.0
    assert source.stopping


async def test_produce_before_start_is_a_state_error(settings: Settings) -> None:
    with pytest.raises(ConnectorError) as info:
        await ListSource(settings, [], {}).produce(sample_events(1))
    assert info.value.reason == "connector.state"


# --- Source --------------------------------------------------------------------------------


async def test_produce_puts_events_on_ingress_and_counts_them(settings: Settings) -> None:
    events = sample_events(7)
    source = ListSource(settings, [], {}, name="counted")
    async with TopicWatcher(settings, settings.topic("ingress")) as ingress:
        async with source:
            receipts = await source.produce(events)
            assert await source.produce([]) == []
        await ingress.wait_count(7)
        await ingress.settle(0.3)
    assert [r.event_id for r in receipts] == [str(e.event_id) for e in events]
    assert all(r.topic == settings.topic("ingress") for r in receipts)
    assert sorted(ingress.ids()) == sorted(str(e.event_id) for e in events)
    assert {r.key for r in ingress.records} == {e.subject.encode() for e in events}
    assert metric(source, "bus_connector_deliveries_total", outcome="published") == 7
    assert source.metrics.registry.get_sample_value(
        "bus_connector_batch_seconds_count", {"connector": "counted"}
    ) == 1  # fmt: skip


# --- Sink ----------------------------------------------------------------------------------


async def put(settings: Settings, topic: str, n: int) -> list[str]:
    events = sample_events(n)
    async with BusClient(settings) as client:
        for e in events:
            await client.send_raw(
                topic, e.subject.encode(), client.codec.encode(e), e.kafka_headers()
            )
    return [str(e.event_id) for e in events]


async def test_a_non_retriable_failure_is_dead_lettered_at_once_with_its_reason(
    settings: Settings,
) -> None:
    topic = inbox_topic(settings, "ks.amr")
    refusal = ConnectorError("400 bad request", reason="webhook.4xx")
    outside: dict[str, Any] = {"got": [], "batches": [], "broken": refusal}
    ids = await put(settings, topic, 3)
    sink = ListSink(settings, topic, outside, name="amr-hook", backoff=Backoff(initial=0.01))
    async with TopicWatcher(settings, settings.topic("deadletter")) as dl:
        task = asyncio.create_task(sink.serve())
        try:
            await dl.wait_count(3)
        finally:
            sink.stop()
            await asyncio.wait_for(task, 5)
    assert len(outside["batches"]) == 1, "a non-retriable error must not be retried"
    assert sorted(dl.ids()) == sorted(ids)
    assert {r.headers["bus.reason"] for r in dl.records} == {"webhook.4xx"}
    assert {r.headers["bus.stage"] for r in dl.records} == {"connector.amr-hook"}
    assert "400 bad request" in dl.records[0].headers["bus.error"]
    assert metric(sink, "bus_connector_failures_total", reason="webhook.4xx") == 1
    assert metric(sink, "bus_connector_deliveries_total", outcome="deadlettered") == 3
    assert sink.delivered == 0


async def test_without_dead_letters_a_failure_stops_the_sink_and_is_re_read(
    settings: Settings,
) -> None:
    class StrictSink(ListSink):
        deadletter_on_failure = False

    topic = inbox_topic(settings, "ks.tax")
    outside: dict[str, Any] = {"got": [], "batches": [], "broken": ConnectorError("disk full")}
    ids = await put(settings, topic, 4)
    sink = StrictSink(settings, topic, outside, name="strict")
    with pytest.raises(ConnectorError, match="disk full"):
        await asyncio.wait_for(sink.serve(), 20)
    outside["broken"] = None
    again = StrictSink(settings, topic, outside, name="strict")
    task = asyncio.create_task(again.serve())
    try:
        await wait_until(lambda: len(outside["got"]) >= 4, 20, "re-read after restart")
    finally:
        again.stop()
        await asyncio.wait_for(task, 5)
    assert outside["got"] == ids, "the failed batch's offsets must not have been committed"


async def test_a_record_that_does_not_decode_still_reaches_write_with_its_error(
    settings: Settings,
) -> None:
    topic = inbox_topic(settings, "ks.credit")
    async with BusClient(settings) as client:
        await client.send_raw(topic, b"k", b"not avro at all", [("event_id", b"raw-1")])
    outside: dict[str, Any] = {"got": [], "batches": [], "broken": None}
    sink = ListSink(settings, topic, outside, name="raw")
    task = asyncio.create_task(sink.serve())
    try:
        await wait_until(lambda: outside["got"], 20, "the raw record")
    finally:
        sink.stop()
        await asyncio.wait_for(task, 5)
    (record,) = outside["batches"][0]
    assert record.event is None
    assert record.error is not None
    assert record.error.startswith("schema.")
    assert record.event_id == "raw-1"
    assert record.value == b"not avro at all"


class HeldSink(ListSink):
    """Its first ``write`` waits until the test lets it go: an endpoint that takes its time."""

    def __init__(self, *args: Any, poll_interval: float = 1.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_every = 0.2
        self.poll_interval = poll_interval
        self.go = asyncio.Event()
        self.held_since: float | None = None

    def consumer_options(self) -> dict[str, Any]:
        # The range assignor orders members by id, which starts with the client id: last in
        # that order, this sink gives partition 0 (the held batch's) away in a rebalance.
        return {"max_poll_interval_ms": int(self.poll_interval * 1000), "client_id": "zz-held"}

    async def write(self, batch: list[SinkRecord]) -> None:
        if not self.go.is_set():
            self.held_since = time.monotonic()
            await self.go.wait()
        await super().write(batch)


async def members(settings: Settings, group: str) -> tuple[str, int]:
    """A consumer group's state and member count, as the broker sees it."""
    admin = kafka_admin(settings)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
        (g,) = response.groups
        return g[2], len(g[5])
    finally:
        await admin.close()


async def all_committed(settings: Settings, group: str, topic: str) -> bool:
    """Whether ``group`` committed every partition of ``topic`` up to its end."""
    admin = kafka_admin(settings)
    consumer = kafka_consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        partitions = (await topic_partitions(consumer, [topic])).get(topic) or ()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return bool(tps) and all(
            tp in committed and committed[tp].offset >= end for tp, end in ends.items()
        )
    finally:
        await consumer.stop()
        await admin.close()


async def test_a_write_longer_than_the_poll_interval_keeps_the_sink_in_its_group(
    settings: Settings,
) -> None:
    """A slow endpoint (a long Retry-After) must not have the sink evicted and redeliver."""
    topic = inbox_topic(settings, "ks.amr")
    ids = await put(settings, topic, 6)
    outside: dict[str, Any] = {"got": [], "batches": [], "broken": None}
    sink = HeldSink(settings, topic, outside, name="slow")
    task = asyncio.create_task(sink.serve())
    try:
        await wait_until(lambda: sink.held_since is not None or task.done(), 20, "a held write")
        held_since = sink.held_since
        assert held_since is not None
        # Held for three poll intervals: an unpolled consumer leaves its group after one.
        await wait_until(
            lambda: time.monotonic() - held_since > 3 * sink.poll_interval, 20, "three intervals"
        )
        assert await members(settings, sink.group) == ("Stable", 1), "the sink left its group"
        sink.go.set()
        await wait_until(lambda: len(outside["got"]) >= 6 or task.done(), 20, "every record")
    finally:
        sink.stop()
        await asyncio.wait_for(task, 10)
    assert metric(sink, "bus_connector_failures_total", reason="connector.commit_refused") == 0
    again = ListSink(settings, topic, outside, name="slow")
    task = asyncio.create_task(again.serve())
    try:
        more = await put(settings, topic, 2)
        await wait_until(lambda: len(outside["got"]) >= 8, 20, "the two after a restart")
    finally:
        again.stop()
        await asyncio.wait_for(task, 10)
    assert sorted(outside["got"]) == sorted(ids + more), "lost or delivered twice"


async def test_a_rebalance_during_a_write_finishes_and_commits_it_before_handing_over(
    settings: Settings,
) -> None:
    """The group waits for the batch in hand; then its offset is committed, not written twice.

    An inbox has one partition; the second sink takes it over (see ``HeldSink``).
    """
    topic = inbox_topic(settings, "ks.tax")
    ids = await put(settings, topic, 9)
    outside: dict[str, Any] = {"got": [], "batches": [], "broken": None}
    first = HeldSink(settings, topic, outside, name="pair", poll_interval=60)
    first_task = asyncio.create_task(first.serve())
    second = ListSink(settings, topic, outside, name="pair")
    second_task: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: first.held_since is not None or first_task.done(), 20, "held")
        second_task = asyncio.create_task(second.serve())

        async def rebalancing() -> bool:
            return (await members(settings, first.group))[0] in ("PreparingRebalance",
                                                                "CompletingRebalance")  # fmt: skip

        await wait_until(rebalancing, 20, "a rebalance for the second sink", every=0.1)
        # The hand-over waits for the write (up to the session timeout, 10 s): without that
        # wait the group settles in well under a second and the batch is written twice.
        waited = time.monotonic()
        while time.monotonic() - waited < 3:
            assert (await members(settings, first.group))[0] != "Stable", "handed over mid-write"
            await asyncio.sleep(0.2)
        first.go.set()
        await wait_until(lambda: len(set(outside["got"])) >= 9, 30, "every record")
        # A batch handed over uncommitted is written again before the group's offsets reach
        # the end: wait for that, then count.
        await wait_until(lambda: all_committed(settings, first.group, topic), 30, "commits")

        async def both_in() -> bool:
            return await members(settings, first.group) == ("Stable", 2)

        await wait_until(both_in, 30, "both sinks in a stable group", every=0.2)
        await wait_until(lambda: all_committed(settings, first.group, topic), 30, "commits")
    finally:
        first.stop()
        second.stop()
        await asyncio.wait_for(first_task, 10)
        if second_task is not None:
            await asyncio.wait_for(second_task, 10)
    assert sorted(outside["got"]) == sorted(ids), "a batch was delivered twice across the hand-over"
    assert metric(first, "bus_connector_failures_total", reason="connector.commit_refused") == 0


def test_metrics_are_named_bus_connector_and_kept_per_registry() -> None:
    a, b = ConnectorMetrics(), ConnectorMetrics()
    a.deliveries.labels("x", "published").inc(3)
    a.retries.labels("x").inc()
    a.failures.labels("x", "connector.retries_exhausted").inc()
    a.batch_seconds.labels("x").observe(0.02)
    get = a.registry.get_sample_value
    assert get("bus_connector_deliveries_total", {"connector": "x", "outcome": "published"}) == 3
    assert get("bus_connector_retries_total", {"connector": "x"}) == 1
    assert get("bus_connector_failures_total",
               {"connector": "x", "reason": "connector.retries_exhausted"}) == 1  # fmt: skip
    assert get("bus_connector_batch_seconds_count", {"connector": "x"}) == 1
    assert b.registry.get_sample_value(
        "bus_connector_deliveries_total", {"connector": "x", "outcome": "published"}
    ) is None  # fmt: skip
