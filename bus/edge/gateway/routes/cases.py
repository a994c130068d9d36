"""One case's events across departments, for those taking part in it."""

from __future__ import annotations

from fastapi import APIRouter

from bus.edge.gateway.common import ERRORS, Department, State, inboxes_of
from bus.edge.gateway.errors import GatewayError
from bus.edge.gateway.models import CaseTrace, ErrorBody
from bus.errors import BrokerError

router = APIRouter()


@router.get(
    "/v1/cases/{correlation_id}",
    response_model=CaseTrace,
    responses=ERRORS | {404: {"model": ErrorBody}},
    summary="Every event of one case, in order, across departments",
)
async def get_case(state: State, correlation_id: str, department: Department) -> CaseTrace:
    """The case's events from the evidence log, for a department that takes part in it.

    Participants are those the bus gave a role (the requester, assignees, supervisors),
    departments whose inbox received an event of the case, and, until the bus acts on it,
    whoever published it through this gateway. Access is decided from memory before the
    case is read; anyone else gets 404, as for a case that does not exist. Events others
    wrote into the case are not shown.
    """
    from bus.edge.trace import participants, trace

    missing = GatewayError(  # the same answer for a case that is not yours
        404, "case.not_found", f"no case {correlation_id[:128]!r}", field="correlation_id"
    )
    if not 1 <= len(correlation_id) <= 128 or state.cases is None:
        raise missing
    try:
        named = await inboxes_of(state, department).received(department, correlation_id) or (
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
        steps = await trace(state.settings, correlation_id, max_seconds=20)
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
