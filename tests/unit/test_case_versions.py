"""A running case keeps the definition it was opened under: a changed or removed matter file
changes only the cases opened after it."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path

from bus.agents.simulate import Simulation, WaitStep, load_scenario

SHIPPED = Path(str(resources.files("bus.domain.matters"))) / "scenarios"


def opened() -> tuple[Simulation, object]:
    """A simulation with opening-a-business cases open and nothing late yet."""
    scenario = load_scenario(SHIPPED / "opening-a-business-late.yaml")
    sim = Simulation()
    first = scenario.model_copy(update={"steps": scenario.steps[:1], "expect": []})
    assert sim.run(first).open_tasks == 4
    return sim, scenario


def test_a_changed_late_policy_applies_to_new_cases_only() -> None:
    sim, scenario = opened()
    try:
        v2 = sim.matters["opening-a-business"].model_copy(
            update={"version": 2, "late": "overdue_only"}
        )
        sim.matters = {"opening-a-business": v2}  # the office's new version, workers restarted
        later = scenario.model_copy(update={
            "start": scenario.start + timedelta(days=1), "steps": [WaitStep(wait=2)],
            "expect": [{"task.overdue": None}, {"task.escalated": {"escalated_to": "ks.amr"}}],
        })  # fmt: skip
        outcome = sim.run(later)
    finally:
        sim.close()
    assert outcome.failures == [], "version 1 escalates; the case was opened under it"
    (review,) = next(iter(sim.store.data.values())).reviews.values()
    assert (review["version"], review["late"]) == (1, "escalate_to_supervisor")


def test_a_removed_matter_does_not_stop_its_running_cases() -> None:
    sim, scenario = opened()
    try:
        sim.engine.matters, sim.engine._matters_by_name = {}, {}
        now = scenario.start + timedelta(days=10)  # past every deadline
        sim._tick(now)
    finally:
        sim.close()
    escalated = [m for m in sim.timeline if m.event_type == "task.escalated"]
    assert len(escalated) == 4
