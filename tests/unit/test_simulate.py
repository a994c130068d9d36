"""Matters played in one process: the shipped scenarios, expectations that fail, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from bus.agents.simulate import Simulation, load_scenario
from bus.errors import ConfigurationError

SHIPPED = Path(str(resources.files("bus.domain.matters"))) / "scenarios"
SCENARIOS = sorted(SHIPPED.glob("*.yaml"))


def play(path: Path, **changes: object):  # type: ignore[no-untyped-def]
    scenario = load_scenario(path)
    if changes:
        scenario = scenario.model_copy(update=changes)
    sim = Simulation()
    try:
        return sim.run(scenario)
    finally:
        sim.close()


def test_every_shipped_matter_has_a_scenario() -> None:
    from bus.domain.matters import load_matters

    played = {load_scenario(p).matter for p in SCENARIOS}
    assert played == {m.name for m in load_matters().values()}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_a_shipped_scenario_comes_out_as_it_expects(path: Path) -> None:
    outcome = play(path)
    assert outcome.failures == []
    assert outcome.scenario.expect, "a shipped scenario says what it expects"


def test_a_scenario_plays_the_same_every_time() -> None:
    path = SHIPPED / "compliance-certificate-reviewed.yaml"
    first, again = play(path), play(path)
    assert [m.line() for m in first.timeline] == [m.line() for m in again.timeline]


def test_the_reviewed_certificate_timeline_in_full() -> None:
    outcome = play(SHIPPED / "compliance-certificate-reviewed.yaml")
    kinds = [(m.kind, m.event_type) for m in outcome.timeline]
    assert kinds == [
        ("published", "certificate.requested"),  # parked: the enterprise is not registered
        ("published", "penalty.imposed"),
        ("published", "enterprise.registered"),
        ("decided", "task.created"),  # the parked request is decided on the registration
        ("published", "task.completed"),
        ("refused", "task.completed"),  # zhoushi may not answer huaqiao's task
        ("published", "task.accepted"),
        ("published", "task.completed"),
        ("decided", "certificate.issued"),
    ]
    refusal = outcome.timeline[5]
    assert refusal.source == "ks.enforcement.zhoushi"
    assert refusal.reason.startswith("task.not_assignee")
    issued = outcome.timeline[-1]
    assert issued.payload["result"] == "clean"
    assert issued.notify == ("ks.finance",)
    assert issued.at.isoformat() == "2026-03-04T01:06:00+00:00"  # two working days later


def test_an_expectation_that_does_not_hold_fails_and_says_which() -> None:
    path = SHIPPED / "compliance-certificate-clean.yaml"
    outcome = play(path, expect=[{"certificate.issued": {"result": "record_found"}}],
                   expect_not=["certificate.issued"])  # fmt: skip
    assert not outcome.passed
    assert outcome.failures[0].startswith("expected certificate.issued {'result': 'record_found'}")
    assert "did not expect certificate.issued" in outcome.failures[1]


def test_expectations_are_met_in_their_order() -> None:
    path = SHIPPED / "opening-a-business-late.yaml"
    assert play(path).passed
    swapped = [{"task.escalated": {"escalated_to": "ks.amr"}}, {"task.overdue": None}]
    assert not play(path, expect=swapped).passed


def test_time_passing_is_what_makes_a_task_late() -> None:
    path = SHIPPED / "opening-a-business-late.yaml"
    scenario = load_scenario(path)
    without_wait = [s for s in scenario.steps if not hasattr(s, "wait")]
    outcome = play(path, steps=without_wait)
    assert {m.event_type for m in outcome.timeline}.isdisjoint({"task.overdue", "task.escalated"})
    assert outcome.open_tasks == 3


@pytest.mark.parametrize(("change", "field", "line"), [
    (("    outcome: cleared\n    note", "    outcome: cleared\n    colour: red\n    note"),
     "steps.6.colour", 48),
    (("start: 2026-03-02T09:00:00+08:00", "start: 2026-03-02T09:00:00"), "start", 5),
    (("  - wait: 2", "  - wait: -2"), "steps.5.wait", 44),
])  # fmt: skip
def test_a_wrong_scenario_names_the_file_the_line_and_the_field(
    tmp_path: Path, change: tuple[str, str], field: str, line: int
) -> None:
    text = (SHIPPED / "compliance-certificate-reviewed.yaml").read_text(encoding="utf-8")
    path = tmp_path / "wrong.yaml"
    path.write_text(text.replace(*change), encoding="utf-8")
    with pytest.raises(ConfigurationError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith("scenario wrong.yaml, line ")
    assert field in message
    if line:
        assert f", line {line}:" in message


def test_an_unknown_matter_is_named_with_the_known_ones(tmp_path: Path) -> None:
    doc = yaml.safe_load((SHIPPED / "compliance-certificate-clean.yaml").read_text())
    doc["matter"] = "compliance-certficate"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(ConfigurationError, match="known: compliance-certificate"):
        play(tmp_path / "typo.yaml")


def bus(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bus.cli", "matters", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})  # fmt: skip


def test_the_cli_checks_a_policy_offices_own_folder(tmp_path: Path) -> None:
    folder = tmp_path / "matters"
    (folder / "scenarios").mkdir(parents=True)
    shipped = SHIPPED.parent
    (folder / "compliance-certificate.yaml").write_text(
        (shipped / "compliance-certificate.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    scenario = (SHIPPED / "compliance-certificate-clean.yaml").read_text(encoding="utf-8")
    (folder / "scenarios" / "clean.yaml").write_text(scenario, encoding="utf-8")
    ok = bus("check", "--matters", str(folder), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"1 matters valid in {folder}: compliance-certificate v1" in ok.stdout
    assert "clean.yaml: as expected" in ok.stdout

    (folder / "scenarios" / "clean.yaml").write_text(
        scenario.replace("{result: clean}", "{result: record_found}"), encoding="utf-8"
    )
    failed = bus("check", cwd=tmp_path, BUS_MATTERS_DIR=str(folder))  # the worker's setting
    assert failed.returncode == 1
    assert "clean.yaml: NOT as expected" in failed.stdout

    matter = (shipped / "compliance-certificate.yaml").read_text(encoding="utf-8")
    (folder / "compliance-certificate.yaml").write_text(
        matter.replace("working_days: 5", "working_days: 0"), encoding="utf-8"
    )
    invalid = bus("check", "--matters", str(folder), cwd=tmp_path)
    assert invalid.returncode == 2
    line = 1 + matter.splitlines().index("    working_days: 5")
    assert f"compliance-certificate.yaml, line {line}: tasks.0.working_days" in invalid.stderr


def test_the_cli_prints_the_timeline(tmp_path: Path) -> None:
    done = bus("simulate", "opening-a-business", str(SHIPPED / "opening-a-business-late.yaml"),
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("ks.bus -> ks.tax, ks.amr" in ln and "task.escalated" in ln for ln in lines)
    assert "open tasks at the end: 3" in lines
    as_json = bus("simulate", "opening-a-business", str(SHIPPED / "opening-a-business-late.yaml"),
                  "--json", cwd=tmp_path)  # fmt: skip
    moments = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(moments) == len(lines) - 2  # the same timeline, without the verdict lines
    assert moments[-1]["event_type"] == "task.escalated"
    assert moments[-1]["notify"] == ["ks.tax", "ks.amr"]
    wrong = bus("simulate", "joint-discipline", str(SHIPPED / "opening-a-business-late.yaml"),
                cwd=tmp_path)  # fmt: skip
    assert wrong.returncode == 2
    assert "is for 'opening-a-business', not 'joint-discipline'" in wrong.stderr


def test_two_matters_from_one_event_each_open_their_case(tmp_path: Path) -> None:
    from tests.integration.test_matters import CREDIT_FILE

    folder = tmp_path / "matters"
    folder.mkdir()
    text = (SHIPPED.parent / "opening-a-business.yaml").read_text(encoding="utf-8")
    (folder / "opening-a-business.yaml").write_text(text, encoding="utf-8")
    (folder / "credit-file.yaml").write_text(CREDIT_FILE, encoding="utf-8")
    doc = yaml.safe_load((SHIPPED / "opening-a-business-late.yaml").read_text(encoding="utf-8"))
    answer = {"complete": "credit-file", "by": "ks.credit", "outcome": "opened"}
    doc.update(with_matters=["credit-file"], expect=[], steps=[doc["steps"][0], answer])
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    sim = Simulation(folder)
    try:
        outcome = sim.run(load_scenario(tmp_path / "both.yaml"))
    finally:
        sim.close()
    created = [m.payload for m in outcome.timeline if m.event_type == "task.created"]
    assert sorted(p["matter"] for p in created) == ["credit-file"] + ["opening-a-business"] * 4
    assert len({p["task_id"] for p in created}) == 5
    closed = [m for m in outcome.timeline if m.event_type == "task.completed"]
    assert [m.source for m in closed] == ["ks.credit"]
    assert outcome.open_tasks == 4
