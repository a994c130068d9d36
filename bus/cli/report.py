"""``bus report``: check a special credit report (专用信用报告) file, offline.

Like ``bus certificate verify``, it reads no ``BUS_*`` settings except the trusted public keys
(``--public-key`` or ``BUS_CERT_PUBLIC_KEYS``). Exit status of ``verify``: 0 valid, 1 not
valid (the reason code says why), 2 could not check (no keys, unreadable key or report file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bus.cli.certificate import PublicKeys, checked
from bus.domain.reports import SignedReport, verify_report_bytes

report_app = typer.Typer(
    help="Special public-credit information reports (专用信用报告): verify, list, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _summary(report: SignedReport) -> str:
    lines = [
        f"valid report {report.serial}",
        f"  enterprise:  {report.enterprise_name}",
        f"  USCC:        {report.uscc}",
        f"  period:      {report.period_start.isoformat()} to {report.period_end.isoformat()}",
        f"  purpose:     {report.purpose.value}",
        f"  result:      {report.result.value}",
    ]
    for d in report.domains:
        lines.append(f"  {d.name}: {'no record' if not d.records else ''}".rstrip())
        lines += [
            f"      {r.case_number} ({r.agency}, {r.kind}, {r.decided_on.isoformat()}, {r.state})"
            for r in d.records
        ]
    issued = report.issued_at.isoformat().replace("+00:00", "Z")
    lines += [
        f"  issuer:      {report.issuing_authority}",
        f"  issued at:   {issued}",
        f"  key id:      {report.key_id}",
    ]
    return "\n".join(lines)


@report_app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="The report JSON file; '-' reads stdin.")],
    public_key: PublicKeys = None,
) -> None:
    """Check a report's signature and show what it reports, domain by domain.

    Exit status: 0 valid, 1 not valid, 2 could not check.
    """
    typer.echo(_summary(checked(file, public_key, verify_report_bytes, "report")))
