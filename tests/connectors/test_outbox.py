"""The PostgreSQL outbox source against the real PostgreSQL, the real broker and a real worker.

Each test gets its own PostgreSQL schema (created, then dropped) in the database of the
``postgres_dsn`` fixture (tests/postgres.py: a throwaway cluster the suite starts, or
``BUS_TEST_POSTGRES``; no PostgreSQL is an error, not a skip), and a case system is played by
plain SQL: a ``cases`` row and an outbox row in one transaction.

Proves: what a committed transaction wrote is accepted once on the canonical topic, what a
rolled-back one wrote is never published; order per aggregate holds; a crash between
publishing and marking, or a SIGKILL of the ``bus connect`` process mid-stream, loses nothing
and has no second effect; SIGTERM stops it cleanly; a malformed row is dead-lettered with its
reason without holding up the rows after it; a second replica waits as a hot standby; a lost
database connection is re-made; retention deletes only old clean rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from bus.dev.processes import WorkerProcess, settings_env, terminate
from bus.dev.samples import enterprise, registered
from bus.errors import ConfigurationError, ConnectorError
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from connectors import contract, registry
from connectors.base import ConnectorMetrics, Source
from connectors.contract import (
    FAST,
    SourceContract,
    TopicWatcher,
    metric,
    wait_until,
)
from connectors.outbox import OutboxOptions, OutboxSource, create_outbox, outbox_ddl

pytestmark = pytest.mark.integration

DEPARTMENT = "ks.enforcement.huaqiao"
CASES = """CREATE TABLE {schema}.cases (
    id bigserial PRIMARY KEY, case_number text NOT NULL, uscc text NOT NULL,
    amount numeric NOT NULL, status text NOT NULL
)"""


# --- the case system ----------------------------------------------------------------------


def sample_events(n: int, *, subjects: int = 3) -> list[Envelope]:
    """Penalties as this bureau's case system decides them: in its own name (the policy)."""
    return [
        e.model_copy(update={
            "source": DEPARTMENT,
            "payload": e.payload.model_copy(update={"agency": DEPARTMENT}),
        })
        for e in contract.sample_events(n, subjects=subjects)
    ]  # fmt: skip


