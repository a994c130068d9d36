"""The gateway's answers, as OpenAPI shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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


__all__ = [
    "Accepted",
    "BatchAccepted",
    "CaseTrace",
    "ErrorBody",
    "EventVerdict",
    "Health",
    "InboxPage",
    "TaskList",
]
