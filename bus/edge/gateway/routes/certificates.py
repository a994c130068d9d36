"""Certificates: fetch one as signed, verify one (anyone may)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bus.domain.certificates import Verifier
from bus.edge.gateway.common import ERRORS, Department, State, read_body
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import ErrorBody
from bus.errors import BusError, ConfigurationError, ValidationFailed

router = APIRouter()


@router.get(
    "/v1/certificates/{serial}",
    responses=ERRORS | {404: {"model": ErrorBody}},
    summary="Fetch an issued certificate, as signed",
)
async def get_certificate(state: State, serial: str, department: Department) -> JSONResponse:
    """The signed document, to hand to whoever needs it (they can verify it offline)."""
    if not 8 <= len(serial) <= 64 or state.certificates is None:
        raise GatewayError(404, "certificate.not_found", f"no certificate {serial!r}")
    try:
        cert = await state.certificates.get(serial)
    except TimeoutError:
        raise GatewayError(
            503, "broker.unavailable", "the certificate index is not ready; try again"
        ) from None
    if cert is None:  # never issued, or its signature does not verify
        raise GatewayError(404, "certificate.not_found", f"no certificate {serial!r}")
    return JSONResponse(cert.model_dump(mode="json"))


@router.post(
    "/v1/certificates/verify",
    responses={503: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    summary="Verify a signed certificate (no key needed)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def verify_certificate(state: State, request: Request) -> dict[str, Any]:
    """Check a certificate against the bus's public keys; anyone may ask."""
    data = await read_body(request, state.settings.max_event_bytes)
    try:
        verifier = Verifier.from_paths([state.settings.data_dir / "keys"])
    except ConfigurationError as exc:
        raise GatewayError(503, exc.reason, exc.message) from None
    try:
        cert = verifier.verify_bytes(data)
    except ValidationFailed as exc:
        return {
            "valid": False,
            "reason": exc.reason,
            "field": exc.field,
            "message": exc.message,
        }
    except BusError as exc:
        return {"valid": False, "reason": exc.reason, "message": exc.message}
    return {
        "valid": True,
        "serial": cert.serial,
        "uscc": cert.uscc,
        "enterprise_name": cert.enterprise_name,
        "period_start": cert.period_start.isoformat(),
        "period_end": cert.period_end.isoformat(),
        "purpose": cert.purpose.value,
        "result": cert.result.value,
        "penalties_on_record": len(cert.record),
        "issuing_authority": cert.issuing_authority,
        "issued_at": cert.issued_at.isoformat().replace("+00:00", "Z"),
        "key_id": cert.key_id,
    }
