"""Matter files are validated with clear errors; the enterprise record answers the compliance
question correctly whatever order its events came in."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest

from bus.dev.samples import enterprise, penalty, registered
from bus.domain.matters import by_trigger, load_matters
from bus.domain.record import EnterpriseRecord
from bus.errors import ConfigurationError
from bus.schemas.events import model_for


def test_the_shipped_matters_load() -> None:
    matters = load_matters()
    assert {m.name for m in matters.values()} == {
        "compliance-certificate", "opening-a-business", "joint-discipline", "parallel-approval",
        "legal-representative-change", "enterprise-deregistration", "credit-report",
    }  # fmt: skip
    assert matters["compliance-certificate"].requires_registration


GOOD = """
name: test-matter
title: Test
trigger: enterprise.registered
lead: ks.amr
tasks:
  - {name: one, assignee: ks.tax, title: "t {enterprise}", working_days: 2}
"""


@pytest.mark.parametrize(("change", "message"), [
    (("trigger: enterprise.registered", "trigger: enterprise.teleported"), "trigger"),
    (("assignee: ks.tax", "assignee: somebody"), "tasks.0.assignee"),
    (("working_days: 2", "working_days: 0"), "tasks.0.working_days"),
    (("lead: ks.amr", "lead: ks.amr\ncolour: red"), "colour"),
    (("lead: ks.amr", "lead: ks.amr\ndecision: {rule: always}"), "decision rules are written"),
])  # fmt: skip
def test_a_wrong_matter_file_names_the_file_and_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    (tmp_path / "test-matter.yaml").write_text(GOOD.replace(*change))
    with pytest.raises(ConfigurationError) as info:
        load_matters(tmp_path)
    assert "test-matter.yaml, line " in str(info.value)
    assert message in str(info.value)
    line = int(str(info.value).split(", line ")[1].split(":")[0])
    wrong = change[1].splitlines()[-1].split(":")[0].strip()
    assert wrong in GOOD.replace(*change).splitlines()[line - 1], "not the field's line"


def test_two_matters_may_share_a_trigger_but_not_a_name(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("test-matter", "other-matter"))
    matters = load_matters(tmp_path)
    (trigger,) = {m.trigger for m in matters.values()}
    assert [m.name for m in by_trigger(matters)[trigger]] == ["other-matter", "test-matter"]
    (tmp_path / "c.yaml").write_text(GOOD)
    with pytest.raises(ConfigurationError, match="another file is called test-matter"):
        load_matters(tmp_path)


def _change(fine, event_type: str, source: str, **payload):
    body = {"case_number": fine.payload.case_number, **payload}
    return model_for(event_type)(
        event_type=event_type, source=source, subject=fine.subject, payload=body
    )


@pytest.mark.parametrize("order", ["in order", "revocation first"])
def test_revocation_counts_whatever_the_order(order: str) -> None:
    rng = random.Random(3)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    revoked = _change(fine, "penalty.revoked", fine.source, reason="复议撤销",
                      revoked_on=date(2026, 5, 1))  # fmt: skip
    events = [fine, revoked] if order == "in order" else [revoked, fine]
    record = EnterpriseRecord(uscc=firm.uscc)
    for e in events:
        record.apply(e)
    assert record.penalties_between(date(2026, 1, 1), date(2026, 12, 31)) == []
    [entry] = record.penalties_between(date(2026, 1, 1), date(2026, 12, 31), states=("revoked",))
    assert entry.agency == fine.payload.agency  # the late original still filled in the facts


def test_repair_takes_a_penalty_off_the_record_but_keeps_it() -> None:
    rng = random.Random(4)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2025, 3, 1))
    record = EnterpriseRecord(uscc=firm.uscc)
    record.apply(fine)
    assert len(record.penalties_between(date(2025, 1, 1), date(2025, 12, 31))) == 1
    record.apply(_change(fine, "penalty.repaired", "ks.credit", repaired_on=date(2026, 3, 2),
                         decision_number="昆信修复〔2026〕3号"))  # fmt: skip
    assert record.penalties_between(date(2025, 1, 1), date(2025, 12, 31)) == []
    assert record.penalties[fine.payload.case_number].state == "repaired"


def test_period_bounds_are_inclusive_and_a_penalty_before_registration_is_kept() -> None:
    rng = random.Random(5)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 1, 1))
    record = EnterpriseRecord(uscc=firm.uscc)
    record.apply(fine)  # before the registration
    record.apply(registered(firm, rng))
    assert record.status == "registered"
    assert record.name == firm.name
    assert len(record.penalties_between(date(2026, 1, 1), date(2026, 1, 1))) == 1
    assert record.penalties_between(date(2026, 1, 2), date(2026, 12, 31)) == []
