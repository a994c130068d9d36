"""The connector SDK: a ``Source`` puts events on the bus, a ``Sink`` takes them off.

Shaped like quix-streams' sources and sinks, made async::

    class MySource(Source):
        guarantee = Guarantee.EFFECTIVELY_ONCE

        async def run(self) -> None:
            while not self.stopping:
                rows = await fetch_new_rows()              # your system
                await self.produce([to_envelope(r) for r in rows])
                await mark_sent(rows)                      # only after produce() returned

    class MySink(Sink):
        guarantee = Guarantee.AT_LEAST_ONCE

        async def write(self, batch: list[SinkRecord]) -> None:
            await post_somewhere(batch)                    # raise to have it retried

The base classes own what every connector gets wrong on its own: the lifecycle
(``on_start`` / ``on_stop``, a clean stop on SIGTERM), retries with exponential back-off and
jitter, back-pressure (a source waits for the broker's acknowledgement before it reads more;
a sink does not fetch the next batch until ``write`` returned), offsets committed only after
a successful write, a dead-letter path once the retry budget is spent, and metrics.

Every connector states its delivery guarantee (``guarantee``) in code and docstring. The
bus de-duplicates by ``event_id``, so a source that gives each event a stable id is
*effectively once*: it may send twice after a crash, the second copy has no effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram

from bus.agents.out import Out, rejection_headers
from bus.agents.runtime import BatchAbandoned, BatchAgent, Record
from bus.errors import BusError, ConnectorError
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import BusClient, Receipt, _text
from bus.streaming.codec import EventCodec
from bus.streaming.metrics import AgentMetrics

log = logging.getLogger(__name__)

REASON_COMMIT_REFUSED = "connector.commit_refused"

T = TypeVar("T")


class Guarantee(StrEnum):
    """What a connector promises about each event it moves."""

    AT_MOST_ONCE = "at-most-once"
    """Never repeated, may be lost (only for data that can be re-sent from the source)."""
    AT_LEAST_ONCE = "at-least-once"
    """Never lost, may be repeated after a crash; the receiver de-duplicates by event_id."""
    EFFECTIVELY_ONCE = "effectively-once"
    """At-least-once delivery with stable event ids: a repeat has no second effect."""


def is_retriable(exc: BaseException) -> bool:
    """Whether trying the same thing again later may succeed (network, broker, 5xx)."""
    if isinstance(exc, BusError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", True))
    return isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError))


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter and a retry budget.

    ``attempts`` counts tries including the first; ``None`` retries forever (a source
    waiting out a broker outage). Delays: ``initial``, ``initial * multiplier``, ... capped
    at ``maximum``, each scattered by ``jitter`` (a fraction) so that many connectors
    restarting together do not hammer the same endpoint in step.
    """

    initial: float = 0.2
    maximum: float = 30.0
    multiplier: float = 2.0
    attempts: int | None = 8
    jitter: float = 0.1

    def delays(self) -> Iterator[float]:
        """The pauses between tries; as many as the budget allows."""
        delay = self.initial
        n = 1
        while self.attempts is None or n < self.attempts:
            spread = delay * self.jitter
            yield max(0.0, delay + random.uniform(-spread, spread))
            delay = min(delay * self.multiplier, self.maximum)
            n += 1

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
        retriable: Callable[[BaseException], bool] = is_retriable,
    ) -> T:
        """Call ``attempt`` until it succeeds, a non-retriable error, or the budget is spent.

        Raises the non-retriable error as it is, or ``ConnectorError`` with reason
        ``connector.retries_exhausted`` naming the last error.
        """
        delays = self.delays()
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not retriable(exc):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise ConnectorError(
                        f"gave up after {tries} tries: {exc}",
                        reason="connector.retries_exhausted",
                    ) from exc
                if on_retry is not None:
                    on_retry(tries, exc, delay)
                await asyncio.sleep(delay)


