"""The Faust application: one per worker process, built from ``Settings``.

Built by a factory rather than at import time so that tests, the demo and the CLI can each
run a worker against their own broker, topic prefix and state directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from bus.codec import EventCodec
from bus.departments import Directory
from bus.settings import Settings


@dataclass(frozen=True)
class Context:
    """What every agent needs besides the app: settings, codec and the directory."""

    settings: Settings
    codec: EventCodec
    directory: Directory


def create_app(settings: Settings | None = None) -> tuple[faust.App, Context]:
    """Build the Faust app with every agent registered."""
    from bus.agents import ingest

    settings = settings or Settings()
    ctx = Context(settings, EventCodec(), Directory.load(settings.departments_file))
    datadir = settings.data_dir / "worker" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=settings.broker,
        autodiscover=False,
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.heartbeat_interval,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_max_poll_records=max(settings.batch_size, 500),
        stream_buffer_maxsize=max(4 * settings.batch_size, 4096),
        stream_wait_empty=False,
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
    for agent in (ingest.IngestAgent(ctx),):
        app.service(agent)  # type: ignore[arg-type]  # started by the worker after recovery
    return app, ctx


def _credentials(settings: Settings) -> faust.SASLCredentials | None:
    if settings.sasl_username is None or settings.sasl_password is None:
        return None
    return faust.SASLCredentials(
        username=settings.sasl_username, password=settings.sasl_password.get_secret_value()
    )
