"""The Faust application: one per worker process, built from ``Settings``.

Built by a factory rather than at import time so that tests, the demo and the CLI can each
run a worker against their own broker, topic prefix and state directory.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass, field
from typing import Any

import faust

from bus.domain.certificates import Signer
from bus.domain.departments import Directory
from bus.settings import Settings
from bus.streaming.codec import EventCodec, Recent
from bus.streaming.faust_metrics import MetricsServer
from bus.streaming.faust_metrics import observe as observe_faust
from bus.streaming.metrics import Metrics
from bus.streaming.recovery_watch import watch_recovery

log = logging.getLogger(__name__)

RECENT_EVENTS = 20_000
"""Decoded events ingest keeps for correlate (about 3 KB each), which reads them a batch later."""

READY = "bus worker ready"
"""Logged once every agent has its partitions; what process supervisors wait for."""


@dataclass(frozen=True)
class Context:
    """What every agent needs besides the app: settings, codec and the directory."""

    settings: Settings
    codec: EventCodec
    directory: Directory
    metrics: Metrics = field(default_factory=Metrics)
    recent: Recent = field(default_factory=lambda: Recent(0))


def create_app(settings: Settings | None = None) -> tuple[faust.App, Context]:
    """Build the Faust app with every agent registered."""
    from bus.agents import cases, correlate, ingest

    settings = settings or Settings()
    # Ingest hands correlate what it decoded when both run here (bus.streaming.codec.Recent).
    both = {"ingest", "correlate"} <= set(settings.agents)
    ctx = Context(
        settings,
        EventCodec(),
        Directory.load(settings.departments_file, settings.policy_file),
        recent=Recent(RECENT_EVENTS if both else 0),
    )
    datadir = settings.data_dir / "worker" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        autodiscover=False,
        store="rocksdb://" if settings.table_store == "rocksdb" else "memory://",
        # No standbys by default: the memory store re-reads a partition's changelog from its start
        # when it becomes active anyway (measured: docs/architecture.md, "standby").
        table_standby_replicas=settings.standby_replicas,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_max_poll_records=max(settings.batch_size, 500),
        stream_buffer_maxsize=max(4 * settings.batch_size, 4096),
        stream_wait_empty=True,  # a hand-over waits for the case engine's batch in hand
        broker_commit_every=1,  # the case engine: offsets committed as soon as a batch is done
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_linger=settings.producer_linger_ms / 1000,
        recovery_consistency_check=settings.recovery_consistency_check,
        web_enabled=settings.web_port != 0,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port or 6066,
        web_in_thread=False,
        broker_credentials=_credentials(settings),
    )
    _read_committed(app)
    makers = {
        "ingest": lambda: ingest.IngestAgent(ctx),
        "correlate": lambda: correlate.CorrelateAgent(ctx),
    }
    agents = [makers[name]() for name in settings.agents if name in makers]
    engine = cases.install(app, ctx, load_signer(settings)) if "cases" in settings.agents else None
    for agent in agents:
        app.service(agent)  # type: ignore[arg-type]  # started by the worker after recovery

    watch = watch_recovery(app)  # a changelog partition that stops arriving is read again
    if settings.metrics_port:  # with Faust's own series, served from before table recovery
        server = MetricsServer(ctx.metrics, settings.web_host, settings.metrics_port)
        watch.on_resought = observe_faust(
            app, ctx.metrics.registry, server
        ).metrics.recovery_resought.inc

    @app.task
    async def announce_ready() -> None:
        await asyncio.gather(*(a.ready.wait() for a in agents))
        names = [a.name for a in agents]
        if engine is not None:  # the case engine: Faust's own assignment and table recovery
            await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
            names.append("cases")
        tune_gc()
        log.info("%s: %s", READY, ", ".join(names))

    return app, ctx


def _read_committed(app: faust.App) -> None:
    """Faust's consumer reads committed records only, as every other reader of the bus does.

    Faust reads uncommitted records unless its own exactly-once mode is on; the case engine
    writes decisions and table changelogs in transactions, and what an aborted or fenced one
    wrote must not be restored into a table.
    """
    from faust.transport.drivers import aiokafka as driver

    class Thread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._isolation_level = "read_committed"  # read by start()
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self) -> Thread:
            return Thread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = Consumer  # type: ignore[misc]


GC_THRESHOLD = (10_000, 50, 50)
"""Python's default (700, 10, 10) collects after every 700 new objects; an agent makes
dozens per event, so the default spent a quarter of a worker's time in the collector."""


def tune_gc() -> None:
    """Fewer, larger garbage collections, and none over what start-up built.

    Modules, schemas, the Faust app and restored state are frozen (never scanned again; still
    freed by reference counting), and collections run after 10 000 new objects instead of
    700. The bus's event objects are short-lived and acyclic, so memory does not grow for it
    (docs/benchmarks.md measures both).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def load_signer(settings: Settings) -> Signer:
    """The certificate signing key: the configured file, or one kept in the data dir.

    Without ``BUS_SIGNING_KEY_FILE`` a key is made on first start and kept (with its public
    key beside it) so certificates stay verifiable across restarts; production sets the file.
    """
    if settings.signing_key_file is not None:
        return Signer.from_file(settings.signing_key_file, settings.signing_key_id)
    path = settings.data_dir / "keys" / f"{settings.signing_key_id}.pem"
    if path.exists():
        return Signer.from_file(path, settings.signing_key_id)
    signer = Signer.generate(settings.signing_key_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    signer.save(path)
    signer.save_public_key(path.with_suffix(".pub"))
    log.warning("made a certificate signing key %s; public key %s", path, path.with_suffix(".pub"))
    return signer


def _credentials(settings: Settings) -> faust.SASLCredentials | None:
    if settings.sasl_username is None or settings.sasl_password is None:
        return None
    # The same TLS context as the agents' own clients: with SASL_SSL, Faust's consumer,
    # producer and admin client must not fall back to plaintext.
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value(),
        mechanism=settings.sasl_mechanism,
        ssl_context=settings.kafka().get("ssl_context"),
    )
