"""What every ``bus`` command shares: settings read once, with errors people can act on."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from bus.settings import Settings, invalid_settings

err = Console(stderr=True)


def load_settings(**values: Any) -> Settings:
    """``Settings`` from the environment (and ``values``); exit 2 naming each wrong variable."""
    try:
        return Settings(**values)
    except ValueError as exc:
        err.print(f"[red]invalid settings:[/]\n{invalid_settings(exc)}", highlight=False)
        raise typer.Exit(2) from None
