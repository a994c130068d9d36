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
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bus.brokers import EmbeddedBroker
from bus.codec import EventCodec
from bus.processes import WorkerProcess
from bus.publish import Verdict, list_deadletters, publish_and_wait
from bus.samples import TOWN_NAMES, TOWNS, enterprise, penalty, registered
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.topics import create_topics


@dataclass(frozen=True)
class Scenario:
    """One published line and what the bus should do with it."""

    title: str
    data: bytes
    expect: str  # "accepted" or the dead-letter reason


def scenarios(seed: int = 2026) -> list[Scenario]:
    """The reference data set: registrations, penalties, a licence, a request, and bad input."""
    rng = random.Random(seed)
    codec = EventCodec()
    firms = [enterprise(rng) for _ in range(len(TOWNS))]
    firms = [
        type(f)(f.uscc, f.name, town, f.legal_representative, f.legal_representative_id)
        for f, town in zip(firms, TOWNS, strict=True)
    ]  # fmt: skip  (one per town)
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

    # What goes wrong in real life, and must end in dead letters with a reason.
    assert first_penalty is not None
    add("the same penalty published twice (a retry)", first_penalty, "duplicate.event_id")
    typo = first_penalty.model_dump(mode="json")
    del typo["event_id"]
    typo["subject"] = typo["subject"][:-1] + ("1" if typo["subject"].endswith("0") else "0")
    add("a penalty with a mistyped credit code", json.dumps(typo, ensure_ascii=False).encode(),
        "schema.uscc")  # fmt: skip
    foreign = first_penalty.model_dump(mode="json")
    foreign.update(source="ks.tax")
    del foreign["event_id"]
    add("the tax bureau tries to publish a penalty", json.dumps(foreign).encode(),
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


def run_demo(
    console: Console, *, engine: str = "noida", keep_running: bool = False, seed: int = 2026
) -> int:
    """Play the scenarios against a fresh embedded broker and worker; 0 when all went right."""
    workdir = Path(tempfile.mkdtemp(prefix="bus-demo-"))
    broker = EmbeddedBroker(engine, data_dir=workdir / "broker")  # type: ignore[arg-type]
    worker: WorkerProcess | None = None
    code = 1
    try:
        t0 = time.monotonic()
        broker.start()
        console.print(f"[bold]1.[/] {engine} broker on {broker.bootstrap}")
        settings = Settings(
            broker=broker.bootstrap, app_id="demo", topic_prefix="demo", partitions=3,
            data_dir=workdir / "var", web_port=0,
        )  # fmt: skip
        created = asyncio.run(create_topics(settings))
        console.print(
            f"[bold]2.[/] {len(created)} topics created ({settings.partitions} partitions)"
        )
        worker = WorkerProcess(settings, workdir / "worker.log").start()
        console.print(f"[bold]3.[/] worker ready in {time.monotonic() - t0:.1f}s "
                      f"(log: {worker.log_file})")  # fmt: skip
        plays = scenarios(seed)
        verdicts = asyncio.run(
            publish_and_wait(settings, [(i, s.data) for i, s in enumerate(plays, 1)], wait=20)
        )
        console.print(f"[bold]4.[/] {len(plays)} events published by departments")
        ok = _show(console, plays, verdicts)
        dead = asyncio.run(list_deadletters(settings))
        reasons = Counter(r.headers.get("bus.reason", "?") for r in dead)
        console.print("[bold]5.[/] dead letters by reason: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))  # fmt: skip
        if keep_running:
            console.print(f"\nKeeping it running: BUS_BROKER={broker.url} BUS_TOPIC_PREFIX=demo "
                          "— try `bus deadletters`. Ctrl-C to stop.")  # fmt: skip
            try:
                while worker.running:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        verdict = "[green]all events ended where they should[/]" if ok else "[red]unexpected[/]"
        console.print(f"[bold]6.[/] {verdict}; stopping")
        code = 0 if ok else 1
        return code
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"logs kept in {workdir}")


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
