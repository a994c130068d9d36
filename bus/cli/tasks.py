"""``bus tasks`` and ``bus inbox``: what the gateway shows a department, for operators.

Both read what the gateway reads, with the gateway's own reader
(``bus.edge.gateway.inbox.Inboxes``): every department's inbox topic, and the tasks folded from
the lifecycle events in them. An operator answering "who has not done what" and a
department system reading ``/v1/tasks`` therefore never see two versions of a task.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from bus.cli.support import (
    TASK_ID_WIDTH,
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
from bus.domain.departments import Directory
from bus.domain.tasks import TASK_STATES, TaskView
from bus.edge.gateway.inbox import Inboxes, Item
from bus.settings import Settings
from bus.streaming.topics import inbox_topic

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _settings(broker: str | None) -> Settings:
    return load_settings(**({"broker": broker} if broker else {}))


def _departments(s: Settings, only: str | None) -> list[str]:
    """The directory's departments, or just ``only`` (exit 1 naming it when it is unknown)."""
    codes = list(Directory.load(s.departments_file, s.policy_file).departments)
    if only is None:
        return codes
    if only not in codes:
        err.print(f"[red]error:[/] no department {only!r} in the directory "
                  "(BUS_DEPARTMENTS_FILE)")  # fmt: skip
        raise typer.Exit(1)
    return [only]


def _read(s: Settings, departments: Iterable[str], work: Callable[[Inboxes], Awaitable[T]]) -> T:
    departments = list(departments)
    need_topics(s, (inbox_topic(s, d) for d in departments))

    async def run() -> T:
        async with Inboxes(s, departments) as inboxes:
            return await work(inboxes)

    return asyncio.run(run())


def _late(t: TaskView) -> bool:
    return not t.closed and (t.overdue or t.escalated)


def tasks(
    task_id: Annotated[
        str | None, typer.Argument(help="One task: its details and history.", show_default=False)
    ] = None,
    department: Annotated[
        str | None, typer.Option("--department", "-d", help="Only this department's tasks.")
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            help=f"Only tasks in this state: {', '.join(TASK_STATES)}, or all. Default: every "
            "task not yet completed or rejected.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines for scripts.")] = False,
    tz: TzOpt = None,
    broker: BrokerOpt = None,
) -> None:
    """Tasks across departments: open ones, overdue by department, or one task's history.

    Read from the departments' inboxes exactly as the gateway's /v1/tasks reads them.
    Overdue tasks show as overdue, or escalated once their supervisor was told.
    """
    if state is not None and state not in (*TASK_STATES, "all"):
        err.print(f"[red]--state {state!r}:[/] use one of {', '.join(TASK_STATES)}, all")
        raise typer.Exit(2)
    zone, zone_name = time_zone(tz)
    s = _settings(broker)
    codes = _departments(s, department)

    async def fold(inboxes: Inboxes) -> list[tuple[str, TaskView]]:
        return [(d, t) for d in codes for t in await inboxes.tasks(d)]

    found = _read(s, codes, fold)
    if task_id is not None:
        _show_task(task_id, found, as_json, zone, zone_name)
        return

    def wanted(t: TaskView) -> bool:
        return not t.closed if state is None else state in ("all", t.shown_state)

    shown = [(d, t) for d, t in found if wanted(t)]
    shown.sort(key=lambda dt: (dt[1].due_at, dt[0]))
    if as_json:
        for d, t in shown:
            typer.echo(json.dumps({"department": d, **t.body()}, ensure_ascii=False))
        return
    table = whole_table(
        "department",
        copyable("task", TASK_ID_WIDTH),
        "matter",
        copyable("enterprise", USCC_WIDTH),
        "state",
        f"due ({zone_name})",
    )
    for d, t in shown:
        style = "red" if _late(t) else ""
        due = local_time(datetime.fromisoformat(t.due_at), zone)[:-3]
        table.add_row(d, t.task_id, t.matter, t.subject, f"[{style}]{t.shown_state}[/]"
                      if style else t.shown_state, due)  # fmt: skip
    console.print(table)
    late = Counter(d for d, t in found if _late(t))
    by_department = ", ".join(f"{d} {n}" for d, n in sorted(late.items())) or "none"
    console.print(f"{len(shown)} tasks shown; overdue by department: {by_department}")


def _show_task(
    task_id: str, found: list[tuple[str, TaskView]], as_json: bool, zone: Any, zone_name: str
) -> None:
    match = [(d, t) for d, t in found if t.task_id == task_id]
    if not match:
        err.print(f"[red]error:[/] no task {task_id!r} in any department's inbox")
        err.print("`bus tasks --state all` lists them.")
        raise typer.Exit(1)
    d, t = match[0]
    if as_json:
        typer.echo(json.dumps({"department": d, **t.body()}, ensure_ascii=False))
        return
    facts = whole_table("task", t.task_id, show_header=True, title=t.title)
    for name, value in (
        ("assignee", d), ("matter", t.matter), ("enterprise", t.subject),
        ("case", t.correlation_id), ("state", t.shown_state),
        (f"due ({zone_name})", local_time(datetime.fromisoformat(t.due_at), zone)),
        ("supervisor", t.supervisor or "-"), ("outcome", t.outcome or "-"),
        ("evidence", ", ".join(t.evidence) or "-"),
    ):  # fmt: skip
        facts.add_row(name, value)
    console.print(facts)
    history = whole_table(
        f"when ({zone_name})", "event", copyable("event_id", UUID_WIDTH), title="history"
    )
    for h in t.history:
        history.add_row(local_time(datetime.fromisoformat(h["at"]), zone), h["event"],
                        h["event_id"])  # fmt: skip
    console.print(history)


def inbox(
    department: Annotated[str, typer.Argument(help="Department code, e.g. ks.tax.")],
    limit: Annotated[
        int, typer.Option(help="How many of the newest items, newest last.", min=1, max=10_000)
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines for scripts.")] = False,
    tz: TzOpt = None,
    broker: BrokerOpt = None,
) -> None:
    """A department's inbox as the gateway serves it: the newest items, newest last.

    What it was sent and why (the subscription, or notify for its tasks and decisions);
    the cursor is the one the department reads /v1/inbox with.
    """
    from bus.edge.trace import summary
    from bus.streaming.codec import EventCodec

    zone, zone_name = time_zone(tz)
    s = _settings(broker)
    codes = _departments(s, department)

    async def newest(inboxes: Inboxes) -> list[Item]:
        return await inboxes.latest(department, limit)

    items = _read(s, codes, newest)
    codec = EventCodec()
    if as_json:
        for item in items:
            typer.echo(json.dumps(item.body(codec), ensure_ascii=False))
        return
    table = whole_table("cursor", f"received ({zone_name})", "event", "from", "enterprise", "route",
                  "what", title=f"inbox {department}")  # fmt: skip
    for item in items:
        event = codec.decode(item.value)
        received = local_time(datetime.fromtimestamp(item.received_at).astimezone(), zone)
        table.add_row(str(item.cursor), received, item.event_type, event.source, event.subject,
                      item.route, summary(event))  # fmt: skip
    console.print(table)
    console.print(f"{len(items)} newest items shown, newest last")
