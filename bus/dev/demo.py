"""``bus demo``: an embedded broker, a worker and a day of Kunshan's events, end to end.

Everything runs on this machine: the broker on a free loopback port, the worker as a real
``bus worker`` process, the departments as publishers. It shows what reached the canonical
topics and what was dead-lettered and why, then stops everything and exits 0 when every
event ended where it should have.
"""

from __future__ import annotations

import asyncio
import json
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bus.dev.brokers import free_port
from bus.dev.demo_edge import play_edge, start_gateway
from bus.dev.kafka_local import local_broker
from bus.dev.processes import WorkerProcess, terminate
from bus.dev.samples import TOWN_NAMES, TOWNS, Enterprise, enterprise, penalty, registered
from bus.edge.publish import Verdict, list_deadletters, publish_and_wait
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.client import BusClient, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics


@dataclass(frozen=True)
class Scenario:
    """One published line and what the bus should do with it."""

    title: str
    data: bytes
    expect: str  # "accepted" or the dead-letter reason


def _firms(rng: random.Random) -> list[Enterprise]:
    """One enterprise in each town (the same ones for the same seed)."""
    firms = [enterprise(rng) for _ in range(len(TOWNS))]
    return [Enterprise(f.uscc, f.name, town, f.legal_representative, f.legal_representative_id)
            for f, town in zip(firms, TOWNS, strict=True)]  # fmt: skip


def scenarios(seed: int = 2026) -> list[Scenario]:
    """The reference data set: registrations, penalties, a licence, a request, and bad input."""
    rng = random.Random(seed)
    codec = EventCodec()
    firms = _firms(rng)
    out: list[Scenario] = []

    def add(title: str, event: object, expect: str = "accepted") -> None:
        data = event if isinstance(event, bytes) else codec.to_json(event).encode()  # type: ignore[arg-type]
        out.append(Scenario(title, data, expect))

    for f in firms:
        add(f"{f.name} registers in {TOWN_NAMES[f.town]}", registered(f, rng))
    fined = firms[:4]
    first_penalty = None
    for n, f in enumerate(fined, 1):
        p = penalty(f, rng, n=n)
        first_penalty = first_penalty or p
        add(f"{TOWN_NAMES[f.town]} bureau fines {f.name}", p)
    licence = model_for("licence.granted")(
        event_type="licence.granted", source="ks.approval", subject=firms[5].uscc,
        payload={"licence_number": "JY13205830012345", "licence_type": "食品经营许可证",
                 "issuing_department": "ks.approval", "scope": "预包装食品销售",
                 "valid_from": date(2026, 3, 1), "valid_until": date(2031, 2, 28)},
    )  # fmt: skip
    add(f"approval bureau grants a food licence to {firms[5].name}", licence)
    request = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firms[6].uscc,
        payload={"period_start": date(2023, 1, 1), "period_end": date(2025, 12, 31),
                 "purpose": "ipo", "requested_by": "ks.finance", "applicant": "张伟"},
    )  # fmt: skip
    add(f"Financial Office requests a compliance certificate for {firms[6].name}", request)
    fined_holder = penalty(firms[5], rng, n=5)
    add(f"{TOWN_NAMES[firms[5].town]} bureau fines licence holder {firms[5].name}", fined_holder)
    application = model_for("approval.requested")(
        event_type="approval.requested", source="ks.approval", subject=firms[7].uscc,
        payload={"application_number": "KS-SP-2026-000123", "title": "建设工程施工许可",
                 "departments": ["ks.tax", "ks.hrss", f"ks.town.{firms[7].town.lower()}"],
                 "applicant": "王芳", "submitted_on": date(2026, 11, 2)},
    )  # fmt: skip
    add(f"approval bureau asks three offices about {firms[7].name}'s construction permit",
        application)  # fmt: skip

    # What goes wrong in real life, and must end in dead letters with a reason.
    assert first_penalty is not None
    add("the same penalty published twice (a retry)", first_penalty, "duplicate.event_id")
    typo = first_penalty.model_dump(mode="json")
    del typo["event_id"]
    typo["subject"] = typo["subject"][:-1] + ("1" if typo["subject"].endswith("0") else "0")
    add("a penalty with a mistyped credit code", json.dumps(typo, ensure_ascii=False).encode(),
        "schema.uscc")  # fmt: skip
    foreign = first_penalty.model_dump(mode="json")
    foreign.update(source="ks.finance")
    del foreign["event_id"]
    add("the Financial Office tries to publish a penalty", json.dumps(foreign).encode(),
        "auth.event_type")  # fmt: skip
    missing = first_penalty.model_dump(mode="json")
    del missing["event_id"], missing["payload"]["legal_basis"]
    add("a penalty without its legal basis", json.dumps(missing).encode(), "schema.validation")
    add("a CSV line sent to the JSON endpoint", b"91320583MA1XXXXX,fine,5000",
        "schema.decode")  # fmt: skip
    unknown = {"event_type": "permit.teleported", "source": "ks.amr", "subject": firms[0].uscc,
               "payload": {}}  # fmt: skip
    add("an event type nobody declared", json.dumps(unknown).encode(), "schema.unknown_type")
    return out


