"""The demo's department edge: systems that join the bus without speaking Kafka.

* a town enforcement bureau publishes a penalty through the HTTP gateway;
* another bureau's case system writes its case row and an outbox row in one PostgreSQL
  transaction, and the outbox connector (``bus connect``) publishes it;
* the Financial Office asks for a compliance certificate through the gateway and receives
  it, signed, at its own HTTP endpoint from the webhook sink (``bus connect``).

Every part is the real process an operator runs: ``bus gateway run`` and two ``bus connect``
children. PostgreSQL is optional: without one at ``BUS_DEMO_POSTGRES`` the outbox part is
skipped and says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bus.dev.brokers import free_port
from bus.dev.processes import settings_env, terminate
from bus.dev.samples import TOWN_NAMES, Enterprise, penalty, town_code
from bus.edge.gateway.keys import issue_key, keys_path
from bus.settings import Settings
from bus.streaming.codec import EventCodec

POSTGRES = os.environ.get("BUS_DEMO_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class _Receiver:
    """The Financial Office's endpoint: an HTTP server that checks each delivery's signature."""

    public_key_dir: Path
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        from bus.domain.certificates import Verifier
        from connectors.webhook import verify_webhook

        body = await request.read()
        keys = Verifier.from_paths([self.public_key_dir]).keys
        try:
            batch = verify_webhook(request.headers, body, keys=keys, department="ks.finance")
        except Exception as exc:
            self.refused.append(str(exc))
            return web.Response(status=401, text=str(exc))
        self.deliveries.extend(batch["deliveries"])
        self.arrived.set()
        return web.Response(status=204)


def _spawn(args: list[str], settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    quiet = settings.model_copy(update={"metrics_port": 0})  # the worker has the demo's port
    env = {**os.environ, **settings_env(quiet), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip


async def _until(check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    return None


def start_gateway(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str | None]:
    """``bus gateway run`` on a free port, and its URL once ``/healthz`` answers (None if not).

    The caller stops it: ``bus demo --keep-running`` keeps it up for people to explore.
    """
    port = free_port()
    proc = _spawn(["bus.cli.gateway", "run", "--port", str(port), "--log-level", "warning"],
                  settings, log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if http.get("/healthz").status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    return proc, None


async def play_edge(
    console: Console, settings: Settings, workdir: Path, url: str, by_gateway: Enterprise,
    by_outbox: Enterprise, certified: Enterprise,
) -> bool:  # fmt: skip
    """Publish through the gateway at ``url``, run the webhook sink and the outbox connector.

    True when everything arrived where it should.
    """
    from aiohttp import web

    codec = EventCodec()
    rows: list[tuple[str, str, str]] = []  # what, how, outcome
    ok = True
    receiver = _Receiver(settings.data_dir / "keys")
    app = web.Application()
    app.router.add_post("/bus-inbox", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    connectors = workdir / "connectors.yaml"
    schema = f"demo_{uuid.uuid4().hex[:8]}"
    pg = await _postgres(schema)
    entries = [{"name": "finance-webhook", "kind": "webhook", "options": {
        "department": "ks.finance", "url": f"http://127.0.0.1:{hook_port}/bus-inbox"}}]  # fmt: skip
    bureau = town_code(by_outbox.town)
    if pg is not None:
        entries.append({"name": "cases-outbox", "kind": "outbox", "options": {
            "dsn": POSTGRES, "schema": schema, "department": bureau, "create_table": False,
            "poll_interval": 0.2}})  # fmt: skip
    connectors.write_text(json.dumps({"connectors": entries}))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = workdir / "edge.log"
        procs.append(_spawn(["bus.cli", "connect", "finance-webhook", "--config",
                             str(connectors)], settings, log))  # fmt: skip
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=20))
            console.print(f"[bold]6.[/] department edge: gateway on {url} (OpenAPI at "
                          f"{url}/docs), webhook sink to the Financial Office's endpoint "
                          f":{hook_port}")  # fmt: skip

            # A bureau without Kafka publishes over HTTP.
            fine = penalty(by_gateway, __import__("random").Random(7), n=6)
            key = issue_key(keys_path(settings.data_dir), fine.source)
            body = json.loads(codec.to_json(fine))
            r = await http.post("/v1/events", json=body, headers={"Authorization": f"Bearer {key}"})
            ok &= r.status_code == 202
            answer = f"{r.status_code} {r.json().get('status', r.text)}"
            rows.append((f"{TOWN_NAMES[by_gateway.town]} bureau fines {by_gateway.name}",
                         "HTTP gateway", answer))  # fmt: skip

            # A case system with an outbox table: business row and event in one transaction.
            if pg is not None:
                procs.append(_spawn(["bus.cli", "connect", "cases-outbox", "--config",
                                     str(connectors)], settings, log))  # fmt: skip
                ok &= await _outbox_case(pg, schema, by_outbox, bureau, settings, rows)
            else:
                why = f"skipped: no PostgreSQL at {POSTGRES} (set BUS_DEMO_POSTGRES)"
                rows.append(("a case system's outbox", "PostgreSQL outbox", why))

            # The Financial Office asks over HTTP and receives the certificate at its endpoint.
            fin = issue_key(keys_path(settings.data_dir), "ks.finance")
            request = {"event_type": "certificate.requested", "subject": certified.uscc,
                       "payload": {"period_start": "2024-01-01", "period_end": "2026-10-31",
                                   "purpose": "financing", "requested_by": "ks.finance",
                                   "applicant": "陈静"}}  # fmt: skip
            t0 = time.perf_counter()
            r = await http.post("/v1/events", json=request,
                                headers={"Authorization": f"Bearer {fin}"})  # fmt: skip
            # The answer to this request, by its id: the Financial Office's endpoint also
            # receives the certificates of every earlier request (the demo's, anyone's).
            request_id = str(r.json().get("event_id", "")) if r.status_code == 202 else ""
            if r.status_code != 202:
                rows.append(("Financial Office's request", "HTTP gateway",
                             f"[red]{r.status_code}[/] {r.text}"))  # fmt: skip
                ok = False
            try:
                cert = await asyncio.wait_for(_certificate(receiver, request_id), 60)
                took = (time.perf_counter() - t0) * 1000
                ok &= cert["subject"] == certified.uscc
                rows.append((f"Financial Office asks for {certified.name}'s certificate",
                             "gateway in, webhook out",
                             f"certificate {cert['payload']['serial']} "
                             f"({cert['payload']['result']}) at its endpoint, signature "
                             f"checked, {took:.0f} ms after the request"))  # fmt: skip
            except TimeoutError:
                ok = False
                rows.append(("Financial Office's certificate", "webhook",
                             f"[red]not delivered[/] {receiver.refused[:1]}"))  # fmt: skip
    finally:
        for p in procs:
            terminate(p, 15)
        await runner.cleanup()
        if pg is not None:
            async with pg:
                await pg.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
    table = Table("what", "how", "outcome", title="Departments without Kafka")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return ok


def certificate_for(deliveries: list[dict[str, Any]], request_id: str) -> dict[str, Any] | None:
    """The ``certificate.issued`` that answers the request ``request_id``, if delivered."""
    for d in deliveries:
        event = d["event"]
        if (
            event["event_type"] == "certificate.issued"
            and event["payload"].get("request_event_id") == request_id
        ):
            return dict(event)
    return None


async def _certificate(receiver: _Receiver, request_id: str) -> dict[str, Any]:
    """Wait for the certificate that answers ``request_id`` to reach the endpoint."""
    while (cert := certificate_for(receiver.deliveries, request_id)) is None:
        receiver.arrived.clear()
        await receiver.arrived.wait()
    return cert


async def _postgres(schema: str) -> Any:
    """A connection with the outbox table made in ``schema``, or None without PostgreSQL."""
    try:
        import psycopg

        from connectors.outbox import create_outbox

        conn = await psycopg.AsyncConnection.connect(POSTGRES, connect_timeout=3)
    except Exception:
        return None
    await create_outbox(conn, schema)
    return conn


async def _outbox_case(
    conn: Any, schema: str, firm: Enterprise, bureau: str, settings: Settings,
    rows: list[tuple[str, str, str]],
) -> bool:  # fmt: skip
    """The bureau's case system closes a case: its row and the event in one transaction."""
    from bus.streaming.client import read_topic

    event = penalty(firm, __import__("random").Random(8), n=7)
    p = event.payload.model_dump(mode="json")
    async with conn.transaction():
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.cases (case_number text "
                           "PRIMARY KEY, uscc text, closed_on date)".encode())  # fmt: skip
        await conn.execute(f"INSERT INTO {schema}.cases VALUES (%s, %s, %s)".encode(),
                           (p["case_number"], firm.uscc, date.today()))  # fmt: skip
        await conn.execute(
            f"INSERT INTO {schema}.bus_outbox (event_id, aggregate_id, event_type, payload) "
            "VALUES (%s, %s, 'penalty.imposed', %s::jsonb)".encode(),
            (event.event_id, firm.uscc, json.dumps({**p, "agency": bureau})),
        )

    async def published() -> bool:
        async for r in read_topic(settings, settings.topic("events.penalty"), idle=0.3):
            if r.headers.get("event_id") == str(event.event_id):
                return True
        return False

    done = await _until(published, 60)
    rows.append((f"{TOWN_NAMES[firm.town]} bureau's case system closes a case on {firm.name}",
                 "PostgreSQL outbox", "accepted on the canonical topic" if done
                 else "[red]not published[/]"))  # fmt: skip
    return bool(done)
