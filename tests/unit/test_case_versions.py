"""A running case keeps the definition it was opened under: a changed or removed matter file
changes only the cases opened after it."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

from bus.agents.simulate import Scenario, Simulation, WaitStep, load_scenario

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


def reviewing() -> tuple[Simulation, Scenario]:
    """A simulation with a compliance certificate's review open."""
    scenario = load_scenario(SHIPPED / "compliance-certificate-reviewed.yaml")
    sim = Simulation()
    first = scenario.model_copy(update={"steps": scenario.steps[:3], "expect": []})
    assert sim.run(first).open_tasks == 1
    return sim, scenario


def answered(sim: Simulation, scenario: Scenario) -> list[str]:
    """The bureau clears its case; the results of the certificates that come of it."""
    later = scenario.model_copy(update={
        "title": f"{scenario.title}, answered", "steps": scenario.steps[-1:], "expect": [],
        "start": scenario.start + timedelta(hours=1),
    })  # fmt: skip
    outcome = sim.run(later)
    return [m.payload["result"] for m in outcome.timeline if m.event_type == "certificate.issued"]


def refusing(sim: Simulation) -> None:
    """The office's next version: every review ends refused (workers restarted on it)."""
    old = sim.matters["compliance-certificate"]
    refuse = tuple(o.model_copy(update={"result": "refused"}) for o in old.outcomes)
    sim.matters = {
        "compliance-certificate": old.model_copy(update={"version": 2, "outcomes": refuse})
    }


def test_changed_outcomes_decide_new_cases_only() -> None:
    sim, scenario = reviewing()
    try:
        refusing(sim)
        results = answered(sim, scenario)
    finally:
        sim.close()
    assert results == ["clean"], "version 1 decides: the case was opened under it"


def test_a_case_kept_before_outcomes_is_decided_as_the_shipped_rule() -> None:
    sim, scenario = reviewing()
    try:
        (state,) = sim.store.data.values()
        (review,) = state.reviews.values()
        del review["closing"], review["steps"]
        review["rule"] = "clean_record"  # what a case opened before outcomes kept
        refusing(sim)
        results = answered(sim, scenario)
    finally:
        sim.close()
    assert results == ["clean"]


def test_a_step_the_engine_fails_on_leaves_its_case_as_it_was_and_is_kept_as_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, scenario = reviewing()
    try:
        (before,) = sim.store.data.values()
        before = before.model_copy(deep=True)

        def fault(*args: object, **kwargs: object) -> list[object]:
            raise RuntimeError("a fault after the answer was taken")

        # The answer is taken (the task closed in the state in hand), then routing fails.
        monkeypatch.setattr(sim.engine, "_route", fault)
        assert answered(sim, scenario) == []
        refused = [m for m in sim.timeline if m.kind == "refused"]
        assert refused
        assert refused[-1].reason.startswith("cases.crash: RuntimeError: a fault")
        (after,) = sim.store.data.values()
        assert after == before  # the task is still open, the case undecided
        monkeypatch.undo()
        # The partition goes on: the next request opens its own review.
        again = scenario.model_copy(
            update={"title": "a second request", "steps": scenario.steps[:1], "expect": []}
        )
        assert sim.run(again).open_tasks == 2
    finally:
        sim.close()
