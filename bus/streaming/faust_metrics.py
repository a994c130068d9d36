"""Faust's own telemetry on the bus's metrics endpoint: rebalances, commits, recovery, streams.

``observe(app, registry, server)`` gives the Faust app a monitor that also writes Prometheus
series (prefix ``faust_``) into the registry the bus already serves, samples table recovery,
and starts the metrics server with Faust's sensors: before table recovery, when services
added with ``app.service`` start only after it. Faust's ``faust.sensors.prometheus`` (which
can take a registry and a prefix) is not used: it keeps rebalances in a gauge that falls back
to zero, times rebalances from their end (≈ 0 s), drops its topic counters at every rebalance,
and has no recovery or per-agent series.

Labels are agent names, topics and table names: fixed by the code, never by the data.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from typing import Any, cast

import faust
from faust.sensors.monitor import Monitor
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, AppT, EventT, PendingMessage, RecordMetadata, StreamT
from faust.types.transports import ConsumerT, ProducerT
from mode import Service
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bus.streaming.metrics import Metrics

log = logging.getLogger(__name__)

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_REBALANCE_SECONDS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

RECOVERY_SAMPLE_SECONDS = 1.0
"""How often the probe reads the recovery's remaining offsets (Prometheus scrapes every 15 s)."""


class FaustMetrics:
    """The Faust series, in a registry the caller owns (the worker's, or a test's)."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "faust") -> None:
        self.registry = r = registry
        p = prefix
        self.rebalances = Counter(
            f"{p}_rebalances", "Consumer-group rebalances this worker took part in", registry=r
        )
        self.rebalance_in_progress = Gauge(
            f"{p}_rebalance_in_progress",
            "1 from a rebalance's start until its partitions are recovered and flowing",
            registry=r,
        )
        self.rebalance_seconds = Histogram(
            f"{p}_rebalance_seconds",
            "From a rebalance's start until streams flow again (table recovery included)",
            buckets=_REBALANCE_SECONDS, registry=r,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            f"{p}_commit_seconds", "Time to commit the offsets Faust's streams have acknowledged "
            "(commits with nothing to commit are left out)", buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.recovery_in_progress = Gauge(
            f"{p}_table_recovery_in_progress",
            "1 while this worker rebuilds its active tables from their changelogs", registry=r,
        )  # fmt: skip
        self.recovery_remaining = Gauge(
            f"{p}_table_recovery_remaining_offsets",
            "Changelog offsets a table still has to read before the worker serves again",
            ["table"], registry=r,
        )  # fmt: skip
        self.recovered = Counter(
            f"{p}_table_recovered_records", "Changelog records read to rebuild a table",
            ["table"], registry=r,
        )  # fmt: skip
        self.recovery_resought = Counter(
            f"{p}_table_recovery_resought_partitions",
            "Changelog partitions a recovery stopped receiving, sought again and resumed",
            registry=r,
        )  # fmt: skip
        self.recovery_last_seconds = Gauge(
            f"{p}_table_recovery_last_seconds",
            "How long the last recovery that had records to read took", registry=r,
        )  # fmt: skip
        self.events_in = Counter(
            f"{p}_events_in", "Events a Faust stream took in, by agent (the stream's owner) and "
            "topic", ["agent", "topic"], registry=r,
        )  # fmt: skip
        self.event_seconds = Histogram(
            f"{p}_event_seconds", "Time an agent spent on one event (count: events it finished)",
            ["agent"], buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.sent = Counter(
            f"{p}_messages_sent", "Records Faust's producer delivered, by topic", ["topic"],
            registry=r,
        )  # fmt: skip
        self.send_errors = Counter(
            f"{p}_send_errors", "Records Faust's producer failed to deliver, by topic",
            ["topic"], registry=r,
        )  # fmt: skip
        self.send_seconds = Histogram(
            f"{p}_send_seconds", "From a record entering Faust's producer to its acknowledgement",
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.buffer_full = Counter(
            f"{p}_topic_buffer_full", "Times a topic's stream buffer was full and the consumer "
            "had to wait for the agent", ["topic"], registry=r,
        )  # fmt: skip


NOT_AN_AGENT = "-"
"""The agent label of a stream no agent owns (``app.stream(topic)`` iterated by hand)."""


class FaustMonitor(Monitor):
    """Faust's monitor, also counting into Prometheus; installed by :func:`observe`.

    Hooks run on Faust's event path, so children of labelled metrics are looked up once and
    kept, and nothing is done per event that a scrape could compute instead. Recovery
    progress, which Faust reports to no sensor, is sampled every ``interval`` seconds.
    """

    def __init__(
        self,
        app: AppT,
        metrics: FaustMetrics,
        interval: float = RECOVERY_SAMPLE_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app, self.metrics, self.interval = app, metrics, interval
        self._events_in: dict[tuple[str, str], Any] = {}
        self._event_seconds: dict[str, Any] = {}
        self._recovered: dict[str, Any] = {}
        self._sent: dict[str, Any] = {}
        self._recovered_this_rebalance = 0
        self._commit_had_offsets = False

    # -- rebalances and recovery

    def on_rebalance_start(self, app: AppT) -> dict:
        """A rebalance began: count it."""
        self.metrics.rebalances.inc()
        self.metrics.rebalance_in_progress.set(1)
        self._recovered_this_rebalance = 0
        return super().on_rebalance_start(app)

    def on_rebalance_end(self, app: AppT, state: dict) -> None:
        """Partitions are recovered and streams flow: time it, and close the recovery."""
        super().on_rebalance_end(app, state)
        self.metrics.rebalance_in_progress.set(0)
        self.metrics.rebalance_seconds.observe(state["latency_end"])
        if self._recovered_this_rebalance:
            recovery = recovery_of(app)
            # Faust keeps when the last recovery read its first and last change privately.
            started = getattr(recovery, "_recovery_started_at", None)
            ended = getattr(recovery, "_recovery_ended_at", None)
            if started is not None and ended is not None and ended >= started:
                self.metrics.recovery_last_seconds.set(ended - started)
        self.sample_recovery()

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        """Called for every record Faust's consumer fetches; counts changelog records read
        while an active table is being recovered."""
        super().track_tp_end_offset(tp, offset)
        if self.app.in_recovery:
            recovery = recovery_of(self.app)
            if tp in recovery.active_tps:
                table = recovery.tp_to_table.get(tp)
                if table is not None:
                    self._recovered_child(table.name).inc()
                    self._recovered_this_rebalance += 1

    def sample_recovery(self) -> None:
        """Set the recovery gauges from Faust's recovery state (every interval, and as one ends)."""
        tables = self.app.tables
        recovery = recovery_of(self.app)
        remaining: Tally[str] = Tally()
        in_recovery = bool(recovery.in_recovery)
        if in_recovery:
            for tp, n in recovery.active_remaining().items():
                table = recovery.tp_to_table.get(tp)
                if table is not None and n > 0:
                    remaining[table.name] += n
        self.metrics.recovery_in_progress.set(int(in_recovery))
        for table in tables.values():
            self.metrics.recovery_remaining.labels(table.name).set(remaining[table.name])
            self._recovered_child(table.name)  # a series from the start, so increase() works

    @Service.task
    async def _sample_recovery(self) -> None:
        while not self.should_stop:
            try:
                self.sample_recovery()
            except Exception:  # a metric must never stop the worker
                log.exception("sampling table recovery failed")
            await self.sleep(self.interval)

    def _recovered_child(self, table: str) -> Any:
        child = self._recovered.get(table)
        if child is None:
            child = self._recovered[table] = self.metrics.recovered.labels(table)
        return child

    # -- commits

    def on_commit_initiated(self, consumer: ConsumerT) -> Any:
        """Faust's consumer is about to commit (it tries every ``broker_commit_every``)."""
        self._commit_had_offsets = False
        return super().on_commit_initiated(consumer)

    def on_tp_commit(self, tp_offsets: Any) -> None:
        """Offsets were really committed in this round."""
        super().on_tp_commit(tp_offsets)
        self._commit_had_offsets = bool(tp_offsets)

    def on_commit_completed(self, consumer: ConsumerT, state: Any) -> None:
        """Time the commit, if it committed something."""
        super().on_commit_completed(consumer, state)
        if self._commit_had_offsets:
            self.metrics.commit_seconds.observe(self.time() - state)

    # -- streams and agents

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT, event: EventT
    ) -> dict | None:
        """An agent's stream took an event: count it by agent and topic."""
        state = super().on_stream_event_in(tp, offset, stream, event)
        agent = stream.prefix or NOT_AN_AGENT
        key = (agent, tp.topic)
        child = self._events_in.get(key)
        if child is None:
            child = self._events_in[key] = self.metrics.events_in.labels(agent, tp.topic)
        child.inc()
        if state is not None:
            state["agent"] = agent
        return state

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: StreamT, event: EventT, state: dict | None = None
    ) -> None:
        """The agent is done with the event: time it."""
        super().on_stream_event_out(tp, offset, stream, event, state)
        if state is None or state.get("time_total") is None:
            return
        agent = state.get("agent", NOT_AN_AGENT)
        child = self._event_seconds.get(agent)
        if child is None:
            child = self._event_seconds[agent] = self.metrics.event_seconds.labels(agent)
        child.observe(state["time_total"])

    def on_topic_buffer_full(self, tp: TP) -> None:
        """A stream's buffer is full: the consumer waits for the agent."""
        super().on_topic_buffer_full(tp)
        self.metrics.buffer_full.labels(tp.topic).inc()

    # -- Faust's producer

    def on_send_initiated(
        self,
        producer: ProducerT,
        topic: str,
        message: PendingMessage,
        keysize: int,
        valsize: int,
    ) -> Any:
        """A record enters Faust's producer: remember when and where to."""
        started = super().on_send_initiated(producer, topic, message, keysize, valsize)
        return (started, topic)

    def on_send_completed(self, producer: ProducerT, state: Any, metadata: RecordMetadata) -> None:
        """The broker acknowledged the record."""
        started, topic = state
        super().on_send_completed(producer, started, metadata)
        child = self._sent.get(topic)
        if child is None:
            child = self._sent[topic] = self.metrics.sent.labels(topic)
        child.inc()
        self.metrics.send_seconds.observe(self.time() - started)

    def on_send_error(self, producer: ProducerT, exc: BaseException, state: Any) -> None:
        """The record was not delivered."""
        started, topic = state
        super().on_send_error(producer, exc, started)
        self.metrics.send_errors.labels(topic).inc()


