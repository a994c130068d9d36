"""The ``bus`` command: one module per command family, ``commands`` for the rest."""

from bus.cli.commands import EXTRAS, app, main

__all__ = ["EXTRAS", "app", "main"]
