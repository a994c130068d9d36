"""``bus connect NAME``: run one configured connector until it finishes or is stopped.

A ``file-import`` connector runs once, like ``bus import``, and reports the same way: progress
on stderr, then the rejected rows and the counts, exit status 0 when every row was accepted.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bus.cli.imports import print_report, progress_bars
from bus.cli.support import load_settings, whole_table
from bus.errors import BusError, ConfigurationError

console = Console()
err = Console(stderr=True)


def connect(
    name: Annotated[str | None, typer.Argument(help="The connector's name in the file.")] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Connectors YAML; overrides BUS_CONNECTORS_FILE."),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the configured connectors.")] = False,
) -> None:
    """Run a configured connector (outbox source, webhook sink, file import ...).

    Stops cleanly on SIGTERM or Ctrl-C: the batch in hand is finished and committed. A file
    import runs once and prints what `bus import` prints: progress, every rejected row with its
    field and reason, and the counts (rows, published, accepted, duplicate, rejected); it exits
    1 unless every row was accepted. A misspelt option stops it (exit 2) naming the option as
    written and the closest known one.
    """
    import logging

    from connectors import registry

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    path = config or settings.connectors_file
    if path is None:
        err.print("[red]no connectors file:[/] pass --config FILE or set BUS_CONNECTORS_FILE")
        raise typer.Exit(2)
    try:
        if list_ or name is None:
            table = whole_table("name", "kind", "guarantee")
            for e in registry.load(path):
                cls = registry.connector_class(e.kind)
                table.add_row(e.name, e.kind, getattr(cls, "guarantee", "?"))
            console.print(table)
            return
        connector = registry.build(settings, registry.find(path, name))
    except BusError as exc:
        err.print(f"[red]{exc.reason}:[/] {exc.message}")
        raise typer.Exit(2) from None

    server = None
    if settings.metrics_port:  # same /metrics as the worker's, on the same setting
        from prometheus_client import start_http_server

        try:
            server, _ = start_http_server(
                settings.metrics_port, addr=settings.web_host, registry=connector.metrics.registry
            )
        except OSError as exc:
            err.print(f"[yellow]metrics not served on port {settings.metrics_port}:[/] {exc}")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, connector.stop)
        await connector.serve()

    from connectors.file_import import FileImportSource, ImportRejected

    importing = isinstance(connector, FileImportSource)
    try:
        with progress_bars() if importing else nullcontext() as progress:
            if isinstance(connector, FileImportSource):
                connector.progress = progress
            asyncio.run(main())
    except ImportRejected:
        pass  # the report below lists every rejected row
    except ConfigurationError as exc:  # e.g. a file that is not in its configured encoding
        err.print(f"[red]{exc.reason}:[/] {exc.message}")
        raise typer.Exit(2) from None
    except BusError as exc:
        err.print(f"[red]{exc.reason}:[/] {exc.message}")
        raise typer.Exit(1) from None
    finally:
        if server is not None:
            server.shutdown()
    if isinstance(connector, FileImportSource):
        if connector.report is None:  # stopped by a signal before the file was read
            raise typer.Exit(1)
        print_report(connector.report)
        raise typer.Exit(0 if connector.report.ok else 1)
