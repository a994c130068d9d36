"""The other three matters through a real broker and worker: tell-us-once fan-out, joint
discipline of licence holders, and parallel approval decided when every opinion is in."""

from __future__ import annotations

import asyncio
import random
from datetime import date
from importlib import resources
from pathlib import Path

import pytest

from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from tests.e2e.test_cli import bus
from tests.integration.test_correlate import (
    _deadletters,
    answer,
    folded,
    outputs,
    publish,
    request,
)

pytestmark = pytest.mark.integration


def event(event_type: str, source: str, subject: str, **payload: object) -> Envelope:
    return model_for(event_type)(
        event_type=event_type, source=source, subject=subject, payload=payload
    )


def test_registration_fans_out_to_every_office_once(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(51)
    firm = enterprise(rng)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng)])
        tasks = outputs(settings, "task", "task.created", 4, "opening-a-business", quiet=3)
    assert sorted(t.payload.assignee for t in tasks) == sorted(
        ["ks.tax", "ks.hrss", "ks.housingfund", f"ks.town.{firm.town.lower()}"]
    )
    assert {t.payload.supervisor for t in tasks} == {"ks.amr"}
    assert all(firm.name in t.payload.title for t in tasks)


def test_penalty_on_a_licence_holder_opens_a_licence_review(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(52)
    holder, other = enterprise(rng), enterprise(rng)
    licence = event(
        "licence.granted", "ks.approval", holder.uscc, licence_number="JY13205830012345",
        licence_type="食品经营许可证", issuing_department="ks.approval", scope="预包装食品销售",
        valid_from=date(2026, 1, 5),
    )  # fmt: skip
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(holder, rng), registered(other, rng), licence])
        assert outputs(settings, "licence", "licence.granted", 1)
        fine = penalty(holder, rng)
        publish(settings, [fine, penalty(other, rng)])
        reviews = outputs(settings, "task", "task.created", 1, "joint-discipline", quiet=3)
    assert len(reviews) == 1  # the enterprise without a licence has nothing to review
    [review] = reviews
    assert review.subject == holder.uscc
    assert review.payload.assignee == "ks.approval"
    assert review.payload.evidence == ["JY13205830012345"]
    assert review.payload.supervisor == "ks.credit"
    assert review.causation_id == fine.event_id


@pytest.mark.parametrize(("opinions", "decision"), [
    (["approve", "approve", "approve"], "approve"),
    (["approve", "refuse", "approve"], "refuse"),
])  # fmt: skip
def test_parallel_approval_is_decided_when_every_opinion_is_in(
    settings: Settings, tmp_path: Path, opinions: list[str], decision: str
) -> None:
    rng = random.Random(53)
    firm = enterprise(rng)
    asked = ["ks.hrss", "ks.tax", f"ks.town.{firm.town.lower()}"]
    application = event(
        "approval.requested", "ks.approval", firm.uscc, application_number="KS-SP-2026-000123",
        title="建设工程施工许可", departments=asked, applicant="王芳",
        submitted_on=date(2026, 11, 2),
    )  # fmt: skip
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), application])
        tasks = outputs(settings, "task", "task.created", 3, "parallel-approval")
        publish(
            settings,
            [
                event(
                    "approval.opinion",
                    "ks.housingfund",
                    firm.uscc,
                    application_number="KS-SP-2026-000123",
                    opinion="approve",
                )
            ],
        )
        for dept, opinion in zip(asked[:-1], opinions[:-1], strict=True):
            publish(
                settings,
                [
                    event(
                        "approval.opinion",
                        dept,
                        firm.uscc,
                        application_number="KS-SP-2026-000123",
                        opinion=opinion,
                    )
                ],
            )
        assert outputs(settings, "approval", "approval.decided", 1, wait=3) == []  # one missing
        publish(settings, [event("approval.opinion", asked[-1], firm.uscc,
                                 application_number="KS-SP-2026-000123", opinion=opinions[-1],
                                 note="同意")])  # fmt: skip
        [decided] = outputs(settings, "approval", "approval.decided", 1)
        dead = asyncio.run(_deadletters(settings))
    assert sorted(t.payload.assignee for t in tasks) == sorted(asked)
    assert decided.payload.decision == decision
    assert {o.department: o.opinion for o in decided.payload.opinions} == dict(
        zip(asked, opinions, strict=True)
    )
    assert decided.causation_id == application.event_id
    assert [d.headers["bus.reason"] for d in dead] == ["task.not_assignee"]


