"""The matter language: conditions shared with subscriptions, paths into the trigger and the
record, lists, assignees from data, and files whose mistakes name their line."""

from __future__ import annotations

import random
from datetime import date
from importlib import resources
from pathlib import Path

import pytest
import yaml

from bus.agents.simulate import Simulation, load_scenario
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.conditions import problem, satisfied
from bus.domain.matters import Matter, load_matters
from bus.domain.record import EnterpriseRecord
from bus.errors import ConfigurationError
from bus.schemas.events import model_for

SHIPPED = Path(str(resources.files("bus.domain.matters")))


@pytest.mark.parametrize(("actual", "cond", "expected"), [
    (date(2026, 4, 1), {"gte": "2026-01-01", "lte": "2026-12-31"}, True),
    (date(2027, 4, 1), {"gte": "2026-01-01", "lte": "2026-12-31"}, False),
    (["approve", "approve"], {"all": "approve"}, True),
    (["approve", "refuse"], {"all": "approve"}, False),
    (["approve", "refuse"], {"any": {"in": ["refuse", "rejected"]}}, True),
    ([], {"any": "approve"}, False),
    ([], {"count": 0}, True),
    ([{"state": "active"}, {"state": "revoked"}], {"count": {"gte": 2}}, True),
    ([{"state": "active"}, {"state": "revoked"}], {"none": {"state": "repaired"}}, True),
    ([{"state": "active"}, {"state": "revoked"}], {"all": {"state": "active"}}, False),
    (["ks.tax", "ks.hrss"], {"contains": "ks.tax"}, True),
    ("100000.00", {"gte": 100000}, True),
])  # fmt: skip
def test_conditions_on_values_and_lists(actual: object, cond: object, expected: bool) -> None:
    assert satisfied(actual, cond) is expected


def test_a_wrong_condition_says_what_is_wrong() -> None:
    assert problem({"gte": 1, "state": "x"}) is not None
    assert "takes a list" in (problem({"in": 3}) or "")
    assert "for lists" in (problem({"count": 1}, lists=False) or "")
    assert problem({"any": {"state": {"in": ["active"]}}}) is None


def _fined() -> tuple[EnterpriseRecord, object]:
    rng = random.Random(7)
    firm = enterprise(rng)
    record = EnterpriseRecord(uscc=firm.uscc)
    record.apply(registered(firm, rng))
    older = penalty(firm, rng, n=1, decided_on=date(2026, 3, 1))
    newer = penalty(firm, rng, n=2, decided_on=date(2026, 5, 1))
    for fine in (newer, older):
        record.apply(fine)
    request = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": date(2026, 4, 1), "period_end": date(2026, 12, 31),
                 "purpose": "ipo", "requested_by": "ks.finance", "applicant": "张伟"},
    )  # fmt: skip
    return record, request


def test_paths_read_the_trigger_the_enterprise_and_the_record() -> None:
    record, request = _fined()
    matter = load_matters()["compliance-certificate"]
    facts = matter.facts(request, record)  # type: ignore[arg-type]
    assert facts.get("trigger.period_end") == date(2026, 12, 31)
    assert facts.get("trigger.source") == "ks.finance"
    assert facts.get("enterprise") == record.name
    assert facts.get("enterprise.uscc") == record.uscc
    decided = [p["decided_on"] for p in facts.get("record.penalties")]
    assert decided == sorted(decided)  # oldest first, whatever order they came in
    (in_period,) = facts.items("on_record")  # the period starts in April
    assert in_period["decided_on"] == date(2026, 5, 1)
    assert facts.render("{enterprise.town|lower}") == str(record.profile["town"]).lower()
    assert facts.resolve("{trigger.period_start}") == date(2026, 4, 1)  # typed, not text


def test_assignees_come_from_the_list_and_fall_back_to_the_lead() -> None:
    record, request = _fined()
    matter = load_matters()["compliance-certificate"]
    facts = matter.facts(request, record)  # type: ignore[arg-type]
    review = matter.task("review")
    (fine,) = facts.items("on_record")
    assert matter.assignees(review, facts, lambda code: True) == {
        fine["agency"]: [fine["case_number"]]
    }
    nobody = matter.assignees(review, facts, lambda code: False)  # a bureau nobody knows
    assert nobody == {"ks.finance": [fine["case_number"]]}


GOOD = """
name: big-fines
title: Big fines reach the credit office
trigger: penalty.imposed
lead: ks.credit
when:
  trigger.amount: {gte: 100000}
tasks:
  - name: note
    assignee: ks.credit
    title: "Note fine {trigger.case_number} of {enterprise}"
    working_days: 2
"""