class ConnectorMetrics:
    """Deliveries, retries and failures per connector, in a registry the caller owns."""

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "bus") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            f"{prefix}_connector_deliveries", "Events a connector moved, by outcome",
            ["connector", "outcome"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            f"{prefix}_connector_retries", "Tries repeated after a retriable error",
            ["connector"], registry=r,
        )  # fmt: skip
        self.failures = Counter(
            f"{prefix}_connector_failures", "Errors a connector met, by reason",
            ["connector", "reason"], registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            f"{prefix}_connector_batch_seconds", "Time to move one batch, retries included",
            ["connector"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.agents = AgentMetrics(r, prefix)
        """A sink's consumer, as the runtime records it for every agent (lag, batches)."""


class Connector(ABC):
    """Lifecycle shared by sources and sinks: start, run until stopped, stop cleanly.

    Use as an async context manager around ``run()``, or call ``serve()`` which does both
    and returns when ``stop()`` is called (``bus connect`` calls it on SIGTERM).
    """

    guarantee: ClassVar[Guarantee] = Guarantee.AT_LEAST_ONCE
    kind: ClassVar[str] = "connector"

    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        backoff: Backoff | None = None,
        metrics: ConnectorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or self.kind
        self.backoff = backoff or Backoff()
        self.metrics = metrics or ConnectorMetrics()
        self._stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called: ``run`` loops should end their iteration."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the connector to finish what it is doing and return from ``run``."""
        self._stop.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on ``stop()``; returns True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self.stopping

    async def on_start(self) -> None:  # noqa: B027  (optional hook)
        """Open connections to the outside system (called after the bus side is up)."""

    async def on_stop(self) -> None:  # noqa: B027  (optional hook)
        """Close them (called before the bus side goes down)."""

    async def start(self) -> None:
        """Connect to the bus, then call ``on_start``."""
        await self.on_start()

    async def close(self) -> None:
        """Call ``on_stop``, then disconnect from the bus."""
        await self.on_stop()

    async def __aenter__(self: Any) -> Any:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def run(self) -> None:
        """Do the connector's work until ``stopping`` (or until there is no more)."""

    async def serve(self) -> None:
        """Start, run until done or stopped, stop: what ``bus connect`` runs."""
        async with self:
            log.info("%s (%s, %s) running", self.name, self.kind, self.guarantee.value)
            await self.run()
        log.info("%s stopped", self.name)

    def _on_retry(self, tries: int, exc: BaseException, delay: float) -> None:
        self.metrics.retries.labels(self.name).inc()
        log.warning("%s: try %d failed (%s); again in %.2fs", self.name, tries, exc, delay)


class Source(Connector):
    """Produces envelopes into the bus (its ingress topic, where ingest checks them).

    Implement ``run``: read from your system, call ``produce``, and only then mark what
    you read as sent. ``produce`` returns once the broker acknowledged every event (that is
    the back-pressure: a source can never run ahead of the bus), retrying broker errors
    with back-off.
    """

    kind = "source"

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.codec = EventCodec()
        self._client: BusClient | None = None

    async def start(self) -> None:
        """Connect the producer, then ``on_start``."""
        self._client = BusClient(self.settings, self.codec)
        await self._client.__aenter__()
        await super().start()

    async def close(self) -> None:
        """``on_stop``, then flush and close the producer."""
        try:
            await super().close()
        finally:
            if self._client is not None:
                await self._client.__aexit__(None, None, None)
                self._client = None

    async def produce(
        self, events: Sequence[Envelope | dict[str, Any] | bytes], *, historical: bool = False
    ) -> list[Receipt]:
        """Publish ``events`` to ingress and wait for the broker; retried with back-off.

        Give every event a stable ``event_id`` (derived from your row's key) and a retry
        after a crash has no second effect. ``historical``: they record the past (an import,
        a back-fill); the bus folds them into its records but starts no matter for them.
        """
        if not events:
            return []
        client = self._client
        if client is None:
            raise ConnectorError(f"{self.name}: produce() before start()", reason="connector.state")
        t0 = time.perf_counter()
        try:
            receipts = await self.backoff.run(
                lambda: client.publish_many(events, historical=historical),
                on_retry=self._on_retry,
            )
        except BusError as exc:
            self.metrics.failures.labels(self.name, exc.reason).inc()
            raise
        self.metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - t0)
        self.metrics.deliveries.labels(self.name, "published").inc(len(receipts))
        return receipts


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """One record a sink receives: the bytes as on Kafka, and the event when it decodes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    event: Envelope | None = None
    error: str | None = field(default=None, compare=False)

    @property
    def event_id(self) -> str | None:
        """The event's id, from its headers (present on everything the bus produces)."""
        return self.headers.get("event_id") or (str(self.event.event_id) if self.event else None)


class Sink(Connector):
    """Receives batches from one topic (a department's inbox, a canonical topic).

    Implement ``write(batch)``. It is called with one partition's records in order, one
    batch at a time; the next batch is fetched only after it returns (back-pressure), and
    offsets are committed only after it returns (at-least-once). Raise a retriable error
    (``ConnectorError(retriable=True)``, ``OSError``, a timeout) to have the same batch
    retried with back-off; when the budget is spent, or for a non-retriable error, the
    batch goes to the dead-letter topic with the reason and the sink moves on, so one bad
    endpoint day never blocks an inbox for ever. Set ``deadletter_on_failure = False`` to
    stop instead (the batch is re-read on restart).

    A sink runs on the agents' batch runtime (``bus.agents.runtime.BatchAgent``): the same
    consumer group handling, rebalance listener, commit after the dead letters are
    acknowledged, and consumer-lag series (``bus_consumer_lag{agent="connector.<name>"}``).
    While ``write`` runs (retries and an endpoint's ``Retry-After`` included) the partitions
    are paused and polled, so a slow outside system never outlasts the consumer's poll
    interval and has the sink evicted. A rebalance waits for the batch in hand and commits
    it before the partition moves; a commit the group refuses is counted
    (``connector.commit_refused``) and the records go to whichever sink owns it next.
    """

    kind = "sink"
    deadletter_on_failure: ClassVar[bool] = True

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        group: str | None = None,
        batch_size: int = 100,
        batch_wait: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.topic = topic
        self.group = group or f"{settings.app_id}.connector.{self.name}"
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.codec = EventCodec()
        self.delivered = 0
        self.poll_every = 1.0
        """Seconds a ``write`` may take before the sink pauses its partitions and polls."""
        self._agent: _SinkAgent | None = None
        self._writing: asyncio.Future[list[Out]] | None = None
        self._abandoned = False
        self._failure: BaseException | None = None

    @abstractmethod
    async def write(self, batch: list[SinkRecord]) -> None:
        """Deliver one batch; return only when it is safely delivered."""

    def consumer_options(self) -> dict[str, Any]:
        """Extra ``AIOKafkaConsumer`` options for this sink (none by default)."""
        return {}

    async def start(self) -> None:
        """``on_start``, then join the sink's consumer group on its topic."""
        await super().start()
        self._failure = None
        self._agent = _SinkAgent(self)
        await self._agent.start()

    async def close(self) -> None:
        """Finish and commit the batch in hand, leave the group, then ``on_stop``."""
        try:
            if self._agent is not None:
                await self._agent.stop()
                self._agent = None
        finally:
            await super().close()

    async def run(self) -> None:
        """Deliver until stopped; raises what stopped it otherwise (``deadletter_on_failure``)."""
        agent = self._agent
        if agent is None:
            raise ConnectorError(f"{self.name}: run() before start()", reason="connector.state")
        stopped = asyncio.ensure_future(self._stop.wait())
        ended = asyncio.ensure_future(agent.wait_until_stopped())
        try:
            await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            ended.cancel()
        if self._failure is not None:
            raise self._failure
        if agent.crashed:
            raise ConnectorError(
                f"{self.name}: stopped by {agent.crash_reason!r}", reason="connector.error"
            )

    def abandon(self) -> None:
        """Give up the batch in hand (a sink stopping during a long back-off): its offset is
        not committed, so the next run delivers it again."""
        if self._writing is not None and not self._writing.done():
            self._abandoned = True
            self._writing.cancel()

    def decode(self, records: Iterable[Any]) -> list[SinkRecord]:
        """Kafka records -> ``SinkRecord`` with the event decoded where it decodes."""
        out = []
        for r in records:
            event: Envelope | None = None
            error: str | None = None
            try:
                event = self.codec.decode(r.value) if r.value else None
            except BusError as exc:
                error = f"{exc.reason}: {exc.message}"
            out.append(
                SinkRecord(
                    r.topic, r.partition, r.offset, r.key, r.value or b"",
                    {k: _text(v) for k, v in (r.headers or ())}, event, error,
                )
            )  # fmt: skip
        return out

    async def _write_all(self, records: list[Any]) -> list[Out]:
        """Each partition's records to ``_deliver`` in order; the dead letters it made."""
        by_partition: dict[TopicPartition, list[Any]] = {}
        for r in records:
            by_partition.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        letters: list[Out] = []
        for tp in sorted(by_partition):
            letters += await self._deliver(tp, self.decode(by_partition[tp]))
        return letters

    async def _deliver(self, tp: TopicPartition, batch: list[SinkRecord]) -> list[Out]:
        t0 = time.perf_counter()
        try:
            await self.backoff.run(lambda: self.write(batch), on_retry=self._on_retry)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, BusError) else "connector.error"
            self.metrics.failures.labels(self.name, reason).inc()
            if not self.deadletter_on_failure:
                raise
            log.error("%s: %d records to dead letters: %s", self.name, len(batch), exc)
            self.metrics.deliveries.labels(self.name, "deadlettered").inc(len(batch))
            return self._deadletters(batch, reason, str(exc))
        self.metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - t0)
        self.metrics.deliveries.labels(self.name, "delivered").inc(len(batch))
        self.delivered += len(batch)
        return []

    def _deadletters(self, batch: list[SinkRecord], reason: str, error: str) -> list[Out]:
        """Dead letters for ``batch``, sent and acknowledged before its offset is committed."""
        topic = self.settings.topic("deadletter")
        return [
            Out(topic, r.value, key=r.key, headers=rejection_headers(
                [(k, v.encode()) for k, v in r.headers.items()], reason, error,
                f"connector.{self.name}", f"{r.topic}/{r.partition}/{r.offset}",
            ))
            for r in batch
        ]  # fmt: skip