@pytest.mark.timeout(180)
def test_a_historical_import_updates_the_record_but_opens_no_task(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(54)
    old, new = enterprise(rng), enterprise(rng)
    last_year = tmp_path / "registrations-2025.jsonl"
    last_year.write_text(EventCodec().to_json(registered(old, rng)) + "\n", encoding="utf-8")
    with WorkerProcess(settings, tmp_path / "worker.log"):
        imported = bus("import", str(last_year), "--historical", settings=settings)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        publish(settings, [registered(new, rng)])  # a live registration, for comparison
        folded(settings, "enterprise", 2)
        publish(settings, [request(old)])  # decided on the record the import built
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
        opened = outputs(settings, "task", "task.created", 4, "opening-a-business", quiet=3)
    assert sorted({t.subject for t in opened}) == [new.uscc]
    assert len(opened) == 4
    assert (issued.subject, issued.payload.enterprise_name) == (old.uscc, old.name)


def test_the_worker_runs_the_matters_of_bus_matters_dir(settings: Settings, tmp_path: Path) -> None:
    """A city's folder replaces the shipped matters; two of its matters start from one event."""
    shipped = Path(str(resources.files("bus.domain.matters")))
    folder = tmp_path / "matters"
    folder.mkdir()
    for name in ("opening-a-business.yaml", "compliance-certificate.yaml"):
        (folder / name).write_text((shipped / name).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "credit-file.yaml").write_text(CREDIT_FILE, encoding="utf-8")
    ours = settings.model_copy(update={"matters_dir": folder})
    rng = random.Random(52)
    firm = enterprise(rng)
    with WorkerProcess(ours, tmp_path / "worker.log"):
        publish(ours, [registered(firm, rng)])
        tasks = outputs(ours, "task", "task.created", 5)
        more = outputs(ours, "task", "task.created", 6, wait=3)
    assert sorted((t.payload.matter, t.payload.assignee) for t in tasks) == sorted([
        ("credit-file", "ks.credit"), ("opening-a-business", "ks.tax"),
        ("opening-a-business", "ks.hrss"), ("opening-a-business", "ks.housingfund"),
        ("opening-a-business", f"ks.town.{firm.town.lower()}"),
    ])  # fmt: skip
    assert len(more) == 5, "nothing else: the folder's matters only, each case once"
    assert len({t.payload.task_id for t in tasks}) == 5


def test_a_new_legal_representative_reaches_the_banks_after_tax(
    settings: Settings, tmp_path: Path
) -> None:
    """A matter written only in the language, through the real worker: three offices at once,
    the banks once tax has recorded the change; a change of address starts nothing."""
    rng = random.Random(55)
    firm = enterprise(rng)
    moved = event("enterprise.changed", "ks.amr", firm.uscc, address="昆山市花桥镇光明路100号",
                  effective_on=date(2026, 3, 2))  # fmt: skip
    changed = event("enterprise.changed", "ks.amr", firm.uscc, legal_representative="李娜",
                    legal_representative_id="32058319850202002X",
                    effective_on=date(2026, 3, 2))  # fmt: skip
    matter = "legal-representative-change"
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), moved, changed])
        first = outputs(settings, "task", "task.created", 3, matter, quiet=3)
        [tax] = [t for t in first if t.payload.assignee == "ks.tax"]
        publish(settings, [answer(tax, "task.completed", "ks.tax", outcome="recorded")])
        tasks = outputs(settings, "task", "task.created", 4, matter, quiet=3)
    assert sorted(t.payload.assignee for t in first) == ["ks.housingfund", "ks.hrss", "ks.tax"]
    assert {t.causation_id for t in tasks} == {changed.event_id}  # none for the address
    [bank] = [t for t in tasks if t.payload.assignee == "ks.banking"]
    assert "李娜" in bank.payload.title
    assert bank.payload.supervisor == "ks.amr"


def test_a_deregistration_is_decided_after_both_clearances_and_ends_what_runs(
    settings: Settings, tmp_path: Path
) -> None:
    """Written only in the language, through the real worker: clearances, a decision task,
    application.decided; then enterprise.deregistered cancels a running case's open tasks."""
    rng = random.Random(56)
    firm = enterprise(rng)
    changed = event("enterprise.changed", "ks.amr", firm.uscc, legal_representative="李娜",
                    legal_representative_id="32058319850202002X",
                    effective_on=date(2026, 3, 2))  # fmt: skip
    applied = event(
        "application.submitted", "ks.amr", firm.uscc, matter="enterprise-deregistration",
        application_number="KS-ZX-2026-000042", applicant="李娜", requested_by="ks.amr",
        submitted_on=date(2026, 3, 2),
    )  # fmt: skip
    gone = event("enterprise.deregistered", "ks.amr", firm.uscc, reason="股东会决议解散",
                  deregistered_on=date(2026, 3, 4))  # fmt: skip
    matter = "enterprise-deregistration"
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), changed, applied])
        clearances = outputs(settings, "task", "task.created", 2, matter, quiet=3)
        publish(settings, [answer(t, "task.completed", t.payload.assignee, outcome="cleared")
                           for t in clearances])  # fmt: skip
        [decide] = outputs(settings, "task", "task.created", 3, matter)[2:]
        publish(settings, [answer(decide, "task.completed", "ks.amr", outcome="deregistered")])
        [decided] = outputs(settings, "application", "application.decided", 1)
        publish(settings, [gone])
        cancelled = outputs(settings, "task", "task.cancelled", 3, quiet=3)
    assert sorted(t.payload.assignee for t in clearances) == ["ks.hrss", "ks.tax"]
    assert decide.payload.assignee == "ks.amr"
    assert (decided.payload.result, decided.payload.application_number) == (
        "deregistered", "KS-ZX-2026-000042",
    )  # fmt: skip
    assert decided.causation_id == applied.event_id
    # The decision is signed: anyone holding the bus's public key checks the event as a
    # department received it, and a changed result does not pass.
    public = settings.data_dir / "keys" / f"{settings.signing_key_id}.pub"
    (tmp_path / "decided.json").write_text(EventCodec.to_json(decided), encoding="utf-8")
    shown = bus("decision", "verify", str(tmp_path / "decided.json"), "-k", str(public))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert '"result": "deregistered"' in shown.stdout
    forged = EventCodec.to_json(decided).replace('"deregistered"', '"refused"')
    (tmp_path / "forged.json").write_text(forged, encoding="utf-8")
    refused = bus("decision", "verify", str(tmp_path / "forged.json"), "-k", str(public))
    assert refused.returncode == 1
    assert "decision.bad_signature" in refused.stderr
    assert len(cancelled) == 3  # the change of legal representative: tax, hrss, housing fund
    assert all(c.causation_id == gone.event_id for c in cancelled)


CREDIT_FILE = """
name: credit-file
version: 1
title: Open the public credit file (信用档案)
trigger: enterprise.registered
lead: ks.credit
tasks:
  - name: credit-file
    assignee: ks.credit
    title: "Open the public credit file of {enterprise}"
    working_days: 2
    supervisor: lead
"""
