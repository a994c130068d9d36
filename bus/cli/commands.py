"""The ``bus`` command: one entry point for people and scripts.

Every command reads its settings from ``BUS_*`` environment variables (``bus settings``
shows them); options on a command override them for that run.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from rich.console import Console
from rich.text import Text

from bus.cli.certificate import certificate_app
from bus.cli.connect import connect
from bus.cli.decision import decision_app
from bus.cli.gateway import gateway_app
from bus.cli.imports import import_file
from bus.cli.matters import matters_app
from bus.cli.report import report_app
from bus.cli.support import (
    SERIAL_WIDTH,
    USCC_WIDTH,
    UUID_WIDTH,
    BrokerOpt,
    TzOpt,
    copyable,
    load_settings,
    local_time,
    need_topics,
    time_zone,
    whole_table,
)
from bus.cli.tasks import inbox, tasks
from bus.errors import BusError, ConfigurationError
from bus.settings import Settings

app = typer.Typer(
    help="The inter-departmental collaboration bus: publish, route and correlate events "
    "between department systems over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topics_app = typer.Typer(
    help="Create and list the bus's topics; print the departments' Kafka users and ACLs.",
    no_args_is_help=True,
)
schemas_app = typer.Typer(help="Inspect and export the Avro schemas.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(certificate_app, name="certificate")
app.add_typer(report_app, name="report")
app.add_typer(decision_app, name="decision")
app.add_typer(gateway_app, name="gateway")
app.add_typer(schemas_app, name="schemas")
app.add_typer(matters_app, name="matters")
app.command("connect")(connect)
app.command("import")(import_file)

console = Console()
err = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"bus {version('collaboration-bus')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("bus (version unknown: not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", help="Show the version and exit.", is_eager=True,
                     callback=_show_version),
    ] = False,
) -> None:  # fmt: skip
    """The inter-departmental collaboration bus."""


def _settings(broker: str | None = None, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if broker:
        values["broker"] = broker
    return load_settings(**values)


def _fail(exc: BaseException, hint: str = "") -> typer.Exit:
    err.print(f"[red]error:[/] {exc}")
    if hint:
        err.print(hint)
    return typer.Exit(1)


@app.command()
def settings() -> None:
    """Show the effective settings (secrets masked)."""
    console.print_json(json.dumps(_settings().dump()))


@app.command()
def broker(
    engine: Annotated[
        str,
        typer.Option(
            help="kafka (Apache Kafka from Maven Central: needs java and mvn), "
            "noida (persistent, Python only) or tansu (memory only)."
        ),
    ] = "noida",
    port: Annotated[
        int, typer.Option(help="Loopback port (the first node's); 0 picks free ones.")
    ] = 9092,
    nodes: Annotated[int, typer.Option(help="Kafka nodes: 1, or 3 for a replicated cluster.")] = 1,
    data_dir: Annotated[Path, typer.Option(help="Where the broker keeps its data.")] = Path(
        "var/broker"
    ),
    sasl: Annotated[
        bool,
        typer.Option(
            help="Kafka only: clients log in (SASL SCRAM-SHA-512) and ACLs decide; the bus's "
            "user `bus` is the super user."
        ),
    ] = False,
) -> None:
    """Run a broker on 127.0.0.1 until Ctrl-C (development and tests, never production)."""
    from bus.dev.kafka_local import SUPER_USER, KafkaCluster, local_broker

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        b = local_broker(
            engine, nodes=nodes, port=port or None, data_dir=data_dir, say=err.print, sasl=sasl
        )
        b.start()
    except BusError as exc:
        raise _fail(exc, "Is the port taken? Try --port 0 for free ones.") from None
    console.print(f"{engine} broker listening; use [bold]BUS_BROKER={b.url}[/]")
    if isinstance(b, KafkaCluster):
        if sasl:
            login = f"BUS_SASL_USERNAME={SUPER_USER} BUS_SASL_PASSWORD={b.bus_password}"
            console.print(f"log in as [bold]{login}[/] (kept in {data_dir})")
        tools = f"PATH={b.tools_dir}:$PATH, --command-config {b.admin_config}"
        console.print(f"Kafka's tools: {tools}", highlight=False)
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        b.stop()
        console.print("broker stopped")


@topics_app.command("create")
def topics_create(broker: BrokerOpt = None) -> None:
    """Create every topic of the catalogue that does not exist yet (idempotent)."""
    from rich.progress import Progress

    from bus.streaming.topics import create_topics, partitions_on_broker

    s = _settings(broker)
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("creating topics", total=None)

            def step(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            created = asyncio.run(create_topics(s, progress=step))
        counts = asyncio.run(partitions_on_broker(s))
    except Exception as exc:
        raise _fail(exc, f"Is a broker running at {s.broker}? (bus broker starts one)") from None
    for name in created:
        console.print(f"created {name}")
    by_count = Counter(have for have, _ in counts.values())
    on_broker = ", ".join(f"{n} with {p} partition{'s' if p != 1 else ''}"
                          for p, n in sorted(by_count.items(), reverse=True))  # fmt: skip
    console.print(f"{len(created)} created, topics up to date; on the broker: {on_broker}")
    differ = sorted({have for have, want in counts.values() if have != want})
    if differ:
        err.print(f"[yellow]BUS_PARTITIONS is {s.partitions}, but topics on the broker have "
                  f"{', '.join(map(str, differ))}: set BUS_PARTITIONS to what they have (a new "
                  "count needs new topics: docs/operations.md, Sizing)[/]")  # fmt: skip


@topics_app.command("acls")
def topics_acls(
    department: Annotated[
        list[str] | None,
        typer.Option(help="Only this department (repeatable); every one by default."),
    ] = None,
    bootstrap_server: Annotated[
        str | None, typer.Option(help="The tools' --bootstrap-server; BUS_BROKER's by default.")
    ] = None,
    command_config: Annotated[
        str, typer.Option(help="The admin's client properties, for the tools.")
    ] = "admin.properties",
    secrets: Annotated[
        str, typer.Option(help="Folder of password files, one per principal, named by it.")
    ] = "secrets",
    worker: Annotated[
        str | None,
        typer.Option(help="Instead: the lines for the workers' principal of this name."),
    ] = None,
) -> None:
    """Print the kafka-configs.sh and kafka-acls.sh lines that make departments principals.

    Each department (User:<code>) gets a SCRAM user and may write only its own ingress topic,
    read only its own inbox, and use consumer groups named <code>.*; with --worker, the
    workers' principal gets what `bus worker` uses. The output is a shell script
    (docs/operations.md).
    """
    from bus.domain.departments import Directory
    from bus.streaming.acls import acl_commands, worker_acl_commands

    s = _settings()
    try:
        directory = Directory.load(s.departments_file, s.policy_file)
        if worker:
            lines = worker_acl_commands(s, worker, bootstrap=bootstrap_server,
                                        command_config=command_config, secrets=secrets)  # fmt: skip
        else:
            lines = acl_commands(
                s, directory, departments=department or (), bootstrap=bootstrap_server,
                command_config=command_config, secrets=secrets,
            )  # fmt: skip
    except BusError as exc:
        raise _fail(exc) from None
    for line in lines:  # plain: a terminal-wide console would wrap the commands
        typer.echo(line)


@topics_app.command("list")
def topics_list() -> None:
    """Show the catalogue: names, roles, retention, compaction (an inbox and an own ingress per
    department)."""
    from bus.streaming.topics import full_catalogue

    s = _settings()
    t = whole_table("topic", "role", "retention", "description")
    for spec in full_catalogue(s):
        days = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms // 86_400_000} days"
        t.add_row(s.topic(spec.name), spec.role, days, spec.description)
    console.print(t)


@app.command()
def worker(
    broker: BrokerOpt = None,
    loglevel: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run a worker: the Faust app with every agent. Start more to scale out.

    BUS_PROCESSING_GUARANTEE: exactly_once (each batch's outputs, state and offsets in one
    Kafka transaction), at_least_once, or auto (the default: exactly once where the broker
    has transactions, else at least once with a warning).
    """
    from faust import Worker

    from bus.agents.app import create_app

    s = _settings(broker)
    fapp, _ = create_app(s)
    w = Worker(fapp, loglevel=loglevel, redirect_stdouts=False)
    # Faust's progress spinner turns the root logger to DEBUG at --loglevel warning and
    # above, which makes every aiokafka debug call build a log record: ~10x slower.
    w.spinner = None
    w.execute_from_commandline()