@pytest.mark.parametrize(("change", "message"), [
    (("trigger.amount:", "trigger_amount:"), "when: trigger_amount: 'trigger_amount' starts with"),
    (("{gte: 100000}", "{gte: 1, colour: red}"), "when: trigger.amount: mixes fields and"),
    (("of {enterprise}", "of {item.name}"), "tasks.0.title: {item.name}: item is there only in"),
    (("of {enterprise}", "of {enterprise|shout}"), "tasks.0.title: {enterprise|shout}: a filter"),
    (("ks.credit\n    title", "ks.credit\n    for_each: fines\n    title"), "tasks.0.for_each"),
])  # fmt: skip
def test_a_wrong_matter_names_its_file_line_and_mistake(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert GOOD.count(change[0]) == 1
    (tmp_path / "big-fines.yaml").write_text(GOOD.replace(*change))
    with pytest.raises(ConfigurationError) as info:
        load_matters(tmp_path)
    assert message in str(info.value)
    line = int(str(info.value).split(", line ")[1].split(":")[0])
    wrong = {"when": "when:", "title": "title:", "for_each": "for_each:"}
    shown = GOOD.replace(*change).splitlines()[line - 1]
    assert any(w in shown for k, w in wrong.items() if k in message), (line, shown)


def test_a_condition_on_the_trigger_decides_whether_a_case_opens(tmp_path: Path) -> None:
    (tmp_path / "big-fines.yaml").write_text(GOOD)
    assert isinstance(load_matters(tmp_path)["big-fines"], Matter)
    doc = yaml.safe_load(
        (SHIPPED / "scenarios" / "joint-discipline-licensed.yaml").read_text(encoding="utf-8")
    )
    registration, small = doc["steps"][0], doc["steps"][1]
    big = {**small, "payload": {**small["payload"], "case_number": "昆花综执罚决字〔2026〕第0099号",
                                "kind": "fine", "amount": "200000.00"}}  # fmt: skip
    doc.update(matter="big-fines", steps=[registration, small, big], expect_not=[],
               expect=[{"task.created": {"evidence": "[]", "assignee": "ks.credit"}}])  # fmt: skip
    scenario = tmp_path / "scenarios" / "big.yaml"
    scenario.parent.mkdir()
    scenario.write_text(yaml.safe_dump(doc, allow_unicode=True))
    sim = Simulation(tmp_path)
    try:
        outcome = sim.run(load_scenario(scenario))
    finally:
        sim.close()
    assert outcome.passed, outcome.failures
    (created,) = [m.payload for m in outcome.timeline if m.event_type == "task.created"]
    assert created["title"].startswith("Note fine 昆花综执罚决字〔2026〕第0099号 of ")


def test_the_shipped_matters_use_no_python_resolver() -> None:
    for path in SHIPPED.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        for old in ("penalty_agency", "licence_department", "requested_departments",
                    "town_of_enterprise", "holds_licences"):  # fmt: skip
            assert old not in text, (path.name, old)


def _legal_change(tmp_path: Path, steps: list[dict]) -> list[tuple[str, str]]:
    doc = yaml.safe_load(
        (SHIPPED / "scenarios" / "legal-representative-change.yaml").read_text(encoding="utf-8")
    )
    doc.update(steps=doc["steps"][:3] + steps, expect=[], expect_not=[])
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    sim = Simulation()
    try:
        outcome = sim.run(load_scenario(path))
    finally:
        sim.close()
    return [(m.event_type if m.kind != "refused" else f"refused {m.reason.split(':')[0]}",
             m.payload.get("assignee") or (m.notify or (m.source,))[0])
            for m in outcome.timeline if m.event_type.startswith("task.")]  # fmt: skip


def test_a_step_after_another_starts_when_that_one_is_answered(tmp_path: Path) -> None:
    tax = {"complete": "tax-update", "by": "ks.tax", "outcome": "recorded"}
    timeline = _legal_change(tmp_path, [tax])
    created = [who for kind, who in timeline if kind == "task.created"]
    assert created == ["ks.tax", "ks.hrss", "ks.housingfund", "ks.banking"]
    assert timeline.index(("task.completed", "ks.tax")) < timeline.index(
        ("task.created", "ks.banking")
    )
    assert _legal_change(tmp_path, [])[-1] == ("task.created", "ks.housingfund")  # not yet


def test_a_step_whose_condition_fails_is_skipped_and_the_case_closes(tmp_path: Path) -> None:
    steps = [
        {"reject": "tax-update", "by": "ks.tax", "reason": "not our taxpayer"},
        {"complete": "social-insurance-update", "by": "ks.hrss", "outcome": "recorded"},
        {"complete": "housing-fund-update", "by": "ks.housingfund", "outcome": "recorded"},
    ]
    timeline = _legal_change(tmp_path, steps)
    assert ("task.created", "ks.banking") not in timeline  # tax could not record it


@pytest.mark.parametrize(("change", "message"), [
    (("working_days: 2\n", "working_days: 2\n    after: [nobody]\n"), "'nobody' is no other task"),
    (("working_days: 2\n", "working_days: 2\n    after: [note]\n"), "'note' is no other task"),
])  # fmt: skip
def test_a_wrong_order_of_tasks_is_named(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    (tmp_path / "big-fines.yaml").write_text(GOOD.replace(*change))
    with pytest.raises(ConfigurationError, match=message):
        load_matters(tmp_path)


def test_tasks_that_wait_for_each_other_are_refused(tmp_path: Path) -> None:
    two = (
        GOOD
        + """  - name: other
    assignee: ks.tax
    title: "Other {enterprise}"
    working_days: 2
    after: [note]
"""
    )
    (tmp_path / "big-fines.yaml").write_text(
        two.replace("working_days: 2\n", "working_days: 2\n    after: [other]\n", 1)
    )
    with pytest.raises(ConfigurationError, match="waits for itself"):
        load_matters(tmp_path)


def test_a_deregistration_cancels_the_open_tasks_of_a_running_case(tmp_path: Path) -> None:
    gone = {"event": "enterprise.deregistered", "source": "ks.amr",
            "payload": {"reason": "股东决议解散", "deregistered_on": "2026-03-03"}}  # fmt: skip
    tax = {"complete": "tax-update", "by": "ks.tax", "outcome": "recorded"}
    late = {"complete": "social-insurance-update", "by": "ks.hrss", "outcome": "recorded"}
    timeline = _legal_change(tmp_path, [tax, gone, late])
    cancelled = sorted(who for kind, who in timeline if kind == "task.cancelled")
    assert cancelled == ["ks.banking", "ks.housingfund", "ks.hrss"]  # tax had answered
    assert timeline[-1][0].startswith("refused task."), timeline  # the case is gone


def _deregistration(tmp_path: Path, steps: list[dict]) -> list[tuple[str, str]]:
    doc = yaml.safe_load(
        (SHIPPED / "scenarios" / "enterprise-deregistration.yaml").read_text(encoding="utf-8")
    )
    first = [s for s in doc["steps"][:3] if s.get("event") != "enterprise.changed"]
    doc.update(steps=first + steps, expect=[], expect_not=[], with_matters=[])
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    sim = Simulation()
    try:
        outcome = sim.run(load_scenario(path))
    finally:
        sim.close()
    return [(m.event_type, m.payload.get("result") or m.payload.get("assignee") or "")
            for m in outcome.timeline if m.source == "ks.bus"]  # fmt: skip


def test_an_enterprise_not_cleared_by_tax_is_refused_without_a_decision_task(
    tmp_path: Path,
) -> None:
    timeline = _deregistration(tmp_path, [
        {"complete": "tax-clearance", "by": "ks.tax", "outcome": "outstanding"},
        {"complete": "social-insurance-clearance", "by": "ks.hrss", "outcome": "cleared"},
    ])  # fmt: skip
    assert timeline[-1] == ("application.decided", "refused")
    assert ("task.created", "ks.amr") not in timeline


def test_a_withdrawn_application_ends_its_case(tmp_path: Path) -> None:
    withdrawn = {"event": "application.withdrawn", "source": "ks.amr", "payload": {
        "matter": "enterprise-deregistration", "application_number": "KS-ZX-2026-000042",
        "reason": "申请人撤回"}}  # fmt: skip
    other = {**withdrawn, "payload": {**withdrawn["payload"], "application_number": "KS-ZX-1"}}
    tax = {"complete": "tax-clearance", "by": "ks.tax", "outcome": "cleared"}
    timeline = _deregistration(tmp_path, [tax, other, withdrawn])
    assert [kind for kind, _ in timeline].count("task.cancelled") == 1  # hrss's; tax answered
    assert "application.decided" not in [kind for kind, _ in timeline]


def test_an_opinion_answers_its_task_as_the_matter_says_and_only_from_whom_was_asked(
    tmp_path: Path,
) -> None:
    doc = yaml.safe_load(
        (SHIPPED / "scenarios" / "parallel-approval-refused.yaml").read_text(encoding="utf-8")
    )
    number = {"application_number": "KS-SP-2026-000123", "opinion": "approve"}
    stranger = {"event": "approval.opinion", "source": "ks.housingfund", "payload": number}
    doc["steps"].insert(2, stranger)
    doc["expect"].insert(1, {"refused": "task.not_assignee"})
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    sim = Simulation()
    try:
        outcome = sim.run(load_scenario(path))
    finally:
        sim.close()
    assert outcome.passed, outcome.failures
    completed = [m.payload for m in outcome.timeline
                 if m.event_type == "task.completed" and m.source == "ks.bus"]  # fmt: skip
    assert sorted(p["outcome"] for p in completed) == ["approve", "refuse"]
    assert [p.get("note") for p in completed if p["outcome"] == "refuse"] == ["环评未通过"]


def test_an_answering_event_must_be_one_a_department_publishes(tmp_path: Path) -> None:
    (tmp_path / "big-fines.yaml").write_text(GOOD.replace(
        "working_days: 2\n",
        "working_days: 2\n    answered_by: {event: task.completed, answer: done}\n",
    ))  # fmt: skip
    with pytest.raises(ConfigurationError, match="not task"):
        load_matters(tmp_path)


CHAIN = """
name: chained
title: A task escalated up a chain
trigger: enterprise.registered
lead: ks.amr
tasks:
  - name: account
    assignee: ks.tax
    title: "Open the account of {enterprise}"
    working_days: 2
    supervisor: lead
    escalation: [ks.credit, ks.finance]
"""


def test_a_late_task_goes_up_its_escalation_chain_once_each(tmp_path: Path) -> None:
    (tmp_path / "chained.yaml").write_text(CHAIN)
    doc = yaml.safe_load(
        (SHIPPED / "scenarios" / "opening-a-business-late.yaml").read_text(encoding="utf-8")
    )
    doc.update(matter="chained", steps=[doc["steps"][0], {"wait": 3}, {"wait": 2},
                                        {"wait": 2}, {"wait": 10}],
               expect=[], expect_not=[])  # fmt: skip
    scenario = tmp_path / "scenarios" / "chain.yaml"
    scenario.parent.mkdir()
    scenario.write_text(yaml.safe_dump(doc, allow_unicode=True))
    sim = Simulation(tmp_path)
    try:
        outcome = sim.run(load_scenario(scenario))
    finally:
        sim.close()
    told = [(m.payload["escalated_to"], m.at) for m in outcome.timeline
            if m.event_type == "task.escalated"]  # fmt: skip
    assert [office for office, _ in told] == ["ks.amr", "ks.credit", "ks.finance"]
    assert told[0][1] < told[1][1] < told[2][1]  # one after another, not all at once
    assert len({m.payload["task_id"] for m in outcome.timeline
                if m.event_type == "task.overdue"}) == 1  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), [
    ("    timeout: {answer: noted}\n    escalation: [ks.finance]\n",
     "a task that times out is not escalated"),
    ("    timeout: {answer: silent}\n    answers: [noted, refused]\n",
     r"timeout: answer 'silent' is none of its answers \(noted, refused\)"),
])  # fmt: skip
def test_a_timeout_counts_as_one_of_the_answers_and_is_never_escalated(
    tmp_path: Path, extra: str, message: str
) -> None:
    (tmp_path / "big-fines.yaml").write_text(GOOD + extra)
    with pytest.raises(ConfigurationError, match=message):
        load_matters(tmp_path)


def test_a_task_that_times_out_ends_counted_as_its_answer_and_the_case_goes_on() -> None:
    scenario = load_scenario(SHIPPED / "scenarios" / "enterprise-deregistration-silence.yaml")
    sim = Simulation()
    try:
        outcome = sim.run(scenario)
    finally:
        sim.close()
    assert outcome.failures == []
    kinds = [(m.event_type, m.payload.get("assignee") or m.payload.get("result"))
             for m in outcome.timeline if m.kind == "decided"]  # fmt: skip
    # The silent department's task: overdue at its deadline, then ended, never escalated;
    # only then is the regulator asked, and its decision decides.
    overdue = kinds.index(("task.overdue", "ks.hrss"))
    assert kinds[overdue + 1][0] == "task.cancelled"
    assert kinds[overdue + 2] == ("task.created", "ks.amr")
    assert kinds[-1] == ("application.decided", "deregistered")
    assert not any(k == "task.escalated" for k, _ in kinds)
    (cancelled,) = [m for m in outcome.timeline if m.event_type == "task.cancelled"]
    assert "counted as cleared" in cancelled.payload["reason"]
