"""Cases: matters, tasks, deadlines and decisions, as a Faust agent over a Faust table.

The flow (``bus.agents.correlate``) folds every event into its enterprise's record and hands
each case step (a matter's trigger, an answer to a task) to ``cases`` with the record as it
stood then and the time the log took the event. The agent decides on that alone, so a
decision depends only on the log before it and replays byte for byte.

Each enterprise's open cases and tasks (``CaseState``) live in a Faust ``Table``: changelog
and recovery are Faust's. Deadlines: a Faust timer puts a tick on every
partition this worker owns; the agent pops what is due from an index ordered by due time.

Guarantee: a partition's decisions, state and input offsets are committed together by
its owner (``writer``): a zombie cannot commit, and a crash re-runs steps on the state
before them, producing the same records under the same ids, which every consumer drops
by ``event_id``. Faust's acks are off for ``cases``: its offset bookkeeping committed past
steps never decided across rebalances. Why not Faust's exactly-once: docs/architecture.md.

``steps`` what the flow hands over and the ids derived from it; ``state`` the table's
values and stores; ``engine`` the matters run on them; ``writer`` the fenced writes;
``agent`` the Faust agent, table and timers.
"""

from bus.agents.cases.agent import install
from bus.agents.cases.engine import CaseEngine
from bus.agents.cases.state import CaseState, CaseStore, MemoryCaseStore, TableStore
from bus.agents.cases.steps import (
    ANSWERS,
    BUS,
    StepKind,
    case_id,
    case_key,
    derived_id,
    encode_step,
    starts_case,
    step_event_id,
    task_id_for,
    tick_step,
)
from bus.agents.cases.writer import FencedWriter, NotOwned

__all__ = [
    "ANSWERS",
    "BUS",
    "CaseEngine",
    "CaseState",
    "CaseStore",
    "FencedWriter",
    "MemoryCaseStore",
    "NotOwned",
    "StepKind",
    "TableStore",
    "case_id",
    "case_key",
    "derived_id",
    "encode_step",
    "install",
    "starts_case",
    "step_event_id",
    "task_id_for",
    "tick_step",
]
