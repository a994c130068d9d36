"""``bus certificate``: check a compliance certificate (合规证明) file, make signing keys.

Verification works offline and reads no ``BUS_*`` settings except the trusted public keys
(``--public-key`` or ``BUS_CERT_PUBLIC_KEYS``), so anyone handed a certificate and the
issuer's ``.pub`` file can check it. Exit status of ``verify``: 0 valid, 1 not valid (the
reason code says why), 2 could not check (no keys, unreadable key or certificate file).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from bus.domain.certificates import SignedCertificate, Signer, Verifier
from bus.errors import BusError, ConfigurationError

certificate_app = typer.Typer(
    help="Verify signed compliance certificates (合规证明) and create signing keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _summary(cert: SignedCertificate) -> str:
    if cert.record:
        n = len(cert.record)
        result = f"{cert.result.value}, {n} {'penalty' if n == 1 else 'penalties'} on record"
    else:
        result = f"{cert.result.value}, no penalties on record"
    lines = [
        f"valid certificate {cert.serial}",
        f"  enterprise:  {cert.enterprise_name}",
        f"  USCC:        {cert.uscc}",
        f"  period:      {cert.period_start.isoformat()} to {cert.period_end.isoformat()}",
        f"  purpose:     {cert.purpose.value}",
        f"  result:      {result}",
    ]
    lines += [
        f"               {p.case_number} ({p.agency}, {p.decided_on.isoformat()}, {p.state})"
        for p in cert.record
    ]
    issued = cert.issued_at.isoformat().replace("+00:00", "Z")
    lines += [
        f"  issuer:      {cert.issuing_authority}",
        f"  issued at:   {issued}",
        f"  key id:      {cert.key_id}",
    ]
    return "\n".join(lines)


PublicKeys = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        "-k",
        envvar="BUS_CERT_PUBLIC_KEYS",
        help="A trusted .pub file or a directory of them; repeat for several. "
        "The environment variable takes ':'-separated paths.",
    ),
]
"""The trusted public keys of every ``verify`` command."""

_D = TypeVar("_D")


def checked(
    file: Path, public_key: list[Path] | None, check: Callable[[Verifier, bytes], _D], noun: str
) -> _D:
    """FILE (``-``: stdin) checked against the trusted keys. Exits 2 when it cannot be checked
    (no keys, an unreadable key or file), 1 when it is not valid (the reason code says why)."""
    if not public_key:
        typer.echo(
            "error: no trusted public keys; pass --public-key FILE or set BUS_CERT_PUBLIC_KEYS",
            err=True,
        )
        raise typer.Exit(2)
    try:
        verifier = Verifier.from_paths(public_key)
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
        return check(verifier, data)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot read {noun} file {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except BusError as exc:  # <noun>.malformed (names the field), .unknown_key, ...
        typer.echo(f"INVALID {exc.reason}: {exc.message}", err=True)
        raise typer.Exit(1) from None


@certificate_app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="The certificate JSON file; '-' reads stdin.")],
    public_key: PublicKeys = None,
) -> None:
    """Check a certificate's signature and show what it certifies.

    Exit status: 0 valid, 1 not valid, 2 could not check.
    """
    typer.echo(_summary(checked(file, public_key, Verifier.verify_bytes, "certificate")))


@certificate_app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to write (mode 0600).")],
    key_id: Annotated[
        str, typer.Option("--key-id", help="The key's name in certificates, e.g. ks-bus-2026-01.")
    ],
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Create an Ed25519 signing key: OUT (private, 0600) and OUT.pub (for verifiers)."""
    pub = out.with_name(out.name + ".pub")
    try:
        signer = Signer.generate(key_id)
        signer.save(out, overwrite=force)
        signer.save_public_key(pub)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: cannot write {exc.filename or out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"private key {out} (key id {key_id}, mode 0600): keep it secret")
    typer.echo(f"public key  {pub}: hand it to verifiers")
    typer.echo(f"issue with BUS_SIGNING_KEY_FILE={out} BUS_SIGNING_KEY_ID={key_id}")


def main() -> None:
    """Run the sub-app on its own (``python -m bus.cli.certificate``)."""
    certificate_app()


if __name__ == "__main__":
    main()
