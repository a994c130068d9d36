"""Certificates: fetch one as signed, verify one (anyone may)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bus.domain.certificates import SignedCertificate, Verifier
from bus.edge.gateway.certificates import CertificateIndex
from bus.edge.gateway.common import ERRORS, VERIFY_BODY, Department, State, verdict
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import ErrorBody

router = APIRouter()


async def by_serial(
    index: CertificateIndex | None, serial: str, noun: str, *, reason: str
) -> JSONResponse:
    """The signed document ``serial`` from an index of verified ones; 404 ``reason`` when
    there is none."""
    if not 8 <= len(serial) <= 64 or index is None:
        raise GatewayError(404, reason, f"no {noun} {serial!r}")
    try:
        doc = await index.get(serial)
    except TimeoutError:
        raise GatewayError(
            503, "broker.unavailable", f"the {noun} index is not ready; try again"
        ) from None
    if doc is None:  # never issued, or its signature does not verify
        raise GatewayError(404, reason, f"no {noun} {serial!r}")
    return JSONResponse(doc.model_dump(mode="json"))


@router.get(
    "/v1/certificates/{serial}",
    responses=ERRORS | {404: {"model": ErrorBody}},
    summary="Fetch an issued certificate, as signed",
)
async def get_certificate(state: State, serial: str, department: Department) -> JSONResponse:
    """The signed document, to hand to whoever needs it (they can verify it offline)."""
    return await by_serial(
        state.certificates, serial, "certificate", reason="certificate.not_found"
    )


def _certificate(cert: SignedCertificate) -> dict[str, Any]:
    return {
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


@router.post(
    "/v1/certificates/verify",
    responses={503: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    summary="Verify a signed certificate (no key needed)",
    openapi_extra=VERIFY_BODY,
)
async def verify_certificate(state: State, request: Request) -> dict[str, Any]:
    """Check a certificate against the bus's public keys; anyone may ask."""
    return await verdict(state, request, Verifier.verify_bytes, _certificate)
