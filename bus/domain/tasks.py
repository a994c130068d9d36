"""What a task's state is, in one place: the gateway, ``bus status`` and the worker agree.

The correlate agent decides every task's state and publishes each change as a lifecycle
event on the task topic (``task.created``, ``task.accepted``, ``task.completed``,
``task.rejected``, ``task.overdue``, ``task.escalated``, ``task.cancelled``); a task an
opinion answers, or one its case closes, gets a ``task.completed`` from the bus too. So
folding those events gives the state the agent holds. ``TaskView.fold`` is that fold (the
gateway runs it over a department's inbox, ``bus status`` over the task topic) and
``shown_state`` the one vocabulary every view counts in: an open or accepted task past its
deadline shows as ``overdue``, or ``escalated`` once its supervisor was told.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bus.schemas.envelope import Envelope

TASK_STATES = ("open", "accepted", "overdue", "escalated", "completed", "rejected", "cancelled")
CLOSED = ("completed", "rejected", "cancelled")
ANSWERS = ("accepted", "completed", "rejected")
BUS = "ks.bus"

TaskKey = tuple[str, str, str]
"""(matter, assignee department, shown state): what task counts are keyed by."""


def shown_state(state: str, *, overdue: bool, escalated: bool) -> str:
    """The state every view reports: late open tasks show as overdue or escalated."""
    if state not in CLOSED and (escalated or overdue):
        return "escalated" if escalated else "overdue"
    return state


@dataclass(slots=True)
class TaskView:
    """A task as its lifecycle events tell it."""

    task_id: str
    matter: str
    assignee: str
    title: str
    subject: str
    correlation_id: str
    created_event_id: str
    due_at: str
    evidence: list[str]
    supervisor: str | None
    state: str = "open"
    overdue: bool = False
    escalated: bool = False
    outcome: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        """Completed, rejected or cancelled."""
        return self.state in CLOSED

    @property
    def shown_state(self) -> str:
        """The state filters and counts use (see ``shown_state``)."""
        return shown_state(self.state, overdue=self.overdue, escalated=self.escalated)

    def body(self) -> dict[str, Any]:
        """The task as the gateway's API returns it."""
        return {
            "task_id": self.task_id, "matter": self.matter, "title": self.title,
            "subject": self.subject, "correlation_id": self.correlation_id,
            "state": self.shown_state, "due_at": self.due_at, "overdue": self.overdue,
            "escalated": self.escalated, "outcome": self.outcome, "evidence": self.evidence,
            "supervisor": self.supervisor, "history": self.history,
        }  # fmt: skip

    @staticmethod
    def fold(tasks: dict[str, TaskView], event: Envelope) -> TaskView | None:
        """Apply one lifecycle event to ``tasks`` (by task id); the task it touched.

        Events of a task whose ``task.created`` was not seen are ignored (an escalation in
        the supervisor's inbox is about someone else's task), and so are answers the
        correlate agent refuses: from another department than the assignee, or to a closed
        task. A second copy of an event must be dropped by the caller (by event id).
        """
        p = event.payload
        if event.event_type == "task.created":
            tasks[p.task_id] = TaskView(
                p.task_id, p.matter, p.assignee, p.title, event.subject, event.correlation_id,
                str(event.event_id), p.due_at.isoformat(), list(p.evidence), p.supervisor,
            )  # fmt: skip
        task = tasks.get(getattr(p, "task_id", ""))
        if task is None:
            return None
        kind = event.event_type.removeprefix("task.")
        if kind in ANSWERS and (event.source not in (task.assignee, BUS) or task.closed):
            return None  # the correlate agent dead-letters it (not_assignee, closed)
        if kind == "accepted":
            task.state = "accepted"
        elif kind == "cancelled" and event.source != BUS:
            return None  # only the bus ends a case early
        elif kind in CLOSED:
            task.state = kind
            task.outcome = getattr(p, "outcome", None) or getattr(p, "reason", None)
        elif kind == "overdue":
            task.overdue = True
        elif kind == "escalated":
            task.escalated = True
        task.history.append(
            {"event": event.event_type, "at": event.occurred_at.isoformat(),
             "event_id": str(event.event_id)}
        )  # fmt: skip
        return task


def count_tasks(tasks: Iterable[TaskView]) -> Counter[TaskKey]:
    """Tasks by (matter, assignee, shown state)."""
    return Counter((t.matter, t.assignee, t.shown_state) for t in tasks)


def by_state(counts: Counter[TaskKey]) -> Counter[str]:
    """Totals by shown state, every state present (zero included)."""
    totals: Counter[str] = Counter(dict.fromkeys(TASK_STATES, 0))
    for (_, _, state), n in counts.items():
        totals[state] += n
    return totals


__all__ = ["CLOSED", "TASK_STATES", "TaskKey", "TaskView", "by_state", "count_tasks", "shown_state"]