def _read_events(source: str | None, event: str | None) -> Iterator[tuple[int, bytes]]:
    if event is not None:
        yield 1, event.encode()
        return
    stream = sys.stdin if source in (None, "-") else open(source, encoding="utf-8")  # noqa: SIM115
    with stream:
        text = stream.read()
    stripped = text.strip()
    if stripped.startswith("{") and "\n{" not in stripped:  # one (possibly pretty) JSON object
        yield 1, stripped.encode()
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, line.strip().encode()


@app.command()
def publish(
    file: Annotated[
        str | None, typer.Argument(help="JSON event or JSON-lines file; '-' or none: stdin.")
    ] = None,
    event: Annotated[str | None, typer.Option("--event", "-e", help="One JSON event.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the verdicts; 0: don't.")] = 15,
    broker: BrokerOpt = None,
) -> None:
    """Publish events to the ingress topic and show which the bus accepted and why not.

    Events without an event_id get one. Exit status: 0 all accepted, 1 some rejected or no
    verdict in time.
    """
    from bus.edge.publish import publish_and_wait

    s = _settings(broker)
    lines = list(_read_events(file, event))
    need_topics(s)
    try:
        results = asyncio.run(publish_and_wait(s, lines, wait))
    except BusError as exc:
        raise _fail(exc) from None
    t = whole_table("line", copyable("event_id", UUID_WIDTH), "event_type", "verdict")
    bad = 0
    for r in results:
        if r.accepted:
            verdict = f"[green]accepted[/] → {r.topic}"
        elif r.reason and r.stage not in (None, "ingest"):  # accepted, then refused
            bad += 1
            verdict = f"[red]refused[/] by the {r.stage} agent: {r.reason}: {r.error}"
        elif r.reason:
            bad += 1
            verdict = f"[red]rejected[/] {r.reason}: {r.error}"
        else:
            bad += wait > 0
            verdict = "published" if wait == 0 else "[yellow]no verdict yet[/] (is a worker up?)"
        t.add_row(str(r.line), r.event_id or "-", r.event_type or "-", verdict)
    console.print(t)
    console.print(f"{len(results)} published, {sum(r.accepted for r in results)} accepted")
    raise typer.Exit(1 if bad else 0)


