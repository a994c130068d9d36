"""``bus decision``: check a signed decision (an approval, an application decided), offline.

It takes the decision document or the event as a department received it (an inbox item's
``event``, a webhook's body), and reads no ``BUS_*`` settings except the trusted public keys
(``--public-key`` or ``BUS_CERT_PUBLIC_KEYS``). Exit status: 0 valid, 1 not valid (the reason
code says why), 2 could not check (no keys, an unreadable key or file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bus.cli.certificate import PublicKeys, checked
from bus.domain.decisions import verify_decision_bytes

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
    public_key: PublicKeys = None,
) -> None:
    """Check a decision's signature and show what was decided.

    Exit status: 0 valid, 1 not valid, 2 could not check.
    """
    decision = checked(file, public_key, verify_decision_bytes, "decision")
    issued = decision.issued_at.isoformat().replace("+00:00", "Z")
    typer.echo(f"valid decision {decision.event_type} {decision.event_id}")
    typer.echo(f"  USCC:        {decision.uscc}")
    typer.echo(f"  decided:     {json.dumps(decision.decision, ensure_ascii=False)}")
    typer.echo(f"  issuer:      {decision.issuing_authority}")
    typer.echo(f"  issued at:   {issued}")
    typer.echo(f"  key id:      {decision.key_id}")
