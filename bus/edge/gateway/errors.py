"""The gateway's errors: HTTP answers in one body, inside the bus's error tree.

``GatewayError`` is a ``BusError`` whose ``reason`` is the same code a dead letter carries,
with the HTTP status beside it; the framework's own refusals (bad parameters, unknown routes)
are turned into one with a reason of their own.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from bus.errors import BusError


class GatewayError(BusError):
    """An answer other than success: HTTP status, reason code, message and maybe a field."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.field = field
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body every error has: ``error``, ``field``, ``message`` (+ details)."""
        return {"error": self.reason, "field": self.field, "message": self.message, **self.extra}


_PARAM_REASONS = {
    "query": "query.invalid",
    "path": "path.invalid",
    "header": "header.invalid",
    "cookie": "cookie.invalid",
    "body": "schema.validation",
}


def invalid_request(exc: RequestValidationError) -> GatewayError:
    """The framework's own check of parameters, answered in the gateway's error body.

    ``query.invalid`` (``path.invalid`` ...) with ``field`` naming the parameter; the message
    is pydantic's, never the value sent.
    """
    errors = exc.errors()
    loc = [str(p) for p in errors[0].get("loc", ())] if errors else []
    reason = _PARAM_REASONS.get(loc[0] if loc else "", "request.invalid")
    name = ".".join(loc[1:]) or None
    msg = str(errors[0].get("msg", "invalid")) if errors else "invalid request"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return GatewayError(422, reason, f"{name or 'request'}: {msg}{more}", field=name)


_HTTP_REASONS = {404: "route.unknown", 405: "route.method"}


def http_error(exc: HTTPException) -> GatewayError:
    """The router's 404 / 405 (and any other HTTP error) in the gateway's body."""
    reason = _HTTP_REASONS.get(exc.status_code, f"http.{exc.status_code}")
    message = {404: "no such route", 405: "method not allowed on this route"}.get(
        exc.status_code, str(exc.detail)
    )
    headers = dict(exc.headers) if exc.headers else None
    return GatewayError(exc.status_code, reason, message, headers=headers)


__all__ = ["GatewayError", "http_error", "invalid_request"]
