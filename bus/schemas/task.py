"""Cross-agency tasks: what the bus asks a department to do, and what the department answers.

The bus publishes ``task.created`` / ``task.overdue`` / ``task.escalated``; the assignee
department publishes ``task.accepted`` / ``task.completed`` / ``task.rejected``. The subject
is the enterprise the task is about, so a task lives on the same partition as its record.
"""

from __future__ import annotations

from pydantic import Field

from bus.schemas.types import DepartmentCode, Line, Lines, Payload, Text, UtcDatetime

TaskId = Field(min_length=8, max_length=64, description="Stable id: same case, same task id")


class TaskCreated(Payload):
    """A department is asked to act on a case, by a deadline counted in working days."""

    task_id: Line = TaskId
    matter: Line = Field(min_length=1, max_length=64, description="The matter that created it")
    title: Text
    assignee: DepartmentCode
    due_at: UtcDatetime
    working_days: int = Field(ge=0, le=365)
    supervisor: DepartmentCode | None = Field(
        default=None, description="Who is told when the task is late"
    )
    evidence: list[Line] = Field(default_factory=list, description="e.g. penalty case numbers")


class TaskAccepted(Payload):
    """The assignee took the task on."""

    task_id: Line = TaskId
    note: Lines | None = Field(default=None, max_length=500)


class TaskCompleted(Payload):
    """The assignee finished the task with an outcome (e.g. ``confirmed`` or ``cleared``)."""

    task_id: Line = TaskId
    outcome: Line = Field(min_length=1, max_length=64)
    note: Lines | None = Field(default=None, max_length=2000)


class TaskRejected(Payload):
    """The assignee declined the task (not theirs, already handled, ...)."""

    task_id: Line = TaskId
    reason: Text


class TaskOverdue(Payload):
    """The deadline passed without a completion; published once per task."""

    task_id: Line = TaskId
    assignee: DepartmentCode
    due_at: UtcDatetime


class TaskEscalated(Payload):
    """The late task was brought to the supervising office; published once per task."""

    task_id: Line = TaskId
    escalated_to: DepartmentCode
    reason: Text


class TaskCancelled(Payload):
    """The case ended before the task was answered (the enterprise deregistered, the request
    withdrawn): nothing more is expected from the assignee. Published by the bus only."""

    task_id: Line = TaskId
    reason: Text
