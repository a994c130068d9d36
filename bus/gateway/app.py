"""The gateway's HTTP API: authenticate, validate, publish to ingress, read back certificates.

The gateway answers what it can know at once (bad key, bad JSON, a field of the wrong type,
an event type the department may not publish) with the same reason codes the bus uses in
dead letters, so an integrator sees one vocabulary. It does not de-duplicate or route: a
202 means "on the ingress topic", and the ingest agent still has the last word.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from swagger_ui_bundle import swagger_ui_path

from bus.brokers import wait_for_broker
from bus.certificates import Verifier
from bus.client import BusClient, Receipt
from bus.codec import EventCodec, load_json
from bus.departments import Directory
from bus.errors import (
    AuthorisationError,
    BrokerError,
    BusError,
    ConfigurationError,
    DecodeError,
    SchemaError,
    ValidationFailed,
)
from bus.gateway.cases import CaseIndex
from bus.gateway.certificates import CertificateIndex
from bus.gateway.inbox import Inboxes
from bus.gateway.keys import authenticate, keys_path
from bus.metrics import GatewayMetrics
from bus.publish import Verdict, await_verdicts, verdict_offsets
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.tasks import TASK_STATES

DOCS_ASSETS = "/docs/assets"
"""Swagger UI's files, served by the gateway itself: government networks are often offline."""

MAX_BATCH = 500
"""Events in one batch request: enough for a day's backlog, small enough to validate at once."""

DESCRIPTION = """\
HTTP access to the collaboration bus for department systems that cannot speak Kafka.

Authenticate with your department's API key: `Authorization: Bearer <key_id>.<secret>`.
A `202` means the event is on the bus's ingress topic; the bus still de-duplicates and routes
it. Errors carry a machine-readable `error` reason code (the same codes as the bus's dead
letters) and, for a bad field, its dotted path in `field`. See docs/gateway.md.
"""

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An event envelope (see the README); `source` defaults to your department.",
    "required": ["event_type", "subject", "payload"],
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "event_type": {"type": "string", "example": "penalty.imposed"},
        "schema_version": {"type": "integer", "minimum": 1},
        "source": {"type": "string", "example": "ks.enforcement.huaqiao"},
        "subject": {"type": "string", "description": "the enterprise's USCC"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "correlation_id": {"type": "string"},
        "causation_id": {"type": "string", "format": "uuid"},
        "payload": {"type": "object"},
    },
}


class GatewayError(Exception):
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
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body every error has: ``error``, ``field``, ``message`` (+ details)."""
        return {"error": self.reason, "field": self.field, "message": self.message, **self.extra}


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="Stable reason code, e.g. schema.validation, auth.event_type")
    field: str | None = Field(description="Dotted path of the field at fault, when there is one")
    message: str


class EventVerdict(BaseModel):
    """What the bus made of a published event, when the request asked to wait for it."""

    event_id: str
    verdict: Literal["accepted", "refused", "pending"] = Field(
        description="accepted onto a canonical topic (and, for a task answer, taken by the "
        "worker); refused with a reason; pending: no verdict within the wait"
    )
    refusal: ErrorBody | None = Field(
        default=None, description="Why it was refused, as a dead letter records it"
    )


class Accepted(BaseModel):
    """The event is on the ingress topic; with ``wait``, also what the bus made of it."""

    event_id: str
    status: str = "accepted_for_processing"
    verdict: EventVerdict | None = None


class BatchAccepted(BaseModel):
    """Every event of the batch is on the ingress topic, ids in request order."""

    event_ids: list[str]
    status: str = "accepted_for_processing"
    verdicts: list[EventVerdict] | None = Field(
        default=None, description="With ``wait``: one per event, in request order"
    )


class Health(BaseModel):
    """Whether the broker answers and a worker is consuming."""

    status: str = Field(description="ok, degraded (no worker: events wait on ingress), down")
    broker: str
    worker: str = Field(description="ok, down, or unknown when the broker cannot say")


class InboxPage(BaseModel):
    """A page of the caller's inbox, oldest first."""

    department: str
    items: list[dict[str, Any]] = Field(
        description="{cursor, route, received_at, event}: `route` is the subscription that "
        "delivered it, or `notify` for a task or decision addressed to you"
    )
    next_cursor: int = Field(description="Pass as `cursor` to read on from here")


