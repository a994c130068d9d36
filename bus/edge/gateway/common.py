"""What every route of the gateway shares: its state, the caller's department, publishing.

Routes live in ``bus.edge.gateway.routes``, one module per resource; ``bus.edge.gateway.app`` puts
them together.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from aiokafka.errors import KafkaError
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bus.domain.certificates import Verifier
from bus.domain.departments import Directory
from bus.edge.gateway.cases import CaseIndex
from bus.edge.gateway.certificates import CertificateIndex, ReportIndex
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.inbox import Inboxes
from bus.edge.gateway.keys import authenticate
from bus.edge.gateway.models import ErrorBody, EventVerdict
from bus.edge.publish import Verdict, await_verdicts, verdict_offsets
from bus.errors import (
    AuthorisationError,
    BusError,
    ConfigurationError,
    DecodeError,
    SchemaError,
    ValidationFailed,
)
from bus.schemas.envelope import Envelope
from bus.schemas.jsontext import load_json
from bus.settings import Settings
from bus.streaming.client import BusClient, Receipt
from bus.streaming.codec import EventCodec
from bus.streaming.metrics import GatewayMetrics

MAX_BATCH = 500
"""Events in one batch request: enough for a day's backlog, small enough to validate at once."""

EVENT_SCHEMA: dict[str, Any] = {
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


@dataclass
class GatewayState:
    settings: Settings
    codec: EventCodec
    directory: Directory
    keys: Path
    metrics: GatewayMetrics
    client: BusClient | None = None
    inboxes: Inboxes | None = None
    certificates: CertificateIndex | None = None
    reports: ReportIndex | None = None
    cases: CaseIndex | None = None
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    asyncapi: dict[str, Any] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 409, 413, 422, 503)
}
bearer = HTTPBearer(auto_error=False, description="`<key_id>.<secret>` from `bus gateway keys`")


def gateway_state(request: Request) -> GatewayState:
    """The gateway's state, as ``create_app`` made it."""
    state: GatewayState = request.app.state.gateway
    return state


async def department_of(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The authenticated department, or 401: everything but verify and health needs one."""
    header = f"Bearer {credentials.credentials}" if credentials else None
    department = authenticate(gateway_state(request).keys, header)
    if department is None:
        raise GatewayError(
            401,
            "auth.key",
            "missing or invalid API key; send 'Authorization: Bearer <key_id>.<secret>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return department


Department = Annotated[str, Depends(department_of)]
State = Annotated[GatewayState, Depends(gateway_state)]
Wait = Annotated[
    float,
    Query(
        ge=0, le=30,
        description="Seconds to wait for the bus's verdict on each event (accepted, or refused "
        "and why, also by the worker for a task answer); 0 answers once it is on ingress",
    ),
]  # fmt: skip


VERIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
"""The OpenAPI request body of a verification: any JSON object."""

_D = TypeVar("_D")


async def verdict(
    state: GatewayState,
    request: Request,
    check: Callable[[Verifier, bytes], _D],
    describe: Callable[[_D], dict[str, Any]],
) -> dict[str, Any]:
    """Check a signed document anyone posted against the bus's public keys.

    ``valid: true`` and what ``describe`` says of it, or ``valid: false`` with the reason (and
    the field); a 200 either way, the check itself worked. No keys here yet: 503.
    """
    data = await read_body(request, state.settings.max_event_bytes)
    try:
        verifier = Verifier.from_paths([state.settings.data_dir / "keys"])
    except ConfigurationError as exc:
        raise GatewayError(503, exc.reason, exc.message) from None
    try:
        document = check(verifier, data)
    except ValidationFailed as exc:
        return {"valid": False, "reason": exc.reason, "field": exc.field, "message": exc.message}
    except BusError as exc:
        return {"valid": False, "reason": exc.reason, "message": exc.message}
    return {"valid": True, **describe(document)}


async def read_body(request: Request, limit: int) -> bytes:
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


def parse_json(data: bytes) -> Any:
    """A body as JSON, or 400 with the decoder's reason (not JSON, nested too deep)."""
    try:
        return load_json(data)
    except DecodeError as exc:  # not JSON, or nested deeper than MAX_JSON_DEPTH
        raise GatewayError(400, exc.reason, exc.message) from None


def check_event(state: GatewayState, department: str, obj: Any) -> Envelope:
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


def refuse_replays(state: GatewayState, events: list[Envelope]) -> list[dict[str, Any]]:
    """Events whose id this gateway already published (or that repeat within the request)."""
    seen: set[str] = set()
    replays = []
    for index, e in enumerate(events):
        event_id = str(e.event_id)
        if event_id in state.recent or event_id in seen:
            replays.append({"index": index, "event_id": event_id})
        seen.add(event_id)
    return replays


async def publish(state: GatewayState, events: list[Envelope]) -> list[Receipt]:
    """Publish, unless an event id was published before: then 409 and nothing is published.

    The gateway remembers the last ``RECENT_IDS`` ids it published; older replays, and
    replays through other paths, still end as ``duplicate.event_id`` dead letters at ingest.
    """
    assert state.client is not None, "the lifespan starts the client"
    if replays := refuse_replays(state, events):
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


def verdict_body(v: Verdict) -> EventVerdict:
    """The bus's verdict on one event, as the gateway answers it."""
    if v.reason:
        refusal = ErrorBody(error=v.reason, field=v.field, message=v.error or v.reason)
        return EventVerdict(event_id=str(v.event_id), verdict="refused", refusal=refusal)
    verdict = "accepted" if v.accepted and v.settled else "pending"
    return EventVerdict(event_id=str(v.event_id), verdict=verdict)


async def publish_and_judge(
    state: GatewayState, events: list[Envelope], wait: float
) -> tuple[list[str], list[EventVerdict] | None]:
    """Publish; with ``wait`` > 0, also wait up to that long for each event's verdict."""
    if wait <= 0:
        return [str(r.event_id) for r in await publish(state, events)], None
    try:
        start = await verdict_offsets(state.settings)
    except KafkaError as exc:
        raise GatewayError(503, "broker.unavailable", f"could not reach the bus: {exc}") from None
    receipts = await publish(state, events)
    published = [
        (str(e.event_id), e.event_type, f"{r.topic}/{r.partition}/{r.offset}")
        for e, r in zip(events, receipts, strict=True)
    ]
    verdicts = [
        verdict_body(v) for v in await await_verdicts(state.settings, start, published, wait)
    ]
    return [v.event_id for v in verdicts], verdicts


def inboxes_of(state: GatewayState, department: str) -> Inboxes:
    """The inbox reader, if it serves ``department``; else 503 ``inbox.unavailable``."""
    if state.inboxes is None or not state.inboxes.knows(department):
        raise GatewayError(503, "inbox.unavailable", f"no inbox for {department} here")
    return state.inboxes


async def worker_alive(settings: Settings) -> str:
    """ok when the ingest agent's consumer group has members; unknown if the broker can't say."""
    from bus.edge.status import group_members

    members = await group_members(settings, "ingest")
    return "unknown" if members is None else "ok" if members else "down"