deadletters_app = typer.Typer(
    help="List dead letters (the default) in the order they were dead-lettered, newest last, "
    "with time, department, reason and replay history; or show one, or replay them after a fix.",
    invoke_without_command=True,
)
app.add_typer(deadletters_app, name="deadletters")


@deadletters_app.callback()
def deadletters(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Only this reason (prefix match).")] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Only from this department, or codes under it (ks.enforcement)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only dead-lettered since: a duration ago (30m, 2h, 1d, 1w) or a "
            "date or date-time, UTC unless it names a zone (2026-05-01T08:30)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(help="The newest this many (0: all), shown oldest first, newest last.")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines for scripts.")] = False,
    broker: BrokerOpt = None,
) -> None:
    """List dead letters with their reasons, in the order they were dead-lettered.

    Each shows when, which department published the event, where it stood (its origin,
    which `show` and `replay --origin` take), why, and whether it is a replay of an earlier
    letter or was itself replayed.
    """
    from bus.edge.publish import (
        list_deadletters,
        rejected_at_ms,
        replay_link,
        replayed_origins,
        select_deadletters,
        since_ms,
        source_of,
    )

    if ctx.invoked_subcommand is not None:
        return
    try:
        after = since_ms(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    s = _settings(broker)
    need_topics(s)

    async def read() -> tuple[list[Any], dict[str, str | None]]:
        return await list_deadletters(s), await replayed_origins(s)

    letters, done = asyncio.run(read())
    rows = select_deadletters(letters, reason=reason, source=source, since=after, limit=limit)

    def when(r: Any) -> str:
        return f"{datetime.fromtimestamp(rejected_at_ms(r) / 1000, UTC):%Y-%m-%d %H:%M:%S}"

    def replay(r: Any) -> str:
        link = replay_link(r)
        said = [f"replay {link.count} of {link.first}"] if link else []
        if r.headers.get("bus.origin") in done:
            said.append("replayed")
        return "; ".join(said)

    if as_json:
        for r in rows:
            h, link = r.headers, replay_link(r)
            typer.echo(json.dumps({
                "time": when(r) + "Z", "rejected_at": rejected_at_ms(r), "source": source_of(r),
                "origin": h.get("bus.origin"), "reason": h.get("bus.reason"),
                "error": h.get("bus.error"), "field": h.get("bus.field"),
                "stage": h.get("bus.stage"), "letter": f"{r.topic}/{r.partition}/{r.offset}",
                "replay_of": link.of if link else None,
                "replay_first": link.first if link else None,
                "replay_count": link.count if link else 0,
                "replayed": h.get("bus.origin") in done,
                "value": (r.value or b"").decode(errors="replace"),
            }, ensure_ascii=False))  # fmt: skip
        return
    # Text cells, not markup: an error sentence may hold [brackets] Rich would swallow.
    t = whole_table("dead-lettered (UTC)", "source", "origin", "reason", "field", "error", "replay")
    for r in rows:
        h = r.headers
        t.add_row(*(Text(v) for v in (
            when(r), source_of(r) or "?", h.get("bus.origin", "?"), h.get("bus.reason", "?"),
            h.get("bus.field", ""), h.get("bus.error", ""), replay(r),
        )))  # fmt: skip
    console.print(t)
    console.print(f"{len(rows)} dead letters shown")


async def _issued(s: Settings, kind: str = "certificate") -> tuple[list[Any], int]:
    """Issued certificates (or reports) whose signature verifies with the bus's keys, and how
    many did not.

    Only what the bus signed is shown or exported: a ``certificate.issued`` that reached the
    topic some other way is counted, never listed.
    """
    from bus.domain.certificates import SignedCertificate, Verifier
    from bus.domain.reports import SignedReport
    from bus.streaming.client import read_topic
    from bus.streaming.codec import EventCodec

    codec = EventCodec()
    issued = [
        codec.decode(r.value or b"")
        async for r in read_topic(s, s.topic(f"events.{kind}"), to_end=True, max_seconds=60)
        if r.headers.get("event_type") == f"{kind}.issued"
    ]
    if not issued:
        return [], 0
    verifier = Verifier.from_paths([s.data_dir / "keys"])
    document = SignedCertificate if kind == "certificate" else SignedReport
    good = []
    for event in issued:
        try:
            doc = document.from_payload(event.payload, uscc=event.subject)
            verifier.check_document(doc.model_dump(mode="json"), kind)
        except (BusError, ValueError):
            continue
        good.append(event)
    return good, len(issued) - len(good)


def _verified(s: Settings, kind: str = "certificate") -> list[Any]:
    need_topics(s)
    try:
        issued, refused = asyncio.run(_issued(s, kind))
    except ConfigurationError as exc:
        raise _fail(exc, "The bus's public keys are in BUS_DATA_DIR/keys.") from None
    if refused:
        err.print(f"[yellow]{refused} {kind}.issued on the topic do not verify with the "
                  "bus's keys and are not shown[/]")  # fmt: skip
    return issued


@certificate_app.command("list")
def certificate_list(
    uscc: Annotated[str | None, typer.Option(help="Only this enterprise.")] = None,
    broker: BrokerOpt = None,
) -> None:
    """List issued certificates whose signature verifies: serial, enterprise, result, when."""
    s = _settings(broker)
    t = whole_table(
        copyable("serial", SERIAL_WIDTH),
        copyable("uscc", USCC_WIDTH),
        "enterprise",
        "result",
        "issued at",
    )
    for e in sorted(_verified(s), key=lambda e: e.payload.issued_at):
        if uscc is None or e.subject == uscc:
            p = e.payload
            t.add_row(p.serial, e.subject, p.enterprise_name, str(p.result),
                      f"{p.issued_at:%Y-%m-%d %H:%M:%S}Z")  # fmt: skip
    console.print(t)


@certificate_app.command("export")
def certificate_export(
    serial: Annotated[str, typer.Argument(help="The certificate's serial, e.g. KS-2026-...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (JSON).")],
    broker: BrokerOpt = None,
) -> None:
    """Write an issued certificate, as signed, to a file anyone can verify."""
    from bus.domain.certificates import SignedCertificate

    s = _settings(broker)
    found = [e for e in _verified(s) if e.payload.serial == serial]
    if not found:
        raise _fail(BusError(f"no certificate with serial {serial}"), "`bus certificate list`")
    cert = SignedCertificate.from_payload(found[0].payload, uscc=found[0].subject)
    cert.write(out)
    console.print(f"wrote {out.resolve()} ({cert.enterprise_name}, {cert.result})")


@report_app.command("list")
def report_list(
    uscc: Annotated[str | None, typer.Option(help="Only this enterprise.")] = None,
    broker: BrokerOpt = None,
) -> None:
    """List issued credit reports whose signature verifies: serial, enterprise, result, when."""
    s = _settings(broker)
    t = whole_table(
        copyable("serial", SERIAL_WIDTH),
        copyable("uscc", USCC_WIDTH),
        "enterprise",
        "result",
        "domains with records",
        "issued at",
    )
    for e in sorted(_verified(s, "report"), key=lambda e: e.payload.issued_at):
        if uscc is None or e.subject == uscc:
            p = e.payload
            found = ", ".join(d.domain for d in p.domains if d.records) or "-"
            t.add_row(p.serial, e.subject, p.enterprise_name, str(p.result), found,
                      f"{p.issued_at:%Y-%m-%d %H:%M:%S}Z")  # fmt: skip
    console.print(t)


@report_app.command("export")
def report_export(
    serial: Annotated[str, typer.Argument(help="The report's serial, e.g. KS-2026-...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (JSON).")],
    broker: BrokerOpt = None,
) -> None:
    """Write an issued credit report, as signed, to a file anyone can verify."""
    from bus.domain.reports import SignedReport

    s = _settings(broker)
    found = [e for e in _verified(s, "report") if e.payload.serial == serial]
    if not found:
        raise _fail(BusError(f"no report with serial {serial}"), "`bus report list`")
    report = SignedReport.from_payload(found[0].payload, uscc=found[0].subject)
    report.write(out)
    console.print(f"wrote {out.resolve()} ({report.enterprise_name}, {report.result})")


@app.command()
def status(broker: BrokerOpt = None) -> None:
    """One screen: broker, topics, agents and their partitions and lag, dead letters, tasks."""
    from bus.domain.tasks import TASK_STATES
    from bus.edge.status import collect

    s = _settings(broker)
    st = asyncio.run(collect(s))
    if not st.reachable:
        raise _fail(BusError(f"broker {st.broker} is not reachable"), "Is it running?")
    console.print(f"broker {st.broker}: [green]reachable[/]")
    if st.missing_topics:
        console.print(f"[red]missing topics[/]: {', '.join(st.missing_topics)} "
                      "(run `bus topics create`)")  # fmt: skip
    t = whole_table("agent", "worker", "partitions", "lag")
    for a in st.agents:
        lag = "?" if a.lag is None else str(a.lag)
        if a.problem:
            t.add_row(a.name, a.problem, "", lag)
        elif not a.members:
            t.add_row(a.name, "[red]no worker running[/]", "", lag)
        for i, (member, parts) in enumerate(sorted(a.members.items())):
            t.add_row(a.name if i == 0 else "", member, " ".join(parts), lag if i == 0 else "")
    console.print(t)
    dead = ", ".join(f"{k} {v}" for k, v in st.deadletters.most_common()) or "none"
    console.print(f"dead letters: {sum(st.deadletters.values())} ({dead})")
    tk = st.tasks
    order = ("open", "overdue", "escalated", "accepted", "completed", "rejected")  # most urgent
    shown = [f"[red]{tk[k]} {k}[/]" if tk[k] and k in ("overdue", "escalated") else f"{tk[k]} {k}"
             for k in order]  # fmt: skip
    console.print(f"tasks: {', '.join(shown)} (of {sum(tk.values())} created)")
    by_matter: dict[str, Counter[str]] = {}
    for (matter, _, state), n in st.task_counts.items():
        by_matter.setdefault(matter, Counter())[state] += n
    for matter, counts in sorted(by_matter.items()):
        console.print(f"  {matter}: " + ", ".join(f"{counts[k]} {k}" for k in TASK_STATES
                                                  if counts[k]))  # fmt: skip


migrate_app = typer.Typer(help="One-off steps when upgrading the bus.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")


@migrate_app.command("owners")
def migrate_owners(
    broker: BrokerOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Show what would be written.")] = False,
) -> None:
    """Record who made the decisions already on the canonical topics, for the policy's checks.

    Decisions published before the policy existed have no owner, so revoking or repairing
    them is refused as auth.unknown_decision. Run once, with every worker stopped.
    """
    from bus.cli.migrate import migrate_owners as run

    try:
        report = asyncio.run(run(_settings(broker), dry_run=dry_run))
    except BusError as exc:
        raise _fail(exc) from None
    for line in report.skipped:
        console.print(f"skipped (the policy refuses it): {line}", markup=False)
    verb = "would add" if dry_run else "added"
    console.print(f"owners: {report.known} known, {verb} {len(report.added)}")


app.command("tasks")(tasks)
app.command("inbox")(inbox)


@app.command()
def trace(
    key: Annotated[
        str, typer.Argument(help="A correlation id (a case) or a USCC (an enterprise).")
    ],
    tz: TzOpt = None,
    broker: BrokerOpt = None,
) -> None:
    """Show a case, or everything about an enterprise, across departments, in order.

    Times are on this machine's clock (the TZ variable) unless --tz names a zone; the
    header says which.
    """
    from bus.edge.trace import elapsed, participants
    from bus.edge.trace import trace as run_trace

    zone, zone_name = time_zone(tz)
    s = _settings(broker)
    need_topics(s)
    steps = asyncio.run(run_trace(s, key))
    if not steps:
        hint = "A case is named by its first event's event_id (bus publish prints it)."
        raise _fail(BusError(f"nothing on the canonical topics for {key}"), hint)
    t = whole_table(f"time ({zone_name})", "after the previous", "event", "department", "what",
                    title=f"trace {key}")  # fmt: skip
    cases: dict[str, list[Any]] = {}
    for step in steps:
        cases.setdefault(step.correlation_id, []).append(step)
    parties = {case: participants(group) for case, group in cases.items()}
    previous = None
    for step in steps:  # how long each step took: milliseconds in the bus, days in an office
        after = elapsed((step.at - previous).total_seconds()) if previous else "first"
        previous = step.at
        who = step.source
        if who not in parties[step.correlation_id]:  # wrote into a case it has no role in
            who += " (not a participant)"
        what = f"REFUSED {step.refused}; {step.summary}" if step.refused else step.summary
        t.add_row(local_time(step.at, zone, ms=True), after, step.event_type,
                  who, what)  # fmt: skip
    console.print(t)
    console.print(f"{len(steps)} events, {len({s.source for s in steps})} departments")


@deadletters_app.command("show")
def deadletters_show(
    origin: Annotated[
        str, typer.Argument(help="The dead letter's origin, topic/partition/offset.")
    ],
    broker: BrokerOpt = None,
) -> None:
    """Show one dead letter in full: every header and the original bytes."""
    from bus.edge.publish import list_deadletters

    s = _settings(broker)
    need_topics(s)
    found = [r for r in asyncio.run(list_deadletters(s)) if r.headers.get("bus.origin") == origin]
    if not found:
        raise _fail(BusError(f"no dead letter from {origin}"), "`bus deadletters` lists them.")
    r = found[-1]
    t = whole_table("header", "value", title=f"dead letter {r.topic}/{r.partition}/{r.offset}")
    for k, v in sorted(r.headers.items()):
        if k == "bus.rejected_at" and v.isdigit():  # epoch ms, for machines; and for people:
            v += f" ({datetime.fromtimestamp(int(v) / 1000, UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3] + "Z)"
        t.add_row(k, v)
    console.print(t)
    console.print("key: " + (r.key or b"").decode(errors="replace"))
    value = r.value or b""
    text = value.decode(errors="replace") if not value.startswith(b"\x00") else value.hex()
    console.print(f"value ({len(value)} bytes):", markup=False)
    console.print(text, markup=False, soft_wrap=True)


