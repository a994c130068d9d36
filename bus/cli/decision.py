"""``bus decision``: check a signed decision (an approval, an application decided), offline.

It takes the decision document or the event as a department received it (an inbox item's
``event``, a webhook's body), and reads no ``BUS_*`` settings except the trusted public keys
(``--public-key`` or ``BUS_CERT_PUBLIC_KEYS``). Exit status: 0 valid, 1 not valid (the reason
code says why), 2 could not check (no keys, an unreadable key or file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from bus.domain.certificates import Verifier
from bus.domain.decisions import verify_decision_bytes
from bus.errors import BusError, ConfigurationError

decision_app = typer.Typer(
    help="Verify the bus's signed decisions (approvals, applications decided).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@decision_app.command()
def verify(
    file: Annotated[
        Path, typer.Argument(help="The decision or its event, as JSON; '-' reads stdin.")
    ],
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            "-k",
            envvar="BUS_CERT_PUBLIC_KEYS",
            help="A trusted .pub file or a directory of them; repeat for several. "
            "The environment variable takes ':'-separated paths.",
        ),
    ] = None,
) -> None:
    """Check a decision's signature and show what was decided.

    Exit status: 0 valid, 1 not valid, 2 could not check.
    """
    if not public_key:
        typer.echo(
            "error: no trusted public keys; pass --public-key FILE or set BUS_CERT_PUBLIC_KEYS",
            err=True,
        )
        raise typer.Exit(2)
    try:
        verifier = Verifier.from_paths(public_key)
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
        decision = verify_decision_bytes(verifier, data)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except BusError as exc:  # decision.malformed (names the field), .unknown_key, ...
        typer.echo(f"INVALID {exc.reason}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    issued = decision.issued_at.isoformat().replace("+00:00", "Z")
    typer.echo(f"valid decision {decision.event_type} {decision.event_id}")
    typer.echo(f"  USCC:        {decision.uscc}")
    typer.echo(f"  decided:     {json.dumps(decision.decision, ensure_ascii=False)}")
    typer.echo(f"  issuer:      {decision.issuing_authority}")
    typer.echo(f"  issued at:   {issued}")
    typer.echo(f"  key id:      {decision.key_id}")
