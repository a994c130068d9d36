"""``bus import FILE``: check a CSV or JSON-lines file row by row, then publish all or nothing.

Exit status: 0 every row accepted (or passed, with ``--dry-run``; published, with
``--no-wait``), 1 some row rejected (nothing published) or refused by the bus or left without
a verdict, 2 the file or the options are unusable.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bus.cli.support import UUID_WIDTH, copyable, load_settings, whole_table
from bus.errors import BusError, ConfigurationError

if TYPE_CHECKING:  # the connector SDK is imported only when the command runs
    from connectors.file_import import FileImportSource, Format, ImportReport

console = Console()
err = Console(stderr=True)

MAX_SHOWN = 50
"""Rejections printed in the table; the rest are in ``--report``."""

STYLE = {"accepted": "green", "duplicate": "cyan", "rejected": "red", "unconfirmed": "yellow"}


def _pairs(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or ():
        header, sep, name = v.partition("=")
        if not sep or not header.strip() or not name.strip():
            err.print(f"[red]--column {v!r}:[/] write it as HEADER=FIELD, e.g. 罚款金额=amount")
            raise typer.Exit(2)
        out[header.strip()] = name.strip()
    return out


def import_file(
    file: Annotated[Path, typer.Argument(help="The CSV or JSON-lines file.")],
    format_: Annotated[
        str | None,
        typer.Option("--format", "-f", help="csv or jsonl; from the file name when not given."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", "-s", help="Department code for rows without a source column."),
    ] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", "-t", help="Event type for rows without an event_type column."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option("--column", "-C", help="Rename a CSV header: HEADER=FIELD; repeatable."),
    ] = None,
    id_from: Annotated[
        list[str] | None,
        typer.Option(help="Derive missing event ids from these fields (e.g. case_number)."),
    ] = None,
    encoding: Annotated[
        str,
        typer.Option(
            help="The file's encoding, e.g. gb18030 (many spreadsheet and case-system exports); "
            "a file that does not read in it is refused with exit status 2."
        ),
    ] = "utf-8-sig",
    dry_run: Annotated[bool, typer.Option(help="Check every row, publish nothing.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the bus's verdicts.")] = 30.0,
    no_wait: Annotated[bool, typer.Option(help="Publish without waiting for verdicts.")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", "-r", help="Write the full report here as JSON.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
    historical: Annotated[
        bool,
        typer.Option(
            help="The rows record the past (last year's registrations): fold them "
            "into the records, open no tasks."
        ),
    ] = False,
) -> None:
    """Import a file of events (e.g. a bureau's yearly penalty export), all or nothing.

    Every row is checked first (schema, USCC, the department directory); if any row is wrong
    nothing is published and each bad row is listed with its line, field and reason. Rows
    without an event_id get a stable one, so importing the same file twice has no second
    effect. Column mapping for CSV: docs/connectors.md#file-import.
    """
    from connectors.file_import import FileImportSource, ImportRejected

    settings = load_settings()
    if format_ not in (None, "csv", "jsonl"):
        err.print(f"[red]--format {format_}:[/] csv or jsonl")
        raise typer.Exit(2)
    with progress_bars() as progress:
        try:
            importer = FileImportSource(
                settings, file, format=cast("Format | None", format_), source=source,
                event_type=event_type,
                columns=_pairs(column), id_from=id_from, encoding=encoding,
                batch_size=batch_size, wait=0 if no_wait else wait, historical=historical,
                progress=progress, encoding_option="--encoding {}",
                name="import",
            )  # fmt: skip
            if dry_run:
                result: ImportReport | None = importer.check()
            else:
                asyncio.run(_run(importer))
                result = importer.report
        except ImportRejected as exc:
            result = exc.report
        except ConfigurationError as exc:
            err.print(f"[red]{exc.reason}:[/] {exc.message}", soft_wrap=True)
            raise typer.Exit(2) from None
        except BusError as exc:
            err.print(f"[red]{exc.reason}:[/] {exc.message}", soft_wrap=True)
            raise typer.Exit(1) from None
    if result is None:  # stopped by a signal before the file was read
        raise typer.Exit(1)
    print_report(result, dry_run=dry_run)
    if report is not None:
        report.write_text(json.dumps(result.to_json(), ensure_ascii=False, indent=2) + "\n")
        console.print(f"report written to {report}")
    raise typer.Exit(0 if result.ok else 1)


async def _run(importer: FileImportSource) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then stop
        loop.add_signal_handler(sig, importer.stop)
    await importer.serve()


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage on stderr.

    Shared by ``bus import`` and ``bus connect`` so a file import looks the same either way.
    """
    columns = BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    with Progress(TextColumn("{task.description:<11}"), *columns, console=err) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


def print_report(result: ImportReport, *, dry_run: bool = False) -> None:
    """The rejected rows, the rows the bus refused and the counts, as operators read them."""
    if result.rejections:
        t = whole_table("line", "field", "reason", "message", title="rejected rows")
        for bad in result.rejections[:MAX_SHOWN]:
            t.add_row(str(bad.line), bad.field or "-", bad.reason, bad.message)
        console.print(t)
        if len(result.rejections) > MAX_SHOWN:
            console.print(f"... and {len(result.rejections) - MAX_SHOWN} more (see --report)")
        console.print(f"[red]nothing published:[/] fix these rows, then import {result.file} again")
    refused = [r for r in result.results if r.status in ("rejected", "unconfirmed")]
    if refused:
        t = whole_table(
            "line",
            copyable("event_id", UUID_WIDTH),
            "status",
            "reason",
            title="rows the bus did not accept",
        )
        for r in refused[:MAX_SHOWN]:
            why = f"{r.reason or ''} {r.error or ''}".strip()
            t.add_row(str(r.line), r.event_id, r.status, why)
        console.print(t)
    summary = whole_table("file", "format", "rows", "published", *result.counts(), title="import")
    summary.add_row(
        result.file, result.format, str(result.rows), str(result.published),
        *(f"[{STYLE.get(k, 'white')}]{v}[/]" for k, v in result.counts().items()),
    )  # fmt: skip
    console.print(summary)
    if dry_run and not result.rejections:
        console.print(f"[green]all {result.rows} rows pass[/]; nothing published (dry run)")