REPLAY_TAKEN_OVER = 3
"""Exit status of a replay another replay run fenced off (0 done, 1 error)."""


@deadletters_app.command("replay")
def replay(
    reason: Annotated[
        str | None, typer.Option(help="Only dead letters with this reason prefix.")
    ] = None,
    origin: Annotated[
        list[str] | None,
        typer.Option(help="Only this dead letter (topic/partition/offset); repeatable."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Show what would be replayed.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Also replay letters that are replays which failed again for the same reason."
        ),
    ] = False,
    broker: BrokerOpt = None,
) -> None:
    """Re-submit dead letters after a fix, once each, with their original bytes.

    Letters refused at ingest go back to the ingress they came by (the shared one or a
    department's own); letters a connector could not deliver (stage connector.*) go back to
    the topic they were read from, e.g. a department's inbox.

    A letter that is itself a replay and failed again for the same reason is skipped (its
    cause is likely not fixed) unless --force. Replays started at the same time replay each
    letter once: a run started later stops the earlier one, which exits with status 3
    (another replay is running); 0 when done, 1 on an error.
    """
    from rich.markup import escape
    from rich.progress import Progress

    from bus.edge.publish import replay_deadletters

    s = _settings(broker)
    need_topics(s)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("replaying", total=None)

        def step(i: int, n: int) -> None:
            bar.update(task, completed=i, total=n)

        def warn(text: str) -> None:
            err.print(f"[yellow]warning:[/] {escape(text)}")

        try:
            report = asyncio.run(replay_deadletters(
                s, reason=reason, origins=set(origin or ()), dry_run=dry_run, force=force,
                progress=step, warn=warn,
            ))  # fmt: skip
        except BusError as exc:
            raise _fail(exc) from None
    verb = "would replay" if dry_run else "replayed"
    for o in report.replayed:
        console.print(f"{verb} {escape(o)}")
    for o, why in report.skipped.items():
        console.print(f"[yellow]skipped[/] {escape(o)}: {escape(why)}")
    console.print(f"{len(report.replayed)} {verb}, {len(report.skipped)} skipped")
    if report.taken_over:
        err.print(
            "[red]stopped:[/] another replay is running (started after this one); it replays "
            f"what this one had not. {len(report.replayed)} replayed here before it took over. "
            "`bus deadletters` shows each letter's state."
        )
        raise typer.Exit(REPLAY_TAKEN_OVER)