@dataclass(frozen=True)
class _SinkHost:
    settings: Settings
    metrics: AgentMetrics


class _SinkAgent(BatchAgent):
    """A sink as a batch agent: ``process`` writes the batch out and returns its dead letters."""

    def __init__(self, sink: Sink) -> None:
        self.name = f"connector.{sink.name}"
        super().__init__(
            _SinkHost(sink.settings, sink.metrics.agents),
            [sink.topic],
            group=sink.group,
            batch_size=sink.batch_size,
            batch_wait=sink.batch_wait,
        )
        self.sink = sink
        self.poll_every = sink.poll_every
        # Its effect is outside Kafka: no transaction can hold it.
        self.guarantee = "at_least_once"
        self.transactional = False

    def consumer_options(self) -> dict[str, Any]:
        """The sink's own (``Sink.consumer_options``)."""
        return self.sink.consumer_options()

    async def process(self, records: list[Record]) -> list[Out]:
        """Write the batch out; an abandoned or failed one is given up uncommitted."""
        sink = self.sink
        sink._abandoned = False
        writing = sink._writing = asyncio.ensure_future(sink._write_all(records))
        try:
            return await writing
        except asyncio.CancelledError:
            if not (sink._abandoned and writing.cancelled()):
                raise
            raise BatchAbandoned(f"{sink.name}: stopped during back-off") from None
        except Exception as exc:  # deadletter_on_failure is off: stop, re-read on restart
            sink._failure = exc
            sink.stop()
            raise BatchAbandoned(f"{sink.name}: {exc}") from exc
        finally:
            sink._writing = None

    def on_commit_refused(self, offsets: Mapping[TopicPartition, int], exc: KafkaError) -> None:
        """Counted as ``connector.commit_refused``: the partitions' next owner delivers them."""
        self.sink.metrics.failures.labels(self.sink.name, REASON_COMMIT_REFUSED).inc()
        log.warning("%s: commit of %s refused (%s): the partitions' next owner delivers them "
                    "again", self.sink.name, dict(offsets), exc)  # fmt: skip
