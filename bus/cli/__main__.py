"""``python -m bus.cli``: the ``bus`` command."""

from bus.cli.commands import main

main()
