"""PostgreSQL outbox source: a case system's events, from its own database to the bus.

The case system writes its business row and an outbox row in **one transaction**; this
connector publishes committed outbox rows in ``id`` order and marks them published. A
rolled-back transaction leaves no outbox row, so nothing is published for it; a committed
one is published even if the bus was down at the time (the table is the buffer).

The table (``outbox_ddl`` prints it, ``create_outbox`` or ``create_table: true`` creates it)
holds the envelope's fields as columns, so the case system cannot get the framing wrong and
cannot claim another department's ``source``::

    BEGIN;
    UPDATE cases SET status = 'decided' WHERE case_no = '昆花综执罚决字〔2026〕第0001号';
    INSERT INTO bus_outbox (aggregate_id, event_type, payload)
         VALUES ('<the enterprise USCC>', 'penalty.imposed', '{"case_number": ...}');
    COMMIT;

Only one replica publishes at a time (a session advisory lock on the table); others wait as
hot standbys. That keeps rows in ``id`` order, which ``SKIP LOCKED`` with two active replicas
would not: one could publish a later row of an aggregate while the other still holds an
earlier one. See docs/connectors-outbox.md for operating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, Self

import psycopg
from prometheus_client import CollectorRegistry, Gauge
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from bus.domain.departments import Directory
from bus.errors import BusError, ConfigurationError, ConnectorError
from bus.schemas.envelope import Envelope
from bus.schemas.jsontext import load_json
from bus.schemas.types import DepartmentCode
from bus.settings import Settings
from connectors.base import Backoff, Guarantee, Source

log = logging.getLogger(__name__)

IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
"""Schema and table names: plain lower-case SQL identifiers, never quoted or escaped."""

ENVELOPE_BYTES = 1024
"""More than an Avro envelope's fields ever take besides the payload (ids, codes, times)."""

RETENTION_EVERY = 600.0
"""Seconds between two retention sweeps (when ``retention_days`` is set)."""

RETENTION_CHUNK = 5000
"""Rows deleted per statement, so a sweep never holds many row locks for long."""

_DDL = """\
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.{table} (
    id             bigserial   PRIMARY KEY,          -- publication order
    event_id       uuid        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    aggregate_id   text        NOT NULL,             -- the subject: the enterprise's USCC
    event_type     text        NOT NULL,             -- e.g. penalty.imposed
    schema_version integer     NOT NULL DEFAULT 1,
    payload        jsonb       NOT NULL,             -- the event type's payload
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    correlation_id text,                             -- null: the event starts its own case
    causation_id   uuid,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at   timestamptz,                      -- null: not yet handed to the bus
    error          text                              -- why the bus will refuse it, if it will
);

-- Every row is updated once: vacuum and analyze it often, as a queue wants.
ALTER TABLE {schema}.{table} SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02
);

CREATE INDEX IF NOT EXISTS {table}_pending ON {schema}.{table} (id) WHERE published_at IS NULL;

CREATE OR REPLACE FUNCTION {schema}.{table}_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {table}_notify ON {schema}.{table};
CREATE TRIGGER {table}_notify AFTER INSERT ON {schema}.{table}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{table}_notify();
"""


def channel(schema: str, table: str) -> str:
    """The LISTEN/NOTIFY channel the insert trigger wakes the connector on."""
    return f"{schema}.{table}"


