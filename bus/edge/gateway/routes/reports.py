"""Special credit reports (专用信用报告) and signed decisions: fetch a report, verify either."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bus.domain.certificates import Verifier
from bus.domain.decisions import verify_decision_bytes
from bus.domain.reports import verify_report_bytes
from bus.edge.gateway.common import ERRORS, Department, State, read_body
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import ErrorBody
from bus.errors import BusError, ConfigurationError, ValidationFailed

router = APIRouter()


@router.get(
    "/v1/reports/{serial}",
    responses=ERRORS | {404: {"model": ErrorBody}},
    summary="Fetch an issued credit report, as signed",
)
async def get_report(state: State, serial: str, department: Department) -> JSONResponse:
    """The signed report, to hand to whoever needs it (they can verify it offline)."""
    if not 8 <= len(serial) <= 64 or state.reports is None:
        raise GatewayError(404, "report.not_found", f"no report {serial!r}")
    try:
        report = await state.reports.get(serial)
    except TimeoutError:
        raise GatewayError(
            503, "broker.unavailable", "the report index is not ready; try again"
        ) from None
    if report is None:  # never issued, or its signature does not verify
        raise GatewayError(404, "report.not_found", f"no report {serial!r}")
    return JSONResponse(report.model_dump(mode="json"))


@router.post(
    "/v1/reports/verify",
    responses={503: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    summary="Verify a signed credit report (no key needed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def verify_report(state: State, request: Request) -> dict[str, Any]:
    """Check a report against the bus's public keys; anyone may ask."""
    data = await read_body(request, state.settings.max_event_bytes)
    try:
        verifier = Verifier.from_paths([state.settings.data_dir / "keys"])
    except ConfigurationError as exc:
        raise GatewayError(503, exc.reason, exc.message) from None
    try:
        report = verify_report_bytes(verifier, data)
    except ValidationFailed as exc:
        return {"valid": False, "reason": exc.reason, "field": exc.field, "message": exc.message}
    except BusError as exc:
        return {"valid": False, "reason": exc.reason, "message": exc.message}
    return {
        "valid": True,
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
    "/v1/decisions/verify",
    responses={503: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    summary="Verify a signed decision, or the event that carries it (no key needed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def verify_decision(state: State, request: Request) -> dict[str, Any]:
    """Check an approval or application decision against the bus's public keys."""
    data = await read_body(request, state.settings.max_event_bytes)
    try:
        verifier = Verifier.from_paths([state.settings.data_dir / "keys"])
    except ConfigurationError as exc:
        raise GatewayError(503, exc.reason, exc.message) from None
    try:
        decision = verify_decision_bytes(verifier, data)
    except ValidationFailed as exc:
        return {"valid": False, "reason": exc.reason, "field": exc.field, "message": exc.message}
    except BusError as exc:
        return {"valid": False, "reason": exc.reason, "message": exc.message}
    return {
        "valid": True,
        "event_type": decision.event_type,
        "event_id": decision.event_id,
        "uscc": decision.uscc,
        "decision": decision.decision,
        "issuing_authority": decision.issuing_authority,
        "issued_at": decision.issued_at.isoformat().replace("+00:00", "Z"),
        "key_id": decision.key_id,
    }
