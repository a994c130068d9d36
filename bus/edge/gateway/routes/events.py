"""Publishing: one event, or a batch all or nothing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bus.edge.gateway.common import (
    ERRORS,
    EVENT_SCHEMA,
    MAX_BATCH,
    Department,
    State,
    Wait,
    check_event,
    parse_json,
    publish_and_judge,
    read_body,
)
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import Accepted, BatchAccepted
from bus.schemas.envelope import Envelope

router = APIRouter()


@router.post(
    "/v1/events",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
    summary="Publish one event",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EVENT_SCHEMA}},
        }
    },
)
async def publish_event(
    state: State, request: Request, department: Department, wait: Wait = 0
) -> Accepted:
    """Validate and authorise one event as the key's department, then publish it."""
    obj = parse_json(await read_body(request, state.settings.max_event_bytes))
    event = check_event(state, department, obj)
    (event_id,), verdicts = await publish_and_judge(state, [event], wait)
    return Accepted(event_id=event_id, verdict=verdicts[0] if verdicts else None)


@router.post(
    "/v1/events:batch",
    status_code=202,
    response_model=BatchAccepted,
    responses=ERRORS,
    summary="Publish up to 500 events, all or nothing",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "array", "maxItems": MAX_BATCH, "items": EVENT_SCHEMA}
                }
            },
        }
    },
)
async def publish_batch(
    state: State, request: Request, department: Department, wait: Wait = 0
) -> BatchAccepted:
    """Check every event first; publish none unless all pass (422 lists each bad one)."""
    items = parse_json(await read_body(request, state.settings.max_event_bytes * 16))
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
            events.append(check_event(state, department, obj))
        except GatewayError as exc:
            bad.append({"index": index, **exc.body()})
    if bad:
        raise GatewayError(
            422,
            "batch.invalid",
            f"{len(bad)} of {len(items)} events are invalid; nothing was published",
            extra={"items": bad},
        )
    event_ids, verdicts = await publish_and_judge(state, events, wait)
    return BatchAccepted(event_ids=event_ids, verdicts=verdicts)


router.add_api_route(  # the same route under a slash, for clients that dislike ':'
    "/v1/events/batch",
    publish_batch,
    methods=["POST"],
    status_code=202,
    response_model=BatchAccepted,
    include_in_schema=False,
)