def recovery_of(app: AppT) -> Recovery:
    """The app's table recovery service (Faust types it on the manager only)."""
    return cast(TableManager, app.tables).recovery


def observe(
    app: faust.App,
    registry: CollectorRegistry,
    server: Service | None = None,
    *,
    prefix: str = "faust",
    interval: float = RECOVERY_SAMPLE_SECONDS,
) -> FaustMonitor:
    """Export ``app``'s rebalances, commits, recovery and streams into ``registry``.

    Call it before the app starts; ``server`` (the one serving ``registry``) then starts and
    stops with Faust's sensors, so a recovery can be watched while it runs. Example::

        metrics = Metrics()
        observe(app, metrics.registry, MetricsServer(metrics, "127.0.0.1", 9464))
    """
    monitor = FaustMonitor(app, FaustMetrics(registry, prefix), interval)
    app.monitor = monitor
    if server is not None:
        monitor.add_dependency(server)
    return monitor


class MetricsServer(Service):
    """Serves ``/metrics`` on ``host:port`` in a thread; a taken port is logged, not fatal."""

    def __init__(self, metrics: Metrics, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics, self.host, self.port = metrics, host, port
        self._server: Any = None

    async def on_start(self) -> None:
        """Start the HTTP server."""
        try:
            self._server, _ = start_http_server(
                self.port, addr=self.host, registry=self.metrics.registry
            )
            log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        except OSError as exc:
            log.error("metrics server not started on %s:%d: %s", self.host, self.port, exc)

    async def on_stop(self) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            self._server.shutdown()
