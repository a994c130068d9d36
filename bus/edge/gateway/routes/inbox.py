"""A department's inbox: routed events and its tasks, in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from bus.edge.gateway.common import ERRORS, Department, State, inboxes_of
from bus.edge.gateway.models import InboxPage

router = APIRouter()


@router.get("/v1/inbox", response_model=InboxPage, responses=ERRORS, summary="Read your inbox")
async def read_inbox(
    state: State,
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
    inboxes = inboxes_of(state, department)
    items, nxt = await inboxes.read(department, cursor, limit, wait)
    return InboxPage(department=department, items=items, next_cursor=nxt)