@schemas_app.command("list")
def schemas_list() -> None:
    """Show every event type, version and schema id."""
    from bus.schemas.events import EVENT_TYPES
    from bus.schemas.registry import LocalSchemaRegistry

    reg = LocalSchemaRegistry.load()
    t = whole_table("id", "event type", "version", "description")
    for s in reg.all():
        t.add_row(str(s.id), s.subject, str(s.version), EVENT_TYPES[s.subject].description)
    console.print(t)


@schemas_app.command("check")
def schemas_check() -> None:
    """Fail when a model and its shipped Avro schema disagree."""
    from bus.schemas.export import drift
    from bus.schemas.registry import LocalSchemaRegistry

    problems = drift(LocalSchemaRegistry.load())
    for p in problems:
        err.print(f"[red]{p}[/]")
    if problems:
        raise typer.Exit(1)
    console.print("models and shipped schemas agree")


@schemas_app.command("export")
def schemas_export(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "--directory",
            help="Write here instead (a directory with registry.json to extend; an empty one "
            "gets every version with new ids).",
        ),
    ] = None,
) -> None:
    """Write schemas for new model versions (checked BACKWARD compatible, new ids).

    Without --out it writes to bus/schemas/avro of the checkout the running bus package comes
    from (whatever the current directory), and only when that package is a source checkout,
    not installed into site-packages: an installed package's schemas are never rewritten, and
    it refuses (exit status 2) until given --out DIR. Nothing is written when the schemas are
    already in step.
    """
    from bus.schemas.export import checkout_schemas, export

    directory = out or checkout_schemas()
    if directory is None:
        err.print(
            "[red]not a source checkout:[/] this bus package is installed, and its shipped "
            "schemas are not rewritten in place; pass --out DIR to write schemas elsewhere, or "
            "run it from a checkout of the repository"
        )
        raise typer.Exit(2)
    try:
        added = export(directory)
    except BusError as exc:
        raise _fail(exc) from None
    for a in added:
        console.print(f"added {a}")
    console.print(f"{len(added)} schemas added")