class TaskList(BaseModel):
    """The caller's tasks."""

    department: str
    tasks: list[dict[str, Any]]


class CaseTrace(BaseModel):
    """Every event of one case, in the order it happened, across departments."""

    correlation_id: str
    steps: list[dict[str, Any]]


@dataclass
class _State:
    settings: Settings
    codec: EventCodec
    directory: Directory
    keys: Path
    metrics: GatewayMetrics
    client: BusClient | None = None
    inboxes: Inboxes | None = None
    certificates: CertificateIndex | None = None
    cases: CaseIndex | None = None
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    asyncapi: dict[str, Any] | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 409, 413, 422, 503)
}
_bearer = HTTPBearer(auto_error=False, description="`<key_id>.<secret>` from `bus gateway keys`")


def _state(request: Request) -> _State:
    state: _State = request.app.state.gateway
    return state


async def _department(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The authenticated department, or 401: everything but verify and health needs one."""
    header = f"Bearer {credentials.credentials}" if credentials else None
    department = authenticate(_state(request).keys, header)
    if department is None:
        raise GatewayError(
            401,
            "auth.key",
            "missing or invalid API key; send 'Authorization: Bearer <key_id>.<secret>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return department


Department = Annotated[str, Depends(_department)]
Wait = Annotated[
    float,
    Query(
        ge=0, le=30,
        description="Seconds to wait for the bus's verdict on each event (accepted, or refused "
        "and why, also by the worker for a task answer); 0 answers once it is on ingress",
    ),
]  # fmt: skip


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and len(declared) < 19 and int(declared) > limit:
        raise GatewayError(413, "size.too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "size.too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> Any:
    try:
        return load_json(data)
    except DecodeError as exc:  # not JSON, or nested deeper than MAX_JSON_DEPTH
        raise GatewayError(400, exc.reason, exc.message) from None


_PARAM_REASONS = {
    "query": "query.invalid",
    "path": "path.invalid",
    "header": "header.invalid",
    "cookie": "cookie.invalid",
    "body": "schema.validation",
}


def _invalid_request(exc: RequestValidationError) -> GatewayError:
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


def _http_error(exc: HTTPException) -> GatewayError:
    """The router's 404 / 405 (and any other HTTP error) in the gateway's body."""
    reason = _HTTP_REASONS.get(exc.status_code, f"http.{exc.status_code}")
    message = {404: "no such route", 405: "method not allowed on this route"}.get(
        exc.status_code, str(exc.detail)
    )
    headers = dict(exc.headers) if exc.headers else None
    return GatewayError(exc.status_code, reason, message, headers=headers)


def _check(state: _State, department: str, obj: Any) -> Envelope:
    """One event as the department sent it -> a validated, authorised envelope (or raise)."""
    if not isinstance(obj, dict):
        raise GatewayError(
            422, "schema.decode", f"an event must be a JSON object, got {type(obj).__name__}"
        )
    if "source" in obj and obj["source"] != department:
        raise GatewayError(
            403,
            "auth.source_mismatch",
            f"source {obj['source']!r} is not the department of this API key ({department})",
            field="source",
        )
    # The id is fixed here so the answer names exactly the event that was published.
    obj = {**obj, "source": department, "event_id": obj.get("event_id") or str(uuid.uuid4())}
    try:
        event = state.codec.from_json(obj)
    except ValidationFailed as exc:
        raise GatewayError(422, exc.reason, exc.message, field=exc.field) from None
    except SchemaError as exc:  # unknown event type or version, not an object
        field = "event_type" if exc.reason == "schema.unknown_type" else None
        raise GatewayError(422, exc.reason, exc.message, field=field) from None
    try:
        state.directory.authorise(department, event.event_type)
    except BusError as exc:
        raise GatewayError(403, exc.reason, exc.message, field="event_type") from None
    try:
        state.directory.policy.check(event)
    except AuthorisationError as exc:
        raise GatewayError(403, exc.reason, exc.message, field=exc.field) from None
    size = len(state.codec.encode(event))
    if size > state.settings.max_event_bytes:
        raise GatewayError(
            413, "size.too_large", f"event is {size} bytes; limit {state.settings.max_event_bytes}"
        )
    return event


RECENT_IDS = 200_000
"""Event ids the gateway remembers having published, to refuse a replay at once with 409."""


def _refuse_replays(state: _State, events: list[Envelope]) -> list[dict[str, Any]]:
    """Events whose id this gateway already published (or that repeat within the request)."""
    seen: set[str] = set()
    replays = []
    for index, e in enumerate(events):
        event_id = str(e.event_id)
        if event_id in state.recent or event_id in seen:
            replays.append({"index": index, "event_id": event_id})
        seen.add(event_id)
    return replays


async def _publish(state: _State, events: list[Envelope]) -> list[Receipt]:
    """Publish, unless an event id was published before: then 409 and nothing is published.

    The gateway remembers the last ``RECENT_IDS`` ids it published; older replays, and
    replays through other paths, still end as ``duplicate.event_id`` dead letters at ingest.
    """
    assert state.client is not None, "the lifespan starts the client"
    if replays := _refuse_replays(state, events):
        raise GatewayError(
            409, "duplicate.event_id",
            f"event_id {replays[0]['event_id']} was already published; nothing was published",
            field="event_id" if len(events) == 1 else f"{replays[0]['index']}.event_id",
            extra={"event_ids": [r["event_id"] for r in replays]},
        )  # fmt: skip
    # Held before the first await: a concurrent request with the same id is refused now, not
    # published beside this one; released again if the broker does not take the events.
    ids = [str(e.event_id) for e in events]
    for event_id in ids:
        state.recent[event_id] = None
    try:
        receipts = await state.client.publish_many(events)
        if state.cases is not None:
            for e in events:
                state.cases.published(e.source, e.correlation_id)
    except BaseException as exc:  # a cancelled request too: ingest still refuses a copy
        for event_id in ids:
            state.recent.pop(event_id, None)
        if isinstance(exc, KafkaError):
            raise GatewayError(
                503, "broker.unavailable", f"could not publish to the bus: {exc}"
            ) from None
        raise
    state.metrics.published.labels(events[0].source).inc(len(ids))  # one department per call
    while len(state.recent) > RECENT_IDS:
        state.recent.popitem(last=False)
    return receipts


def _verdict(v: Verdict) -> EventVerdict:
    if v.reason:
        refusal = ErrorBody(error=v.reason, field=v.field, message=v.error or v.reason)
        return EventVerdict(event_id=str(v.event_id), verdict="refused", refusal=refusal)
    verdict = "accepted" if v.accepted and v.settled else "pending"
    return EventVerdict(event_id=str(v.event_id), verdict=verdict)


async def _publish_and_judge(
    state: _State, events: list[Envelope], wait: float
) -> tuple[list[str], list[EventVerdict] | None]:
    """Publish; with ``wait`` > 0, also wait up to that long for each event's verdict."""
    if wait <= 0:
        return [str(r.event_id) for r in await _publish(state, events)], None
    try:
        start = await verdict_offsets(state.settings)
    except KafkaError as exc:
        raise GatewayError(503, "broker.unavailable", f"could not reach the bus: {exc}") from None
    receipts = await _publish(state, events)
    published = [
        (str(e.event_id), e.event_type, f"{r.topic}/{r.partition}/{r.offset}")
        for e, r in zip(events, receipts, strict=True)
    ]
    verdicts = [_verdict(v) for v in await await_verdicts(state.settings, start, published, wait)]
    return [v.event_id for v in verdicts], verdicts


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


def _inboxes(state: _State, department: str) -> Inboxes:
    if state.inboxes is None or not state.inboxes.knows(department):
        raise GatewayError(503, "inbox.unavailable", f"no inbox for {department} here")
    return state.inboxes


async def _worker_alive(settings: Settings) -> str:
    """ok when the ingest agent's consumer group has members; unknown if the broker can't say."""
    from bus.status import group_members

    members = await group_members(settings, "ingest")
    return "unknown" if members is None else "ok" if members else "down"


def create_app(settings: Settings, metrics: GatewayMetrics | None = None) -> FastAPI:
    """The gateway for ``settings``: one Kafka producer and one inbox reader for its lifetime."""
    state = _State(
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
        cases = CaseIndex(settings)
        async with BusClient(settings, state.codec) as client, inboxes, certificates, cases:
            state.client, state.inboxes = client, inboxes
            state.certificates, state.cases = certificates, cases
            try:
                yield
            finally:
                state.client, state.inboxes, state.certificates, state.cases = (None,) * 4

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
        return await _gateway_error(request, _invalid_request(exc))

    @app.exception_handler(HTTPException)
    async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        return await _gateway_error(request, _http_error(exc))

    app.add_middleware(_Measure, metrics=state.metrics)

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=Accepted,
        responses=_ERRORS,
        summary="Publish one event",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _EVENT_SCHEMA}},
            }
        },
    )
    async def publish_event(request: Request, department: Department, wait: Wait = 0) -> Accepted:
        """Validate and authorise one event as the key's department, then publish it."""
        obj = _parse(await _body(request, settings.max_event_bytes))
        event = _check(state, department, obj)
        (event_id,), verdicts = await _publish_and_judge(state, [event], wait)
        return Accepted(event_id=event_id, verdict=verdicts[0] if verdicts else None)

    @app.post(
        "/v1/events:batch",
        status_code=202,
        response_model=BatchAccepted,
        responses=_ERRORS,
        summary="Publish up to 500 events, all or nothing",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "array", "maxItems": MAX_BATCH, "items": _EVENT_SCHEMA}
                    }
                },
            }
        },
    )
    async def publish_batch(
        request: Request, department: Department, wait: Wait = 0
    ) -> BatchAccepted:
        """Check every event first; publish none unless all pass (422 lists each bad one)."""
        items = _parse(await _body(request, settings.max_event_bytes * 16))
        if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
            raise GatewayError(
                422,
                "batch.invalid",
                f"a batch is a JSON array of 1 to {MAX_BATCH} events",
            )
        events: list[Envelope] = []
        bad: list[dict[str, Any]] = []
        for index, obj in enumerate(items):
            try:
                events.append(_check(state, department, obj))
            except GatewayError as exc:
                bad.append({"index": index, **exc.body()})
        if bad:
            raise GatewayError(
                422,
                "batch.invalid",
                f"{len(bad)} of {len(items)} events are invalid; nothing was published",
                extra={"items": bad},
            )
        event_ids, verdicts = await _publish_and_judge(state, events, wait)
        return BatchAccepted(event_ids=event_ids, verdicts=verdicts)

    app.add_api_route(  # the same route under a slash, for clients that dislike ':'
        "/v1/events/batch",
        publish_batch,
        methods=["POST"],
        status_code=202,
        response_model=BatchAccepted,
        include_in_schema=False,
    )

    @app.get(
        "/v1/certificates/{serial}",
        responses=_ERRORS | {404: {"model": ErrorBody}},
        summary="Fetch an issued certificate, as signed",
    )
    async def get_certificate(serial: str, department: Department) -> JSONResponse:
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

    @app.post(
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
    async def verify_certificate(request: Request) -> dict[str, Any]:
        """Check a certificate against the bus's public keys; anyone may ask."""
        data = await _body(request, settings.max_event_bytes)
        try:
            verifier = Verifier.from_paths([settings.data_dir / "keys"])
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

    @app.get("/v1/inbox", response_model=InboxPage, responses=_ERRORS, summary="Read your inbox")
    async def read_inbox(
        department: Department,
        cursor: Annotated[int, Query(ge=0, description="Offset to read from; 0: the start")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        wait: Annotated[
            float, Query(ge=0, le=30, description="Seconds to wait when nothing is new")
        ] = 0,
    ) -> InboxPage:
        """Routed events and your tasks, in order; resume from `next_cursor`.

        Each department reads only its own inbox: the key decides which.
        """
        inboxes = _inboxes(state, department)
        items, nxt = await inboxes.read(department, cursor, limit, wait)
        return InboxPage(department=department, items=items, next_cursor=nxt)

    @app.get("/v1/tasks", response_model=TaskList, responses=_ERRORS, summary="List your tasks")
    async def list_tasks(
        department: Department,
        state_: Annotated[
            str | None, Query(alias="state", description=f"One of: {', '.join(TASK_STATES)}")
        ] = None,
    ) -> TaskList:
        """Tasks assigned to you, oldest first; `state` filters (overdue: open and late)."""
        if state_ is not None and state_ not in TASK_STATES:
            raise GatewayError(
                422, "query.invalid", f"state must be one of {', '.join(TASK_STATES)}",
                field="state",
            )  # fmt: skip
        tasks = await _inboxes(state, department).tasks(department, state_)
        return TaskList(department=department, tasks=[t.body() for t in tasks])

    @app.post(
        "/v1/tasks/{task_id}/{action}",
        status_code=202,
        response_model=Accepted,
        responses=_ERRORS | {404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
        summary="Accept, complete or reject one of your tasks",
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "outcome": {"type": "string", "example": "confirmed",
                                            "description": "complete: required"},
                                "reason": {"type": "string", "description": "reject: required"},
                                "note": {"type": "string"},
                                "event_id": {"type": "string", "format": "uuid",
                                             "description": "yours, to make a retry safe"},
                            },
                        }
                    }
                },
            }
        },
    )  # fmt: skip
    async def answer_task(
        task_id: str, action: str, request: Request, department: Department
    ) -> Accepted:
        """Publish task.accepted / completed / rejected for a task assigned to you.

        The bus checks again when the event arrives: only the assignee's answer counts.
        """
        kinds = {"accept": "task.accepted", "complete": "task.completed", "reject": "task.rejected"}
        if action not in kinds:
            raise GatewayError(404, "route.unknown", f"no action {action!r}; use accept, "
                               "complete or reject", field="action")  # fmt: skip
        data = await _body(request, 64 * 1024)
        body = _parse(data) if data.strip() else {}
        if not isinstance(body, dict):
            raise GatewayError(422, "schema.decode", "the body must be a JSON object")
        task = await _inboxes(state, department).task(department, task_id)
        if task is None:
            raise GatewayError(404, "task.unknown", f"no task {task_id!r} in your inbox",
                               field="task_id")  # fmt: skip
        if task.closed:
            raise GatewayError(409, "task.closed", f"task {task_id} is already {task.state}")
        allowed = {"note", "event_id"} | {"complete": {"outcome"}, "reject": {"reason"}}.get(
            action, set()
        )
        if unknown := sorted(set(body) - allowed):
            raise GatewayError(422, "schema.validation", f"unknown field {unknown[0]!r} for "
                               f"{action}", field=unknown[0])  # fmt: skip
        payload = {"task_id": task_id, **{k: v for k, v in body.items() if k != "event_id"}}
        obj = {
            "event_type": kinds[action], "subject": task.subject,
            "correlation_id": task.correlation_id, "causation_id": task.created_event_id,
            "payload": payload,
        }  # fmt: skip
        if "event_id" in body:
            obj["event_id"] = body["event_id"]
        event = _check(state, department, obj)
        (receipt,) = await _publish(state, [event])
        return Accepted(event_id=str(receipt.event_id))

    @app.get(
        "/v1/cases/{correlation_id}",
        response_model=CaseTrace,
        responses=_ERRORS | {404: {"model": ErrorBody}},
        summary="Every event of one case, in order, across departments",
    )
    async def get_case(correlation_id: str, department: Department) -> CaseTrace:
        """The case's events from the evidence log, for a department that takes part in it.

        Participants are those the bus gave a role (the requester, assignees, supervisors),
        departments whose inbox received an event of the case, and, until the bus acts on it,
        whoever published it through this gateway. Access is decided from memory before the
        case is read; anyone else gets 404, as for a case that does not exist. Events others
        wrote into the case are not shown.
        """
        from bus.trace import participants, trace

        missing = GatewayError(  # the same answer for a case that is not yours
            404, "case.not_found", f"no case {correlation_id[:128]!r}", field="correlation_id"
        )
        if not 1 <= len(correlation_id) <= 128 or state.cases is None:
            raise missing
        try:
            named = await _inboxes(state, department).received(department, correlation_id) or (
                await state.cases.named(department, correlation_id)
            )
        except TimeoutError:
            raise GatewayError(
                503, "broker.unavailable", "the case index is not ready; try again"
            ) from None
        if not (named or state.cases.recently_published(department, correlation_id)):
            raise missing
        state.metrics.case_reads.inc()
        try:
            steps = await trace(settings, correlation_id, max_seconds=20)
        except BrokerError:  # the topics were not read to their end in time
            raise GatewayError(
                503, "broker.unavailable", "the case could not be read; try again"
            ) from None
        parties = participants(steps)
        if not steps or not (named or department in parties):
            raise missing  # published into it, but the case is another's
        steps = [s for s in steps if s.source in parties]  # not what outsiders wrote into it
        t0 = steps[0].at
        return CaseTrace(
            correlation_id=correlation_id,
            steps=[
                {"at": s.at.isoformat(), "after_ms": round((s.at - t0).total_seconds() * 1000),
                 "event_type": s.event_type, "source": s.source, "subject": s.subject,
                 "event_id": s.event_id, "summary": s.summary, "refused": s.refused or None}
                for s in steps
            ],
        )  # fmt: skip

    @app.get(
        "/asyncapi.json",
        responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
                   503: {"model": ErrorBody}},
        summary="The AsyncAPI document of the bus's Kafka topics (no key needed)",
    )  # fmt: skip
    async def asyncapi() -> JSONResponse:
        """Topics, event types and their Avro schemas, for systems that speak Kafka.

        The same document as `bus schemas asyncapi`, made from this gateway's settings.
        """
        from bus.asyncapi import asyncapi_document

        if state.asyncapi is None:
            try:
                state.asyncapi = asyncapi_document(settings, directory=state.directory)
            except BusError as exc:
                raise GatewayError(503, exc.reason, exc.message) from None
        return JSONResponse(state.asyncapi)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        """Prometheus metrics of this gateway."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Broker reachable (else 503) and a worker consuming ingress (else `degraded`).

        Without a worker the gateway still accepts events (they wait on ingress), so a
        missing worker does not fail the probe; it shows in `status`.
        """
        try:
            await wait_for_broker(settings.broker, 2, settings.kafka_security())
        except BusError:
            return JSONResponse(
                {"status": "down", "broker": "unreachable", "worker": "unknown"}, status_code=503
            )
        worker = await _worker_alive(settings)
        status = "ok" if worker != "down" else "degraded"
        return JSONResponse({"status": status, "broker": "ok", "worker": worker})

    return app


__all__ = ["MAX_BATCH", "GatewayError", "create_app"]
