"""Case steps: what the flow hands the case engine, and the ids derived from them.

A step carries the canonical event's own bytes and the enterprise record as of it, so a
decision depends only on the log. Every id the engine makes is derived (uuid5) from its
cause: the same trigger always names the same case, task and document.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Literal

from bus.agents.out import Headers
from bus.domain.matters import Matter
from bus.domain.record import EnterpriseRecord
from bus.schemas.envelope import Envelope

BUS = "ks.bus"
"""The bus's own department code: the source of its decisions and tasks."""
ANSWERS = ("task.accepted", "task.completed", "task.rejected")
"""Answers to any task; a matter may name other events that answer its tasks (``answered_by``)."""
STAGE = "cases"
"""``bus.stage`` of the dead letters this agent writes."""
_IDS = uuid.UUID("0b5e7c1e-6a1d-4c55-9d0e-4b7573000001")  # namespace of derived ids

StepKind = Literal["trigger", "answer", "signal", "tick"]
"""A case step: a matter's trigger, an answer to a task, an event that may end cases (a
matter's ``cancel``), or a deadline tick."""


def derived_id(*parts: str) -> uuid.UUID:
    """A stable event id for an effect: the same cause always gives the same id."""
    return uuid.uuid5(_IDS, "/".join(parts))


def encode_step(
    kind: StepKind,
    at: datetime,
    value: bytes,
    headers: Headers,
    origin: str,
    record: EnterpriseRecord,
) -> bytes:
    """A case step for ``cases``: the canonical event's own bytes and the record as of it."""
    return json.dumps(
        {
            "kind": kind,
            "at": round(at.timestamp() * 1000),
            "origin": origin,
            "event": base64.b64encode(value).decode(),
            "headers": [[k, base64.b64encode(v).decode()] for k, v in headers],
            "record": record.model_dump(
                mode="json", include={"uscc", "status", "profile", "penalties", "licences"}
            ),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def case_id(matter: Matter, trigger: Envelope) -> str:
    """A case is named by its matter and its trigger: one trigger may open several matters."""
    return case_key(matter.name, str(trigger.event_id))


def case_key(matter: str, trigger_id: str) -> str:
    """``case_id`` from names: the matter's, and the trigger's event id."""
    return str(derived_id("case", matter, trigger_id))


def task_id_for(template: str, case: str, assignee: str) -> str:
    """A task's stable id: the same case and assignee always give the same task."""
    return f"task-{derived_id(template, case, assignee).hex[:16]}"


def starts_case(matter: Matter, trigger: Envelope, record: EnterpriseRecord) -> bool:
    """Whether ``matter``'s conditions hold for this trigger on this record, decided by the flow.

    Joint discipline reviews licences: a penalty on an enterprise holding none has nothing
    to review, and most penalties are such, so the flow does not hand them on.
    """
    return not matter.when or matter.facts(trigger, record).hold(matter.when)


def step_event_id(value: bytes) -> str | None:
    """The event id of the event a case step carries; ``None`` for a deadline tick."""
    step = json.loads(value)
    for name, encoded in step.get("headers", ()):
        if name == "event_id":
            return base64.b64decode(encoded).decode()
    return None


def tick_step(at: datetime) -> bytes:
    """A deadline tick: everything due at ``at`` in the partition it is put on fires."""
    return json.dumps({"kind": "tick", "at": round(at.timestamp() * 1000)}).encode()


def from_ms(ms: int) -> datetime:
    """A step's time (milliseconds, as the log keeps it) as a datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)
