"""The gateway's HTTP API: authenticate, validate, publish to ingress, read back certificates.

The gateway answers what it can know at once (bad key, bad JSON, a field of the wrong type,
an event type the department may not publish) with the same reason codes the bus uses in
dead letters, so an integrator sees one vocabulary. It does not de-duplicate or route: a
202 means "on the ingress topic", and the ingest agent still has the last word. The routes
are in ``bus.edge.gateway.routes``, one module per resource.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

from bus.domain.departments import Directory
from bus.edge.gateway.cases import CaseIndex
from bus.edge.gateway.certificates import CertificateIndex, ReportIndex
from bus.edge.gateway.common import MAX_BATCH, GatewayState
from bus.edge.gateway.errors import GatewayError, http_error, invalid_request
from bus.edge.gateway.inbox import Inboxes
from bus.edge.gateway.keys import keys_path
from bus.edge.gateway.routes import ROUTERS
from bus.settings import Settings
from bus.streaming.client import BusClient
from bus.streaming.codec import EventCodec
from bus.streaming.metrics import GatewayMetrics

DOCS_ASSETS = "/docs/assets"
"""Swagger UI's files, served by the gateway itself: government networks are often offline."""

DESCRIPTION = """\
HTTP access to the collaboration bus for department systems that cannot speak Kafka.

Authenticate with your department's API key: `Authorization: Bearer <key_id>.<secret>`.
A `202` means the event is on the bus's ingress topic; the bus still de-duplicates and routes
it. Errors carry a machine-readable `error` reason code (the same codes as the bus's dead
letters) and, for a bad field, its dotted path in `field`. See docs/gateway.md.
"""


class _Measure:
    """Requests by route template and status, and their duration: plain ASGI, no extra task.

    The route's template, never the raw path: ids in paths would be unbounded labels.
    """

    def __init__(self, app: Any, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_seconds.labels(template, method).observe(time.perf_counter() - t0)


def create_app(settings: Settings, metrics: GatewayMetrics | None = None) -> FastAPI:
    """The gateway for ``settings``: one Kafka producer and one inbox reader for its lifetime."""
    state = GatewayState(
        settings=settings,
        codec=EventCodec(),
        directory=Directory.load(settings.departments_file, settings.policy_file),
        keys=keys_path(settings.data_dir),
        metrics=metrics or GatewayMetrics(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inboxes = Inboxes(settings, state.directory.departments)
        certificates = CertificateIndex(settings, state.codec, settings.data_dir / "keys")
        reports = ReportIndex(settings, state.codec, settings.data_dir / "keys")
        cases = CaseIndex(settings)
        async with (
            BusClient(settings, state.codec) as client,
            inboxes,
            certificates,
            reports,
            cases,
        ):
            state.client, state.inboxes = client, inboxes
            state.certificates, state.reports, state.cases = certificates, reports, cases
            try:
                yield
            finally:
                state.client, state.inboxes, state.cases = None, None, None
                state.certificates, state.reports = None, None

    app = FastAPI(
        title="Collaboration bus gateway",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from local files; FastAPI's page loads them from a CDN
        redoc_url=None,  # ReDoc too, and nothing ships it locally
        openapi_url="/openapi.json",
    )
    app.state.gateway = state
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """Swagger UI on the gateway's own assets, so it works without the internet."""
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _gateway_error(request, invalid_request(exc))

    @app.exception_handler(HTTPException)
    async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        return await _gateway_error(request, http_error(exc))

    app.add_middleware(_Measure, metrics=state.metrics)

    for router in ROUTERS:
        app.include_router(router)
    return app


__all__ = ["MAX_BATCH", "GatewayError", "create_app"]
