"""``bus matters``: check matter files and play scenarios through the real agents, no broker.

Exit status: 0 everything valid and every scenario as expected; 1 a scenario's expectation
failed; 2 a file is invalid (the message names the file, the line and the field).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bus.cli.support import load_settings
from bus.errors import ConfigurationError

matters_app = typer.Typer(
    help="Check matters (一件事) and simulate them without a broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

MattersOpt = Annotated[
    Path | None,
    typer.Option(
        "--matters",
        help="Folder of matter files, scenarios in scenarios/ (default: BUS_MATTERS_DIR, else "
        "the shipped ones).",
        exists=True,
        file_okay=False,
    ),
]


def _folder(matters: Path | None) -> Path | None:
    """The folder asked for, else ``BUS_MATTERS_DIR``, else ``None``: the shipped matters."""
    return matters or load_settings().matters_dir


def _shipped(folder: Path | None) -> Path:
    return folder or Path(str(resources.files("bus.domain.matters")))


@matters_app.command()
def check(matters: MattersOpt = None) -> None:
    """Validate every matter file, then play every scenario in its scenarios/ folder."""
    from bus.agents.simulate import Simulation, load_scenario
    from bus.domain.matters import load_matters

    folder = _folder(matters)
    try:
        found = load_matters(folder)
        scenarios = [
            (path, load_scenario(path))
            for path in sorted((_shipped(folder) / "scenarios").glob("*.yaml"))
        ]
    except ConfigurationError as exc:
        err.print(f"[red]invalid:[/] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    names = ", ".join(sorted(f"{m.name} v{m.version}" for m in found.values()))
    console.print(f"{len(found)} matters valid in {_shipped(folder)}: {names}")
    failed = 0
    for path, scenario in scenarios:
        sim = Simulation(folder)
        try:
            outcome = sim.run(scenario)
        except ConfigurationError as exc:
            err.print(f"[red]invalid:[/] scenario {path.name}: {escape(exc.message)}")
            raise typer.Exit(2) from exc
        finally:
            sim.close()
        mark = "[green]as expected[/]" if outcome.passed else "[red]NOT as expected[/]"
        console.print(f"  {path.name}: {mark} ({len(outcome.timeline)} moments)")
        for failure in outcome.failures:
            console.print(f"    {escape(failure)}")
        failed += not outcome.passed
    if failed:
        raise typer.Exit(1)


@matters_app.command()
def simulate(
    matter: Annotated[str, typer.Argument(help="The matter's name, e.g. compliance-certificate.")],
    scenario: Annotated[
        Path, typer.Argument(help="The scenario file (YAML).", exists=True, dir_okay=False)
    ],
    matters: MattersOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The timeline as JSON lines.")] = False,
) -> None:
    """Play SCENARIO through MATTER and print the timeline: tasks, deadlines, decisions."""
    from bus.agents.simulate import simulate as play

    try:
        outcome = play(matter, scenario, _folder(matters))
    except ConfigurationError as exc:
        err.print(f"[red]invalid:[/] {escape(exc.message)}")
        raise typer.Exit(2) from exc
    for moment in outcome.timeline:
        if as_json:
            typer.echo(json.dumps(asdict(moment), ensure_ascii=False, default=str))
        else:
            console.print(escape(moment.line()), soft_wrap=True)
    if not as_json:
        console.print(f"open tasks at the end: {outcome.open_tasks}")
    for failure in outcome.failures:
        err.print(f"[red]not as expected:[/] {escape(failure)}")
    if outcome.failures:
        raise typer.Exit(1)
    if not as_json:
        console.print("[green]as expected[/]")