@schemas_app.command("asyncapi")
def schemas_asyncapi(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here instead of standard output.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="yaml or json; default: json for a .json --out, else yaml."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap servers integrators use (host:port,...); default: "
                     "BUS_BROKER's."),
    ] = None,
) -> None:  # fmt: skip
    """Print the AsyncAPI 3.0 document of the topics and event types (the gateway serves it too)."""
    from bus.streaming.asyncapi import FORMATS, asyncapi_document, render

    chosen = FORMATS.get(fmt or ("json" if out is not None and out.suffix == ".json" else "yaml"))
    if chosen is None:
        err.print(f"[red]--format {fmt!r}:[/] use yaml or json")
        raise typer.Exit(2)
    try:
        text = render(asyncapi_document(_settings(), server=server), chosen)
    except BusError as exc:
        raise _fail(exc) from None
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    err.print(f"wrote {out} ({chosen})")


@app.command()
def demo(
    keep_running: Annotated[
        bool, typer.Option(help="Keep broker, worker and gateway up after the scenarios.")
    ] = False,
    engine: Annotated[
        str, typer.Option(help="noida (Python only), tansu, or kafka (Apache Kafka: java, mvn).")
    ] = "noida",
    data_dir: Annotated[
        Path,
        typer.Option(help="The demo's BUS_DATA_DIR, kept after it stops: its signing key verifies "
                     "the certificates it issued."),
    ] = Path("var/demo"),
) -> None:  # fmt: skip
    """Start a broker and a worker, play the reference scenarios, show what happened."""
    from bus.dev.demo import run_demo

    try:
        code = run_demo(console, engine=engine, keep_running=keep_running, data_dir=data_dir)
    except BusError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