@dataclass
class CaseDatabase:
    """A department's case database: its own schema with ``cases`` and the outbox table."""

    dsn: str
    schema: str
    table: str = "bus_outbox"

    @classmethod
    async def create(cls, dsn: str, *, outbox: bool = True) -> CaseDatabase:
        db = cls(dsn, f"outbox_t{uuid.uuid4().hex[:10]}")
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
        async with conn:
            await conn.execute(f"CREATE SCHEMA {db.schema}".encode())
            await conn.execute(CASES.format(schema=db.schema).encode())
            if outbox:
                await create_outbox(conn, db.schema, db.table)
        return db

    async def drop(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE".encode())

    def connect(self) -> Any:
        return psycopg.AsyncConnection.connect(self.dsn, autocommit=True)

    async def write(self, conn: psycopg.AsyncConnection[Any], event: Envelope) -> None:
        """What a case system does when it decides a case: business row, then outbox row."""
        payload = json.loads(EventCodec.to_json(event))["payload"]
        await conn.execute(
            f"INSERT INTO {self.schema}.cases (case_number, uscc, amount, status) "
            "VALUES (%s, %s, %s, 'decided')".encode(),
            (payload["case_number"], event.subject, payload["amount"]),
        )
        await self.outbox(conn, event, payload)

    async def outbox(
        self, conn: psycopg.AsyncConnection[Any], event: Envelope, payload: Any = None
    ) -> None:
        if payload is None:
            payload = json.loads(EventCodec.to_json(event))["payload"]
        await conn.execute(
            f"""INSERT INTO {self.schema}.{self.table} (event_id, aggregate_id, event_type,
                payload, occurred_at, correlation_id) VALUES (%s, %s, %s, %s, %s, %s)""".encode(),
            (event.event_id, event.subject, event.event_type, json.dumps(payload),
             event.occurred_at, event.correlation_id),
        )  # fmt: skip

    async def commit(self, events: Sequence[Envelope], *, per_transaction: int = 50) -> None:
        async with await self.connect() as conn:
            for i in range(0, len(events), per_transaction):
                async with conn.transaction():
                    for e in events[i : i + per_transaction]:
                        await self.write(conn, e)

    async def rows(self) -> list[tuple[Any, ...]]:
        """``(id, event_id, published_at, error)`` of every outbox row, in id order."""
        async with await self.connect() as conn:
            cur = await conn.execute(
                f"SELECT id, event_id::text, published_at, error FROM {self.schema}.{self.table}"
                " ORDER BY id".encode()
            )
            return await cur.fetchall()

    async def pending(self) -> int:
        return sum(1 for r in await self.rows() if r[2] is None)

    def options(self, **overrides: Any) -> OutboxOptions:
        values = {"dsn": self.dsn, "schema": self.schema, "table": self.table,
                  "department": DEPARTMENT, "poll_interval": 0.2, **overrides}  # fmt: skip
        return OutboxOptions.model_validate(values)

    def source(self, settings: Settings, **kwargs: Any) -> OutboxSource:
        options = kwargs.pop("options", None) or self.options()
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("metrics", ConnectorMetrics())
        return OutboxSource(settings, options, **kwargs)


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[CaseDatabase]:
    database = await CaseDatabase.create(postgres_dsn)
    try:
        yield database
    finally:
        await database.drop()


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    with WorkerProcess(settings, tmp_path / "worker.log") as w:
        yield w


@contextlib.asynccontextmanager
async def serving(source: Source) -> AsyncIterator[asyncio.Task[None]]:
    """``serve()`` in the background; stopped (and its error raised) on the way out."""
    task = asyncio.create_task(source.serve())
    try:
        yield task
    finally:
        source.stop()
        await asyncio.wait_for(task, 10)


async def all_published(db: CaseDatabase, task: asyncio.Task[None] | None = None) -> None:
    async def done() -> bool:
        if task is not None and task.done():
            task.result()
        return await db.pending() == 0

    await wait_until(done, 30, "every outbox row published", every=0.1)


def watch(settings: Settings, name: str) -> TopicWatcher:
    return TopicWatcher(settings, settings.topic(name))


def ids(events: Sequence[Envelope]) -> list[str]:
    return [str(e.event_id) for e in events]


# --- the contract every source keeps -------------------------------------------------------


class TestOutboxSourceContract(SourceContract):
    database: CaseDatabase
    dsn: str

    @pytest.fixture(autouse=True)
    def _postgres(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    async def setup_outside(self) -> None:
        self.database = await CaseDatabase.create(self.dsn)

    async def teardown_outside(self) -> None:
        await self.database.drop()

    def make_connector(self, settings: Settings, **kwargs: Any) -> Source:
        return OutboxSource(settings, self.database.options(), **kwargs)

    async def feed(self, n: int) -> list[str]:
        events = sample_events(n)
        await self.database.commit(events, per_transaction=5)
        return ids(events)


# --- through the bus: canonical topics and dead letters -----------------------------------


async def test_a_committed_case_is_accepted_once_and_a_rolled_back_one_never(
    db: CaseDatabase, settings: Settings, worker: WorkerProcess
) -> None:
    committed, rolled_back = sample_events(2, subjects=2)
    async with await db.connect() as conn:
        async with conn.transaction():
            await db.write(conn, committed)
        async with conn.transaction():
            await db.write(conn, rolled_back)
            raise psycopg.Rollback()  # e.g. the case system failed after its outbox insert
    source = db.source(settings)
    async with (
        watch(settings, "events.penalty") as canonical,
        watch(settings, "ingress") as ingress,
    ):
        async with serving(source) as task:
            await all_published(db, task)
            await canonical.wait_count(1)
        await canonical.settle()
        await ingress.settle(0.2)
    assert canonical.ids() == [str(committed.event_id)]
    assert ingress.ids() == [str(committed.event_id)], "the rolled-back row reached the bus"
    got = EventCodec().decode(canonical.records[0].value or b"")
    assert got.source == DEPARTMENT  # the connector's department, whatever the row says
    assert got.subject == committed.subject
    assert got.payload == committed.payload
    assert got.occurred_at == committed.occurred_at
    assert canonical.records[0].key == committed.subject.encode()
    assert [r[1] for r in await db.rows()] == [str(committed.event_id)]
    assert metric(source, "bus_connector_deliveries_total", outcome="published") == 1


async def test_order_per_aggregate_is_kept_through_the_bus(
    db: CaseDatabase, settings: Settings, worker: WorkerProcess
) -> None:
    events = sample_events(240, subjects=5)
    await db.commit(events, per_transaction=9)
    source = db.source(settings, options=db.options(batch_size=7))
    async with watch(settings, "events.penalty") as canonical:
        async with serving(source) as task:
            await all_published(db, task)
            await canonical.wait_count(len(events))
        await canonical.settle()
    assert sorted(canonical.ids()) == sorted(ids(events))
    position = {eid: i for i, eid in enumerate(ids(events))}
    by_subject: dict[bytes | None, list[str]] = {}
    for r in canonical.records:
        by_subject.setdefault(r.key, []).append(r.headers["event_id"])
    assert len(by_subject) == 5
    for subject, seen in by_subject.items():
        assert seen == sorted(seen, key=position.__getitem__), f"out of order for {subject!r}"


async def test_a_malformed_row_is_dead_lettered_with_its_reason_and_blocks_nothing(
    db: CaseDatabase, settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"max_event_bytes": 4096})
    first, bad_uscc, no_amount, too_big, last = sample_events(5)
    rng = random.Random(5)
    not_ours = registered(enterprise(rng), rng)  # valid, but market regulation's to publish
    async with await db.connect() as conn:
        for event, payload in [
            (first, None),
            (bad_uscc.model_copy(update={"subject": bad_uscc.subject[:-1] + "?"}), None),
            (no_amount, {k: v for k, v in _payload(no_amount).items() if k != "amount"}),
            (not_ours, None),
            (too_big, {**_payload(too_big), "violation": "违" * 3000}),
            (last, None),
        ]:
            await db.outbox(conn, event, payload if payload is not None else _payload(event))
    source = db.source(s)
    with WorkerProcess(s, tmp_path / "worker.log"):
        async with watch(s, "events.penalty") as canonical, watch(s, "deadletter") as dead:
            async with serving(source) as task:
                await all_published(db, task)
                await canonical.wait_count(2)
                await dead.wait_count(3)
            await canonical.settle()
            await dead.settle(0.3)
    # Two subjects, two partitions: order holds per subject, not across them.
    assert sorted(canonical.ids()) == sorted([str(first.event_id), str(last.event_id)])
    reasons = {r.headers["event_id"]: r.headers["bus.reason"] for r in dead.records}
    assert reasons == {
        str(bad_uscc.event_id): "schema.uscc",
        str(no_amount.event_id): "schema.validation",
        str(not_ours.event_id): "auth.event_type",
    }
    refused = next(r for r in dead.records if r.headers["event_id"] == str(no_amount.event_id))
    assert (
        json.loads(refused.value or b"")["payload"]["case_number"]
        == _payload(no_amount)["case_number"]
    ), "the dead letter keeps the row's payload as stored"
    errors = {r[1]: r[3] for r in await db.rows()}
    assert errors[str(first.event_id)] is None
    assert errors[str(last.event_id)] is None
    assert errors[str(bad_uscc.event_id)].startswith("schema.uscc: ")
    assert errors[str(no_amount.event_id)].startswith("schema.validation: payload.amount")
    assert errors[str(not_ours.event_id)].startswith("auth.event_type: ")
    assert errors[str(too_big.event_id)].startswith("size.too_large: ")
    assert str(too_big.event_id) not in {r.headers.get("event_id") for r in dead.records}
    assert await db.pending() == 0, "every row is done with, none left to block the outbox"
    assert metric(source, "bus_connector_failures_total", reason="schema.uscc") == 1


def _payload(event: Envelope) -> Any:
    return json.loads(EventCodec.to_json(event))["payload"]


class CrashAfterProduce(OutboxSource):
    """Dies in the worst place: the broker has the events, the rows are not marked yet."""

    async def _mark(self, ids: list[int], errors: list[str | None]) -> None:
        raise RuntimeError("power cut before the rows were marked")


async def test_a_crash_between_publishing_and_marking_has_no_second_effect(
    db: CaseDatabase, settings: Settings, worker: WorkerProcess
) -> None:
    events = sample_events(30)
    await db.commit(events)
    options = db.options(batch_size=10)
    crashing = CrashAfterProduce(settings, options, backoff=FAST)
    async with (
        watch(settings, "events.penalty") as canonical,
        watch(settings, "deadletter") as dead,
    ):
        with pytest.raises(RuntimeError, match="power cut"):
            await asyncio.wait_for(crashing.serve(), 20)
        assert await db.pending() == len(events), "the crash came before any row was marked"
        source = db.source(settings, options=options)
        async with serving(source) as task:
            await all_published(db, task)
            await canonical.wait_count(len(events))
            await dead.wait_count(10)
        await canonical.settle()
        await dead.settle(0.3)
    assert Counter(canonical.ids()) == Counter(ids(events)), "lost or doubled across the crash"
    assert sorted(dead.ids()) == sorted(ids(events[:10])), "the re-sent batch, recognised"
    assert {r.headers["bus.reason"] for r in dead.records} == {"duplicate.event_id"}


# --- the real process: bus connect, SIGKILL and SIGTERM -----------------------------------


class LiveWriter(threading.Thread):
    """The case system deciding cases, a few per transaction, until told to finish."""

    def __init__(self, db: CaseDatabase, events: list[Envelope], chunk: int, pause: float) -> None:
        super().__init__(daemon=True)
        self.db, self.events, self.chunk, self.pause = db, events, chunk, pause
        self.written: list[Envelope] = []
        self._finish = threading.Event()

    def finish(self) -> list[Envelope]:
        """Stop writing; what was committed."""
        self._finish.set()
        self.join()
        return self.written

    def run(self) -> None:
        async def go() -> None:
            async with await self.db.connect() as conn:
                for i in range(0, len(self.events), self.chunk):
                    if self._finish.is_set():
                        return
                    chunk = self.events[i : i + self.chunk]
                    async with conn.transaction():
                        for e in chunk:
                            await self.db.write(conn, e)
                    self.written.extend(chunk)
                    await asyncio.sleep(self.pause)

        asyncio.run(go())


class ConnectProcess:
    """``bus connect NAME --config FILE``, exactly as an operator runs it."""

    def __init__(
        self, settings: Settings, config: Path, name: str, log_file: Path, env: dict[str, str]
    ) -> None:
        self.settings, self.config, self.name, self.log_file = settings, config, name, log_file
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectProcess:
        env = {**os.environ, **settings_env(self.settings), **self.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bus.cli", "connect", self.name, "--config",
                 str(self.config)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        return terminate(self.proc, timeout=60)  # SIGKILL only if it hangs


async def published_count(db: CaseDatabase) -> int:
    return sum(1 for r in await db.rows() if r[2] is not None)


@pytest.mark.e2e
async def test_bus_connect_killed_mid_stream_loses_nothing_and_stops_cleanly_on_sigterm(
    db: CaseDatabase, settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    backlog, live = sample_events(400, subjects=40), sample_events(3000, subjects=40)
    await db.commit(backlog)
    config = tmp_path / "connectors.yaml"
    options = {"dsn": "${CASES_DSN}", "schema": db.schema, "department": DEPARTMENT,
               "batch_size": 20, "poll_interval": 0.5}  # fmt: skip
    config.write_text(yaml.safe_dump({"connectors": [
        {"name": "huaqiao-cases", "kind": "outbox", "options": options}]}))  # fmt: skip
    connector = ConnectProcess(
        settings, config, "huaqiao-cases", tmp_path / "connect.log",
        env={"CASES_DSN": db.dsn},  # the file names the variable, not the password
    )  # fmt: skip
    writer = LiveWriter(db, live, chunk=10, pause=0.1)
    try:
        connector.start()
        writer.start()
        await wait_until(lambda: _at_least(db, 200), 60, "200 published rows")
        connector.kill()  # SIGKILL: a batch may be on the broker and not yet marked
        # Mid-stream: the case system goes on deciding cases (a chunk every 0.1 s), which
        # wait for the next run; a connector that had just caught up when it died has some
        # waiting again once the next chunk is written.
        await wait_until(db.pending, 30, "rows waiting after the kill (did the stream end?)")
        pending_at_kill = await db.pending()
        connector.start()
        restart = await published_count(db)
        await wait_until(lambda: _at_least(db, restart + 100), 60, "progress after the restart")
        assert connector.stop() == 0, connector.log()[-2000:]  # SIGTERM mid-stream
        await wait_until(db.pending, 30, "rows waiting after the stop (did the stream end?)")
        pending_at_term = await db.pending()
    finally:
        events = backlog + writer.finish()
        if connector.proc is not None and connector.proc.poll() is None:
            connector.kill()
    assert pending_at_kill > 0, "killed after the stream ended"
    assert pending_at_term > 0, "stopped after the stream ended"
    assert connector.log().count("huaqiao-cases stopped") == 1, connector.log()[-2000:]
    published = {r[1] for r in await db.rows() if r[2] is not None}
    async with (
        watch(settings, "events.penalty") as canonical,
        watch(settings, "deadletter") as dead,
    ):
        # A clean stop leaves no row on the bus that is not marked, and none marked but not
        # on the bus; the rest waits in the table.
        await canonical.wait_for(lambda _: published <= set(canonical.ids()), 60, "published")
        await canonical.settle(0.5)
        assert set(canonical.ids()) == published
        source = db.source(settings)  # the next run, whoever it is, finishes the table
        async with serving(source) as task:
            await all_published(db, task)
        await canonical.wait_count(len(events), timeout=60)
        await canonical.settle(0.5)
        await dead.settle(0.5)
    assert Counter(canonical.ids()) == Counter(ids(events)), "lost or doubled events"
    # The batch in flight at the SIGKILL may have been sent twice: the bus refused the copies.
    assert len(dead.records) <= 20
    assert {r.headers["bus.reason"] for r in dead.records} <= {"duplicate.event_id"}


async def _at_least(db: CaseDatabase, n: int) -> bool:
    return await published_count(db) >= n


# --- replicas, outages, retention, configuration -------------------------------------------


async def test_a_second_replica_waits_as_a_hot_standby_and_takes_over(
    db: CaseDatabase, settings: Settings
) -> None:
    first_events, later_events = sample_events(20), sample_events(10)
    a = db.source(settings, name="replica-a")
    b = db.source(settings, name="replica-b")
    async with watch(settings, "ingress") as ingress:
        async with serving(a) as task_a:
            await wait_until(lambda: a.active, 10, "replica a active")
            async with serving(b) as task_b:
                await db.commit(first_events)
                await all_published(db, task_a)
                assert (a.published, b.published, b.active) == (20, 0, False)
                await asyncio.wait_for(_stop(a, task_a), 10)  # a goes: b must take over
                await db.commit(later_events)
                await all_published(db, task_b)
                assert b.active
                assert b.published == 10
        await ingress.wait_count(30)
        await ingress.settle(0.3)
    assert Counter(ingress.ids()) == Counter(ids(first_events + later_events))


async def _stop(source: Source, task: asyncio.Task[None]) -> None:
    source.stop()
    await task


async def test_a_lost_database_connection_is_made_again(
    db: CaseDatabase, settings: Settings
) -> None:
    before, after = sample_events(5), sample_events(5)
    source = db.source(settings, name="reconnecting")
    async with watch(settings, "ingress") as ingress, serving(source) as task:
        await db.commit(before)
        await all_published(db, task)
        async with await db.connect() as admin:
            cur = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'bus-outbox:reconnecting'"
            )
            assert [r[0] for r in await cur.fetchall()] == [True]
        await db.commit(after)
        await all_published(db, task)
        await ingress.wait_count(10)
    assert sorted(ingress.ids()) == sorted(ids(before + after))
    assert metric(source, "bus_connector_failures_total", reason="connector.database") >= 1


async def test_an_insert_wakes_the_connector_without_waiting_for_the_poll(
    db: CaseDatabase, settings: Settings
) -> None:
    source = db.source(settings, options=db.options(poll_interval=60))
    async with serving(source) as task:
        await wait_until(lambda: source.active, 10, "active")
        await asyncio.sleep(0.3)  # it has looked once and found nothing: now it waits
        t0 = time.monotonic()
        await db.commit(sample_events(1))
        await all_published(db, task)
        took = time.monotonic() - t0
    # Half the poll: a busy machine's delay passes, a missed NOTIFY (60 s) does not.
    assert took < 30, f"published after {took:.1f}s: NOTIFY did not wake it (poll is 60s)"


async def test_retention_deletes_old_published_rows_and_keeps_the_rest(
    db: CaseDatabase, settings: Settings
) -> None:
    old, old_refused, recent, pending = sample_events(4)
    await db.commit([old, old_refused, recent])
    async with await db.connect() as conn:
        await conn.execute(
            f"UPDATE {db.schema}.{db.table} SET published_at = now() - interval '40 days', "
            "error = CASE WHEN event_id = %s THEN 'schema.uscc: x' END WHERE event_id IN (%s, %s)"
            "".encode(),
            (old_refused.event_id, old.event_id, old_refused.event_id),
        )
        await conn.execute(
            f"UPDATE {db.schema}.{db.table} SET published_at = now() - interval '2 days' "
            "WHERE event_id = %s".encode(),
            (recent.event_id,),
        )
    source = db.source(settings, options=db.options(retention_days=30))
    async with serving(source) as task:
        await wait_until(lambda: _gone(db, old), 10, "the old row deleted")
        await db.commit([pending])
        await all_published(db, task)
    left = {r[1] for r in await db.rows()}
    assert left == {str(e.event_id) for e in (old_refused, recent, pending)}


async def _gone(db: CaseDatabase, event: Envelope) -> bool:
    return str(event.event_id) not in {r[1] for r in await db.rows()}


async def test_a_missing_table_is_an_error_naming_it_or_is_created_when_asked(
    settings: Settings, postgres_dsn: str
) -> None:
    db = await CaseDatabase.create(postgres_dsn, outbox=False)
    try:
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(db.source(settings).serve(), 10)
        assert info.value.reason == "connector.outbox.missing_table"
        assert f"{db.schema}.bus_outbox" in info.value.message
        source = db.source(settings, options=db.options(create_table=True))
        events = sample_events(3)
        async with serving(source) as task:
            await wait_until(lambda: source.active, 10, "table created, connector active")
            await db.commit(events)
            await all_published(db, task)
        async with await db.connect() as conn:
            await create_outbox(conn, db.schema, db.table)  # a second time: no error, no change
        assert [r[1] for r in await db.rows()] == ids(events)
    finally:
        await db.drop()


async def test_a_database_user_that_cannot_mark_rows_is_refused_before_publishing(
    db: CaseDatabase, settings: Settings
) -> None:
    role = f"outbox_ro_{uuid.uuid4().hex[:8]}"
    async with await db.connect() as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN".encode())
        await admin.execute(f"GRANT USAGE ON SCHEMA {db.schema} TO {role}".encode())
        await admin.execute(f"GRANT SELECT ON {db.schema}.{db.table} TO {role}".encode())
    try:
        await db.commit(sample_events(2))
        dsn = psycopg.conninfo.make_conninfo(db.dsn, user=role)
        source = db.source(settings, options=db.options(dsn=dsn))
        with pytest.raises(ConnectorError) as info:
            await asyncio.wait_for(source.serve(), 10)
        assert info.value.reason == "connector.outbox.privilege"
        assert "UPDATE" in info.value.message
        published = metric(source, "bus_connector_deliveries_total", outcome="published")
        assert published == 0, "published rows it could never mark"
    finally:
        async with await db.connect() as admin:
            await admin.execute(f"DROP OWNED BY {role}".encode())
            await admin.execute(f"DROP ROLE {role}".encode())


def test_options_are_checked_when_the_file_is_read(settings: Settings, postgres_dsn: str) -> None:
    def build(**options: Any) -> Source:
        entry = registry.Entry(name="cases", kind="outbox", options=options)
        connector = registry.build(settings, entry)
        assert isinstance(connector, Source)
        return connector

    good: dict[str, Any] = {"dsn": postgres_dsn, "department": DEPARTMENT}
    source = build(**good, schema="cases", batch_size=50)
    assert isinstance(source, OutboxSource)
    assert source.name == "cases"
    assert (source.schema, source.table, source.options.batch_size) == ("cases", "bus_outbox", 50)
    assert "postgres" not in repr(source.options), "the DSN (and its password) is masked"
    bad_options: list[tuple[dict[str, Any], str]] = [
        ({**good, "tabel": "x"}, "options.tabel"),
        ({**good, "table": "Bus-Outbox"}, "options.table"),
        ({**good, "schema": "x; DROP TABLE cases"}, "options.schema"),
        ({"dsn": postgres_dsn}, "options.department"),
        ({**good, "batch_size": 0}, "options.batch_size"),
    ]
    for bad, says in bad_options:
        with pytest.raises(ConfigurationError, match=says):
            build(**bad)
    with pytest.raises(ConfigurationError, match=r"ks\.enforcement\.nowhere"):
        build(dsn=postgres_dsn, department="ks.enforcement.nowhere")
    assert "CREATE TABLE IF NOT EXISTS cases.bus_outbox" in outbox_ddl("cases")
    with pytest.raises(ValueError, match="table"):
        outbox_ddl("cases", "bus_outbox; DROP TABLE cases")
