"""A department's tasks: list them, accept, complete or reject one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from bus.domain.tasks import TASK_STATES
from bus.edge.gateway.common import (
    ERRORS,
    Department,
    State,
    check_event,
    inboxes_of,
    parse_json,
    publish,
    read_body,
)
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import Accepted, ErrorBody, TaskList

router = APIRouter()


@router.get("/v1/tasks", response_model=TaskList, responses=ERRORS, summary="List your tasks")
async def list_tasks(
    state: State,
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
    tasks = await inboxes_of(state, department).tasks(department, state_)
    return TaskList(department=department, tasks=[t.body() for t in tasks])


@router.post(
    "/v1/tasks/{task_id}/{action}",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS | {404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
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
    state: State, task_id: str, action: str, request: Request, department: Department
) -> Accepted:
    """Publish task.accepted / completed / rejected for a task assigned to you.

    The bus checks again when the event arrives: only the assignee's answer counts.
    """
    kinds = {"accept": "task.accepted", "complete": "task.completed", "reject": "task.rejected"}
    if action not in kinds:
        raise GatewayError(404, "route.unknown", f"no action {action!r}; use accept, "
                           "complete or reject", field="action")  # fmt: skip
    data = await read_body(request, 64 * 1024)
    body = parse_json(data) if data.strip() else {}
    if not isinstance(body, dict):
        raise GatewayError(422, "schema.decode", "the body must be a JSON object")
    task = await inboxes_of(state, department).task(department, task_id)
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
    event = check_event(state, department, obj)
    (receipt,) = await publish(state, [event])
    return Accepted(event_id=str(receipt.event_id))