def _reflow_help(t: typer.Typer) -> None:
    """Join the single line breaks in command docstrings, which Typer would print as they are.

    Docstrings are wrapped for the source; help is wrapped again for the terminal, and a
    paragraph broken in both places reads as ragged lines.
    """
    for command in t.registered_commands:
        doc = command.callback.__doc__ if command.callback is not None else None
        if command.help is None and doc:
            paragraphs = inspect.cleandoc(doc).split("\n\n")
            command.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for group in t.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def _plain_flags(command: Any) -> None:
    """Show flags as ``--x / --no-x`` alone: Typer's help prints ``<bool>`` beside them.

    A flag takes no value, so a type beside it reads as if it wanted one (``--json <bool>``).
    An empty metavar is what the help shows in the type column instead.
    """
    names = SimpleNamespace(help_option_names=["--help"])  # all get_help_option reads
    params = [*command.params, command.get_help_option(names)]
    for param in params:
        if param is not None and getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


def command() -> Any:
    """The ``bus`` command tree, as ``main`` runs it."""
    tree = typer.main.get_command(app)
    _plain_flags(tree)
    return tree


def main() -> None:
    """Console entry point: a broker that cannot be reached is an answer, not a traceback."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        command()()
    except KafkaConnectionError as exc:
        err.print(
            "[red]error:[/] cannot reach the Kafka broker. Is it running? `bus settings` "
            "shows the one this command uses (BUS_BROKER, or --broker where offered)."
        )
        err.print(f"[dim]{exc}[/]", highlight=False)
        sys.exit(1)
    except KafkaError as exc:
        err.print(f"[red]error:[/] the Kafka broker refused: {exc!r}")
        sys.exit(1)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        err.print(
            f"[red]error:[/] this command needs the {extra} extra ({exc.name} is not "
            f"installed): pip install 'collaboration-bus\\[{extra}]'",
            soft_wrap=True,
        )
        sys.exit(2)


#: Modules only an extra installs, and the extra: the SDK itself needs none of them.
EXTRAS = {
    "faust": "worker",
    "chinese_calendar": "worker",
    "lunar_python": "worker",
    "fastapi": "gateway",
    "uvicorn": "gateway",
    "starlette": "gateway",
    "swagger_ui_bundle": "gateway",
    "psycopg": "outbox",
}


if __name__ == "__main__":
    main()
