"""Special credit reports (专用信用报告) and signed decisions: fetch a report, verify either."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bus.domain.decisions import SignedDecision, verify_decision_bytes
from bus.domain.reports import SignedReport, verify_report_bytes
from bus.edge.gateway.common import ERRORS, VERIFY_BODY, Department, State, verdict
from bus.edge.gateway.models import ErrorBody
from bus.edge.gateway.routes.certificates import by_serial

router = APIRouter()


@router.get(
    "/v1/reports/{serial}",
    responses=ERRORS | {404: {"model": ErrorBody}},
    summary="Fetch an issued credit report, as signed",
)
async def get_report(state: State, serial: str, department: Department) -> JSONResponse:
    """The signed report, to hand to whoever needs it (they can verify it offline)."""
    return await by_serial(state.reports, serial, "report", reason="report.not_found")


def _report(report: SignedReport) -> dict[str, Any]:
    return {
        "serial": report.serial,
        "uscc": report.uscc,
        "enterprise_name": report.enterprise_name,
        "period_start": report.period_start.isoformat(),
        "period_end": report.period_end.isoformat(),
        "purpose": report.purpose.value,
        "result": report.result.value,
        "domains": {d.domain: len(d.records) for d in report.domains},
        "issuing_authority": report.issuing_authority,
        "issued_at": report.issued_at.isoformat().replace("+00:00", "Z"),
        "key_id": report.key_id,
    }


@router.post(
    "/v1/reports/verify",
    responses={503: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    summary="Verify a signed credit report (no key needed)",
    openapi_extra=VERIFY_BODY,
)
async def verify_report(state: State, request: Request) -> dict[str, Any]:
    """Check a report against the bus's public keys; anyone may ask."""
    return await verdict(state, request, verify_report_bytes, _report)


def _decision(decision: SignedDecision) -> dict[str, Any]:
    return {
        "event_type": decision.event_type,
        "event_id": decision.event_id,
        "uscc": decision.uscc,
        "decision": decision.decision,
        "issuing_authority": decision.issuing_authority,
        "issued_at": decision.issued_at.isoformat().replace("+00:00", "Z"),
        "key_id": decision.key_id,
    }


@router.post(
    "/v1/decisions/verify",
    responses={503: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    summary="Verify a signed decision, or the event that carries it (no key needed)",
    openapi_extra=VERIFY_BODY,
)
async def verify_decision(state: State, request: Request) -> dict[str, Any]:
    """Check an approval or application decision against the bus's public keys."""
    return await verdict(state, request, verify_decision_bytes, _decision)