def _expected(v: Verdict, s: Scenario) -> bool:
    return v.accepted if s.expect == "accepted" else v.reason == s.expect


DATA_DIR = Path("var/demo")
"""The demo's ``BUS_DATA_DIR``: kept after it stops, for its signing key (see ``run_demo``)."""


def bus_command() -> str:
    """How to type ``bus`` in the shell that started this process.

    ``make demo`` runs ``.venv/bin/bus`` without putting ``.venv/bin`` on PATH, so a hint
    saying plain ``bus`` would fail for a newcomer: name the path unless PATH finds this one.
    """
    here = Path(sys.executable).parent / "bus"
    found = shutil.which("bus")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "bus"
    if not here.exists():
        return f"{shlex.quote(sys.executable)} -m bus.cli"
    try:
        return str(here.absolute().relative_to(Path.cwd()))
    except ValueError:
        return shlex.quote(str(here.absolute()))


def run_demo(
    console: Console, *, engine: str = "noida", keep_running: bool = False, seed: int = 2026,
    data_dir: Path = DATA_DIR,
) -> int:  # fmt: skip
    """Play the scenarios against a fresh embedded broker and worker; 0 when all went right.

    SIGTERM is taken as Ctrl-C, so that ``kill`` or a supervisor stopping the demo still stops
    its broker, worker and gateway instead of leaving them running. Ctrl-C stops it even when
    it was started with SIGINT ignored (Python then installs no handler of its own), as a
    background job of a script is. ``data_dir`` is kept: the certificates the demo signed stay
    verifiable with the public key in it after it stops.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run_demo(console, engine=engine, keep_running=keep_running, seed=seed,
                         data_dir=data_dir)  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_demo(
    console: Console, *, engine: str, keep_running: bool, seed: int, data_dir: Path
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bus-demo-"))  # broker data and logs
    data_dir = data_dir.absolute()
    # The broker is new each time: state a worker kept from an earlier run would not match it.
    # The signing key and the gateway's keys stay.
    shutil.rmtree(data_dir / "worker", ignore_errors=True)
    broker = local_broker(engine, data_dir=workdir / "broker", say=console.print)
    worker: WorkerProcess | None = None
    gateway: subprocess.Popen[bytes] | None = None
    code = 1
    try:
        t0 = time.monotonic()
        broker.start()
        console.print(f"[bold]1.[/] {engine} broker on {broker.bootstrap}")
        settings = Settings(
            broker=broker.url, app_id="demo", topic_prefix="demo", partitions=3,
            data_dir=data_dir, web_port=0, metrics_port=free_port(),
        )  # fmt: skip
        created = asyncio.run(create_topics(settings))
        console.print(
            f"[bold]2.[/] {len(created)} topics created ({settings.partitions} partitions)"
        )
        worker = WorkerProcess(settings, workdir / "worker.log").start()
        console.print(f"[bold]3.[/] worker ready in {time.monotonic() - t0:.1f}s "
                      f"(log: {worker.log_file}; metrics: http://127.0.0.1:"
                      f"{settings.metrics_port}/metrics)")  # fmt: skip
        plays = scenarios(seed)
        verdicts = asyncio.run(
            publish_and_wait(settings, [(i, s.data) for i, s in enumerate(plays, 1)], wait=60)
        )
        console.print(f"[bold]4.[/] {len(plays)} events published by departments")
        ok = _show(console, plays, verdicts)
        names = {json.loads(p.data)["subject"]: json.loads(p.data)["payload"]["name"]
                 for p in plays if b'"enterprise.registered"' in p.data}  # fmt: skip
        ok &= asyncio.run(_play_matters(console, settings, names))
        firms = _firms(random.Random(seed))
        gateway, url = start_gateway(settings, workdir / "edge.log")
        if url is None:
            console.print(f"[red]gateway did not start[/] (log: {workdir / 'edge.log'})")
            return code
        ok &= asyncio.run(play_edge(console, settings, workdir, url, firms[4], firms[8],
                                    firms[7]))  # fmt: skip
        dead = asyncio.run(list_deadletters(settings))
        reasons = Counter(r.headers.get("bus.reason", "?") for r in dead)
        console.print("[bold]7.[/] dead letters by reason: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))  # fmt: skip
        bus = bus_command()
        public_key = _shown(data_dir / "keys" / f"{settings.signing_key_id}.pub")
        if keep_running:
            env: dict[str, str] = {
                "BUS_BROKER": broker.url, "BUS_TOPIC_PREFIX": settings.topic_prefix,
                "BUS_APP_ID": settings.app_id, "BUS_PARTITIONS": str(settings.partitions),
                "BUS_DATA_DIR": str(data_dir),
            }  # fmt: skip
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            console.print(
                f"\nKeeping it running. To explore it from another shell, in this directory:\n"
                f"  export {exports}\n"
                f"  {bus} status; {bus} tasks; {bus} inbox ks.tax; {bus} trace {firms[0].uscc}\n"
                f"  {bus} certificate list; {bus} certificate export SERIAL -o c.json\n"
                f"  {bus} certificate verify c.json -k {public_key}\n"
                f"Gateway: {url} (OpenAPI at {url}/docs; a key: {bus} gateway keys issue "
                "ks.finance)\n"
                "Ctrl-C here to stop.", soft_wrap=True, highlight=False,
            )  # fmt: skip
            try:
                while worker.running:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        verdict = "[green]all events ended where they should[/]" if ok else "[red]unexpected[/]"
        console.print(f"[bold]8.[/] {verdict}; stopping")
        console.print(f"Kept: {_shown(data_dir)} (BUS_DATA_DIR): certificates the demo signed "
                      f"verify with {public_key}", soft_wrap=True, highlight=False)  # fmt: skip
        if engine != "kafka":
            console.print(f"The same on Apache Kafka (needs java and mvn): {bus} demo "
                          "--engine kafka", highlight=False)  # fmt: skip
        code = 0 if ok else 1
        return code
    finally:
        if gateway is not None:
            terminate(gateway, 15)
        if worker is not None:
            worker.stop()
        broker.stop()
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"logs kept in {workdir}")


def _shown(path: Path) -> str:
    """``path`` as short as the reader can use it: relative to here when it is below here."""
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))  # quoted: it is printed to be pasted into a shell


async def _published(settings: Settings) -> dict[str, datetime]:
    """When each event reached the bus: its ingress record's time, by event id.

    Cases are timed from here, not from the trigger's ``occurred_at``: a penalty decided in
    July and published today occurred months before the bus could act on it.
    """
    published: dict[str, datetime] = {}
    topic = settings.topic("ingress")
    async with aclosing(read_topic(settings, topic, to_end=True, max_seconds=60)) as records:
        async for r in records:
            event_id = r.headers.get("event_id")
            if event_id:
                published[event_id] = datetime.fromtimestamp(r.timestamp_ms / 1000, UTC)
    return published


async def _collect(settings: Settings, family: str, wanted: int) -> list[Envelope]:
    """The bus's own decisions on one canonical topic, up to ``wanted``.

    Waits for them as long as the worker keeps deciding: on a busy machine the next decision
    can come seconds after the last one.
    """
    codec = EventCodec()
    found: list[Envelope] = []
    topic = settings.topic(f"events.{family}")
    async with aclosing(read_topic(settings, topic, idle=30, max_seconds=60)) as records:
        async for r in records:
            event = codec.decode(r.value or b"")
            if event.source == "ks.bus":
                found.append(event)
                if len(found) >= wanted:
                    break

    return found


def fined_request(seed: int = 2026) -> Envelope:
    """A certificate request for the first enterprise the scenarios fined."""
    firm = _firms(random.Random(seed))[0]
    return model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": date(2025, 1, 1), "period_end": date(2026, 12, 31),
                 "purpose": "financing", "requested_by": "ks.finance", "applicant": "李娜"},
    )  # fmt: skip


async def _play_matters(console: Console, settings: Settings, names: dict[str, str]) -> bool:
    """The departments answer their tasks; show every case and how long it took.

    The certificate request for a fined enterprise comes now, after its penalty is on the
    record: the bus decides on what it holds when the request arrives.
    """
    async with BusClient(settings) as client:
        await client.publish(fined_request())
    published = await _published(settings)  # the triggers, to time the cases from
    tasks = [t for t in await _collect(settings, "task", 41) if t.event_type == "task.created"]
    by_matter = Counter(t.payload.matter for t in tasks)
    console.print("[bold]5.[/] cases opened: " + ", ".join(
        f"{m} {n} task(s)" for m, n in sorted(by_matter.items())))  # fmt: skip
    answers = []
    for t in tasks:
        if t.payload.matter == "compliance-certificate":
            answers.append(_reply(t, "task.completed", outcome="confirmed",
                                  note="处罚决定有效，已履行"))  # fmt: skip
        elif t.payload.matter == "parallel-approval":
            answers.append(_reply(t, "approval.opinion", opinion="approve",
                                  application_number=t.payload.evidence[0]))  # fmt: skip
    async with BusClient(settings) as client:
        await client.publish_many(answers)
    certificates = await _collect(settings, "certificate", 2)
    decisions = await _collect(settings, "approval", 1)
    table = Table("matter", "enterprise", "what the bus did", "request → decision",
                  title="Cases")  # fmt: skip
    for c in certificates:
        took = _took(c, published)
        record = ", ".join(e.case_number for e in c.payload.record) or "no penalty"
        table.add_row("compliance certificate", c.payload.enterprise_name,
                      f"certificate {c.payload.serial} signed: {c.payload.result} ({record})",
                      took)  # fmt: skip
    for d in decisions:
        took = _took(d, published)
        table.add_row("parallel approval", names.get(d.subject, d.subject),
                      f"{d.payload.application_number}: {d.payload.decision} "
                      f"({len(d.payload.opinions)} opinions)", took)  # fmt: skip
    for m in ("opening-a-business", "joint-discipline"):
        cases: dict[str, list[Envelope]] = {}
        for t in tasks:
            if t.payload.matter == m:
                cases.setdefault(t.subject, []).append(t)
        for subject, opened in cases.items():
            took = _took(opened[-1], published)
            who = ", ".join(f"{t.payload.assignee} by {t.payload.due_at:%m-%d}" for t in opened)
            what = f"{len(opened)} task(s): {who}"
            table.add_row(m.replace("-", " "), names.get(subject, subject), what,
                          f"{took} (tasks open)")  # fmt: skip
    console.print(table)
    results = sorted(c.payload.result for c in certificates)
    return (
        results == ["clean", "record_found"]
        and [d.payload.decision for d in decisions] == ["approve"]
        and by_matter == {"opening-a-business": 36, "joint-discipline": 1,
                          "compliance-certificate": 1, "parallel-approval": 3}
    )  # fmt: skip


def _took(decision: Envelope, published: dict[str, datetime]) -> str:
    """From the trigger reaching the bus to the decision, for the Cases table."""
    trigger = published.get(str(decision.causation_id))
    if trigger is None:
        return "trigger not found"
    return f"{(decision.occurred_at - trigger).total_seconds() * 1000:.0f} ms"


def _reply(task: Envelope, event_type: str, **payload: object) -> Envelope:
    body = {"task_id": task.payload.task_id, **payload}
    if event_type == "approval.opinion":
        del body["task_id"]
    return model_for(event_type)(
        event_type=event_type, source=task.payload.assignee, subject=task.subject,
        correlation_id=task.correlation_id, causation_id=task.event_id, payload=body,
    )  # fmt: skip


def _show(console: Console, plays: list[Scenario], verdicts: list[Verdict]) -> bool:
    table = Table("#", "what happened", "verdict", "as expected", title="What the bus did")
    all_ok = True
    for i, (s, v) in enumerate(zip(plays, verdicts, strict=True), 1):
        ok = _expected(v, s)
        all_ok &= ok
        if v.accepted:
            text = f"[green]accepted[/] → {v.topic}"
        elif v.reason:
            text = f"[yellow]dead letter[/] {v.reason}: {v.error}"
        else:
            text = "[red]no verdict[/]"
        table.add_row(str(i), s.title, text, "✓" if ok else "[red]✗[/]")
    console.print(table)
    return all_ok
