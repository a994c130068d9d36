"""A small Faust app, one agent and one table, observed as the worker is.

See ``bus.streaming.faust_metrics``.

The tests start it as a process, ``python -m tests.integration.faust_app worker --without-web``
(Faust's command line turns its web server on otherwise), configured by ``FAUST_APP_*``
variables, to watch Faust's own series move: events per agent, the table's changelog writes
and, after a restart, its recovery. ``FAUST_APP_HOLD_CHANGELOG=1`` makes that recovery hang as
one was seen to: the changelog partitions are left paused when Faust resumes them (see
``bus.streaming.recovery_watch``, which the app runs unless ``FAUST_APP_WATCH=0``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable

import faust
from faust.transport.consumer import Consumer
from faust.types import TP

from bus.streaming.faust_metrics import MetricsServer, observe
from bus.streaming.metrics import Metrics
from bus.streaming.recovery_watch import STALL_S, watch_recovery

AGENT = "count"
TABLE = "counts"

env = os.environ
app = faust.App(
    env.get("FAUST_APP_ID", "faust-app"),
    broker=env.get("FAUST_APP_BROKER", "kafka://127.0.0.1:9092"),
    autodiscover=False,
    store="memory://",
    datadir=env.get("FAUST_APP_DATADIR", "/tmp/faust-app"),
    topic_partitions=3,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    broker_rebalance_timeout=10,
    web_enabled=False,
)
metrics = Metrics()
monitor = observe(
    app,
    metrics.registry,
    MetricsServer(metrics, "127.0.0.1", int(env.get("FAUST_APP_METRICS_PORT", "0"))),
)

if env.get("FAUST_APP_WATCH", "1") != "0":
    stall_s = float(env.get("FAUST_APP_STALL_S", STALL_S))
    watch_recovery(app, stall_s, monitor.metrics.recovery_resought.inc)

if env.get("FAUST_APP_HOLD_CHANGELOG") == "1":
    _resume = Consumer.resume_partitions
    _held: list[object] = []

    def _resume_but_the_changelog_once(self: Consumer, tps: Iterable[TP]) -> None:
        """The recovery's first resume leaves its changelog partitions paused."""
        tps = list(tps)
        changelog = [tp for tp in tps if tp.topic.endswith("-changelog")]
        if changelog and not _held:
            _held.extend(changelog)
            print(f"holding {sorted(changelog)} paused", flush=True)
            tps = [tp for tp in tps if tp not in changelog]
        _resume(self, tps)

    Consumer.resume_partitions = _resume_but_the_changelog_once  # type: ignore[method-assign]

counts = app.Table(TABLE, default=int, partitions=3)
words = app.topic(
    env.get("FAUST_APP_TOPIC", "words"), key_serializer="raw", value_serializer="raw", partitions=3
)


@app.agent(words, name=AGENT)
async def count(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    """Counts the records of each key: one table write, so one changelog record, per event."""
    async for key, _ in stream.items():
        counts[key.decode()] += 1
        yield None


if __name__ == "__main__":
    app.main()