def lock_key(schema: str, table: str) -> int:
    """The advisory lock key that makes one replica per outbox table the active one."""
    digest = hashlib.blake2b(f"bus.outbox:{schema}.{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def outbox_ddl(schema: str = "public", table: str = "bus_outbox") -> str:
    """The SQL that creates the outbox table, its index and insert trigger (idempotent).

    For a DBA to review and run::

        python -c "from connectors.outbox import outbox_ddl; print(outbox_ddl('cases'))"
    """
    _Names.model_validate({"schema": schema, "table": table})
    return _DDL.format(schema=schema, table=table, channel=channel(schema, table))


async def create_outbox(
    conn: psycopg.AsyncConnection[Any], schema: str = "public", table: str = "bus_outbox"
) -> None:
    """Create the outbox table on ``conn`` in one transaction (nothing happens if it exists)."""
    ddl = outbox_ddl(schema, table)
    async with conn.transaction():
        await conn.execute(ddl.encode())


class _Names(BaseModel):
    """Where the outbox is, checked once for every way a name comes in."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_name: str = Field(default="public", alias="schema", pattern=IDENTIFIER)
    table: str = Field(default="bus_outbox", pattern=IDENTIFIER)

    @model_validator(mode="after")
    def _channel_fits(self) -> Self:
        if len(channel(self.schema_name, self.table)) > 63:
            raise ValueError("schema and table together must be at most 62 characters")
        return self


class OutboxOptions(_Names):
    """The ``options`` of an ``outbox`` connector in the connectors file."""

    dsn: SecretStr = Field(description="libpq connection string or URI of the case database")
    department: DepartmentCode = Field(description="Source of every event: your department")
    batch_size: int = Field(default=100, ge=1, le=10_000, description="Rows per round trip")
    poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds between looks when no notification wakes us"
    )
    create_table: bool = Field(default=False, description="Create the table if it is missing")
    retention_days: float | None = Field(
        default=None, gt=0, description="Delete rows published this many days ago; unset: keep"
    )


class _Row(NamedTuple):
    """One outbox row as read (the payload as its JSON text)."""

    id: int
    event_id: uuid.UUID
    aggregate_id: str
    event_type: str
    schema_version: int
    payload: str
    occurred_at: datetime
    correlation_id: str | None
    causation_id: uuid.UUID | None
    created_at: datetime


_COLUMNS = ", ".join(_Row._fields).replace("payload", "payload::text")
_TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # connection lost, server shutting down, timeouts
    psycopg.InterfaceError,  # the connection is closed
    psycopg.errors.ReadOnlySqlTransaction,  # a failover left us on a standby for now
)


class OutboxSource(Source):
    """Publishes a PostgreSQL outbox table's rows to the bus: effectively-once.

    The delivery is at-least-once: a row is marked published only after the broker
    acknowledged its event, so a crash in between publishes it again on restart. The
    repeat has no effect because the row's ``event_id`` is the event's id and the bus
    de-duplicates by ``event_id``: effectively-once, in ``id`` order per aggregate.

    A row the bus will refuse (bad payload, wrong USCC, an event type the department may
    not publish) is still published, as JSON, so ingest dead-letters it with the exact
    reason where operators look; the row gets ``error`` set and does not hold up the rows
    after it. A row too large for the bus is not sent; its ``error`` says so.
    """

    guarantee = Guarantee.EFFECTIVELY_ONCE
    kind = "outbox"
    Options = OutboxOptions

    def __init__(self, settings: Settings, options: OutboxOptions, **kwargs: Any) -> None:
        kwargs.setdefault("backoff", Backoff(attempts=5))
        super().__init__(settings, **kwargs)
        self.options = options
        self.schema = options.schema_name
        self.table = options.table
        self.department = options.department
        self.directory = Directory.load(settings.departments_file, settings.policy_file)
        if self.directory.get(self.department) is None:
            raise ConfigurationError(
                f"department {self.department!r} is not in the department directory"
            )
        self.active = False
        """True while this replica holds the table's lock and publishes."""
        self.published = 0
        """Rows handed to the bus by this instance (refused ones included)."""
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._target = sql.SQL("{}.{}").format(
            sql.Identifier(self.schema), sql.Identifier(self.table)
        )
        self._last_prune: float | None = None
        self._standby = False
        self._lag = _lag_gauge(self)

    @classmethod
    def from_options(cls, settings: Settings, name: str, options: OutboxOptions) -> Self:
        """The connector a connectors-file entry describes."""
        return cls(settings, options, name=name)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until stopped; wait out database and broker outages with back-off."""
        outage: Iterator[float] | None = None
        while not self.stopping:
            try:
                if not self.active and not await self._become_active():
                    await self.sleep(self.options.poll_interval)
                    continue
                handled = await self.publish_batch()
                outage = None
                await self._prune_if_due()
                if handled < self.options.batch_size:
                    await self._wait_for_rows()
            except _TRANSIENT as exc:
                await self._disconnect()
                outage = outage or _delays()
                delay = next(outage)
                log.warning("%s: database unavailable (%s); again in %.1fs", self.name, exc, delay)
                self.metrics.failures.labels(self.name, "connector.database").inc()
                await self.sleep(delay)
            except ConnectorError as exc:
                if exc.reason != "connector.retries_exhausted":
                    raise
                # The broker is down for longer than produce() retries: the rows stay in the
                # table, unmarked, and are read again when it is back.
                outage = outage or _delays()
                delay = next(outage)
                log.warning("%s: bus unavailable (%s); again in %.1fs", self.name, exc, delay)
                await self.sleep(delay)
            except psycopg.Error as exc:
                raise _fatal(exc, self) from exc

    async def on_stop(self) -> None:
        """Close the database connection (which releases the lock for a standby)."""
        await self._disconnect()

    async def publish_batch(self) -> int:
        """Publish the next batch of unpublished rows, in ``id`` order; how many were handled.

        Needs the lock (``run`` takes it). The rows are marked only after ``produce``
        returned, i.e. after the broker acknowledged every one of them.
        """
        conn = self._require_conn()
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE published_at IS NULL ORDER BY id LIMIT %s").format(
                sql.SQL(_COLUMNS), self._target
            ),
            (self.options.batch_size,),
        )
        rows = [_Row(*r) for r in await cur.fetchall()]
        if not rows:
            self._lag.set(0)
            return 0
        self._lag.set(max(0.0, time.time() - rows[0].created_at.timestamp()))
        events: list[Envelope | bytes] = []
        errors: list[str | None] = []
        for row in rows:
            event, error = self._event(row)
            errors.append(error)
            if event is not None:
                events.append(event)
            if error is not None:
                self.metrics.failures.labels(self.name, error.split(":", 1)[0]).inc()
                log.warning("%s: outbox row %d will be refused by the bus: %s",
                            self.name, row.id, error)  # fmt: skip
        await self.produce(events)
        await self._mark([r.id for r in rows], errors)
        self.published += len(events)
        return len(rows)

    async def prune(self) -> int:
        """Delete rows published more than ``retention_days`` ago; how many went.

        Rows with an ``error`` are kept: they are what someone still has to look at.
        """
        days = self.options.retention_days
        if days is None:
            return 0
        conn = self._require_conn()
        query = sql.SQL(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE published_at < now() - "
            "make_interval(secs => %s) AND error IS NULL LIMIT %s)"
        ).format(t=self._target)
        deleted = 0
        while not self.stopping:
            cur = await conn.execute(query, (days * 86400, RETENTION_CHUNK))
            deleted += cur.rowcount
            if cur.rowcount < RETENTION_CHUNK:
                break
        if deleted:
            log.info("%s: deleted %d outbox rows published over %g days ago",
                     self.name, deleted, days)  # fmt: skip
        return deleted

    # --- one row ----------------------------------------------------------------------------

    def _event(self, row: _Row) -> tuple[Envelope | bytes | None, str | None]:
        """The event to publish for a row and, if the bus will refuse it, why."""
        fields = {
            "event_id": str(row.event_id),
            "event_type": row.event_type,
            "schema_version": row.schema_version,
            "source": self.department,
            "occurred_at": row.occurred_at.isoformat(),
            "subject": row.aggregate_id,
            "correlation_id": row.correlation_id or "",
            "causation_id": str(row.causation_id) if row.causation_id else None,
        }
        error: str | None = None
        event: Envelope | None = None
        try:
            payload = load_json(row.payload, parse_float=Decimal)  # money stays exact
            event = self.codec.from_json({**fields, "payload": payload})
            self.directory.authorise(event.source, event.event_type)
            self.directory.policy.check(event)
        except BusError as exc:
            error = f"{exc.reason}: {exc.message}"
        limit = self.settings.max_event_bytes
        if event is not None and error is None:
            # The envelope's own fields take a few hundred bytes at most: only a large payload
            # needs the exact size of what goes, the Avro body.
            if len(row.payload.encode()) + ENVELOPE_BYTES <= limit:
                return event, None
            if (size := len(self.codec.encode(event))) <= limit:
                return event, None
        else:
            # Refused rows go as JSON with the payload exactly as stored, for the dead letter.
            text = json.dumps(fields, ensure_ascii=False)[:-1] + ', "payload": ' + row.payload
            raw = (text + "}").encode()
            if (size := len(raw)) <= limit:
                return raw, error
        return None, f"size.too_large: {size} bytes; the limit is {limit} (not sent)"

    # --- the database -----------------------------------------------------------------------

    async def _become_active(self) -> bool:
        """Connect if needed and try to take the table's lock; True when this replica leads."""
        if self._conn is None:
            self._conn = await self._connect()
        conn = self._conn
        cur = await conn.execute(
            "SELECT pg_try_advisory_lock(%s)", (lock_key(self.schema, self.table),)
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            if not self._standby:
                self._standby = True
                log.info("%s: standby: another replica publishes %s.%s",
                         self.name, self.schema, self.table)  # fmt: skip
            return False
        if self.options.create_table:
            await create_outbox(conn, self.schema, self.table)
        # Fails now, naming the table, rather than after publishing the first batch.
        await conn.execute(
            sql.SQL("SELECT {} FROM {} LIMIT 0").format(sql.SQL(_COLUMNS), self._target)
        )
        needed = ["SELECT", "UPDATE"] + (["DELETE"] if self.options.retention_days else [])
        cur = await conn.execute(
            "SELECT bool_and(has_table_privilege(%s, p)) FROM unnest(%s::text[]) AS p",
            (f"{self.schema}.{self.table}", needed),
        )
        if not (granted := await cur.fetchone()) or not granted[0]:
            raise ConnectorError(
                f"the database user needs {', '.join(needed)} on {self.schema}.{self.table}",
                reason="connector.outbox.privilege",
            )
        await conn.execute(
            sql.SQL("LISTEN {}").format(sql.Identifier(channel(self.schema, self.table)))
        )
        self.active = True
        self._standby = False
        log.info("%s: publishing %s.%s as %s", self.name, self.schema, self.table, self.department)
        return True

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        dsn = self.options.dsn.get_secret_value()
        given = conninfo_to_dict(dsn)
        # Defaults that make a dead peer show up within seconds, and the session findable.
        extra: dict[str, Any] = {
            "application_name": f"bus-outbox:{self.name}",
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        extra = {k: v for k, v in extra.items() if k not in given}
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, **extra)
        # A mark lost in a database crash only means that row is published again, which the
        # bus ignores: not worth a disk flush per batch.
        await conn.execute("SET synchronous_commit TO off")
        return conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.active = False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def _require_conn(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or not self.active:
            raise ConnectorError(f"{self.name}: not connected or not active",
                                 reason="connector.state")  # fmt: skip
        return self._conn

    async def _mark(self, ids: list[int], errors: list[str | None]) -> None:
        """Mark rows published (the step a crash may skip: then they are published again)."""
        await self._require_conn().execute(
            sql.SQL(
                "UPDATE {t} SET published_at = now(), error = v.error "
                "FROM unnest(%s::bigint[], %s::text[]) AS v(id, error) WHERE {t}.id = v.id"
            ).format(t=self._target),
            (ids, errors),
        )

    async def _wait_for_rows(self) -> None:
        """Until an insert notifies us, ``poll_interval`` passes, or we are stopped."""
        conn = self._require_conn()

        async def notified() -> None:
            async for _ in conn.notifies(stop_after=1):
                pass

        listen = asyncio.ensure_future(notified())
        pause = asyncio.ensure_future(self.sleep(self.options.poll_interval))  # ends on stop()
        try:
            await asyncio.wait({listen, pause}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listen, pause):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if listen.done() and not listen.cancelled():
            listen.result()  # a lost connection surfaces here

    async def _prune_if_due(self) -> None:
        if self.options.retention_days is None:
            return
        now = time.monotonic()
        if self._last_prune is None or now - self._last_prune >= RETENTION_EVERY:
            self._last_prune = now
            await self.prune()


def _delays() -> Iterator[float]:
    """Pauses while the database or the broker is away: quick at first, then every 30 s."""
    return Backoff(initial=0.5, maximum=30.0, attempts=None).delays()


def _fatal(exc: psycopg.Error, source: OutboxSource) -> ConnectorError:
    """A database error no retry will fix, said in terms of what to do about it."""
    where = f"{source.schema}.{source.table}"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        hint = "create it (create_table: true, or the SQL of outbox_ddl)"
        return ConnectorError(f"outbox table {where} does not exist: {hint}",
                              reason="connector.outbox.missing_table")  # fmt: skip
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        return ConnectorError(f"outbox table {where} lacks a column ({exc}); compare with "
                              "outbox_ddl", reason="connector.outbox.columns")  # fmt: skip
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ConnectorError(f"not allowed on {where}: {exc}",
                              reason="connector.outbox.privilege")  # fmt: skip
    return ConnectorError(f"database error on {where}: {exc}", reason="connector.outbox.database")


_LAG: weakref.WeakKeyDictionary[CollectorRegistry, Gauge] = weakref.WeakKeyDictionary()


def _lag_gauge(source: OutboxSource) -> Gauge:
    """The lag gauge of this source, one gauge per registry (sources may share one)."""
    registry = source.metrics.registry
    gauge = _LAG.get(registry)
    if gauge is None:
        gauge = _LAG[registry] = Gauge(
            "bus_outbox_lag_seconds", "Age of the oldest outbox row not yet published",
            ["connector"], registry=registry,
        )  # fmt: skip
    return gauge.labels(source.name)


__all__ = ["OutboxOptions", "OutboxSource", "create_outbox", "lock_key", "outbox_ddl"]
