"""The special credit report: every domain of the directory at once, the records the matter's
list shows in their state, signed and verifiable offline like a certificate, never passing
for one; a review by the owning departments only when the matter says so."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from bus.agents.simulate import Simulation, load_scenario
from bus.domain.certificates import Signer, Verifier
from bus.domain.departments import Directory
from bus.domain.matters import load_matters
from bus.domain.reports import SignedReport, verify_report_bytes, verify_report_file
from bus.errors import BusError, ConfigurationError, ValidationFailed

MATTERS = Path(str(resources.files("bus.domain.matters")))
SCENARIO = load_scenario(MATTERS / "scenarios" / "credit-report.yaml")


def issued(sim: Simulation) -> list[dict[str, Any]]:
    """The report.issued payloads of a simulation's timeline."""
    return [m.payload for m in sim.timeline if m.event_type == "report.issued"]


def play(steps: int | None = None, matters: Path | None = None) -> tuple[Simulation, Any]:
    sim = Simulation(matters)
    scenario = SCENARIO if steps is None else SCENARIO.model_copy(
        update={"steps": SCENARIO.steps[:steps], "expect": []}
    )  # fmt: skip
    return sim, sim.run(scenario)


def signed(sim: Simulation) -> SignedReport:
    (payload,) = issued(sim)
    return SignedReport.model_validate({**payload, "uscc": SCENARIO.enterprise})


def test_a_report_lists_every_domain_with_what_the_matter_shows() -> None:
    sim, outcome = play()
    try:
        assert outcome.failures == []
        report = signed(sim)
        verify = Verifier({"simulation": sim.engine.signer.public_key})
        assert verify_report_bytes(verify, report.to_json_bytes()) == report
    finally:
        sim.close()
    domains = {d.domain: d for d in report.domains}
    # Every domain of the directory, in its order: found or not.
    assert [d.domain for d in report.domains] == [d.code for d in Directory.load().domains]
    assert report.result == "records"
    found = {code: [(r.case_number, r.agency, r.state) for r in d.records]
             for code, d in domains.items() if d.records}  # fmt: skip
    assert found == {
        "tax": [("昆税罚〔2024〕17号", "ks.tax", "active")],
        "ecology_environment": [("昆环罚〔2024〕88号", "ks.eco", "revoked")],
        "law_enforcement": [("昆花综执罚决字〔2025〕第0042号", "ks.enforcement.huaqiao", "active")],
    }
    # Repaired out of the public record (emergency management), and before the period
    # (housing): the matter's list does not show them.
    assert domains["emergency_safety"].result == "no_record"
    assert domains["housing_construction"].result == "no_record"
    assert domains["market_regulation"].records == []


def test_a_clean_enterprise_gets_a_clean_report_at_once() -> None:
    registration, request = SCENARIO.steps[0], SCENARIO.steps[-1]
    sim = Simulation()
    try:
        clean = SCENARIO.model_copy(
            update={"title": "clean", "steps": [registration, request], "expect": []}
        )
        outcome = sim.run(clean)
        (payload,) = issued(sim)
    finally:
        sim.close()
    assert outcome.open_tasks == 0
    assert payload["result"] == "clean"
    assert {d["result"] for d in payload["domains"]} == {"no_record"}
    assert len(payload["domains"]) == len(Directory.load().domains)


def test_the_same_log_gives_the_same_signed_report() -> None:
    reports = []
    for _ in range(2):
        sim, _ = play()
        try:
            reports.append(signed(sim).to_json_bytes())
        finally:
            sim.close()
    first, second = (json.loads(r) for r in reports)
    assert first["serial"] == second["serial"]
    assert first["issued_at"] == second["issued_at"]  # the log's time, not the clock's
    # Each simulation makes its own key: everything but the signature is the same.
    assert {k: v for k, v in first.items() if k != "signature"} == {
        k: v for k, v in second.items() if k != "signature"
    }


def test_an_altered_report_does_not_verify_and_never_passes_for_a_certificate(
    tmp_path: Path,
) -> None:
    sim, _ = play()
    try:
        report = signed(sim)
        key = sim.engine.signer.public_key
    finally:
        sim.close()
    verifier = Verifier({"simulation": key})
    doc = json.loads(report.to_json_bytes())
    doc["domains"][1]["records"][0]["state"] = "revoked"  # the tax penalty "revoked"
    with pytest.raises(BusError) as info:
        verify_report_bytes(verifier, json.dumps(doc, ensure_ascii=False).encode())
    assert info.value.reason == "report.bad_signature"
    # A report is not a certificate, however it is signed.
    with pytest.raises(ValidationFailed) as cert:
        verifier.verify_bytes(report.to_json_bytes())
    assert cert.value.reason == "certificate.malformed"
    with pytest.raises(BusError) as stranger:
        verify_report_bytes(Verifier({"other": Signer.generate("other").public_key}),
                            report.to_json_bytes())  # fmt: skip
    assert stranger.value.reason == "report.unknown_key"
    with pytest.raises(ValidationFailed) as empty:
        verify_report_bytes(verifier, b'{"format": "gov.ks.bus.report/1"}')
    assert empty.value.reason == "report.malformed"
    with pytest.raises(BusError) as gone:
        verify_report_file(verifier, tmp_path / "missing.json")
    assert gone.value.reason == "report.unreadable"


REVIEWED = (
    (MATTERS / "credit-report.yaml").read_text(encoding="utf-8")
    + """
tasks:
  - name: review
    for_each: active
    assignee: "{item.agency}"
    evidence: "{item.case_number}"
    title: "Review {evidence} for the credit report of {enterprise}"
    working_days: 3
"""
)


def test_active_records_are_reviewed_by_their_owners_when_the_matter_says_so(
    tmp_path: Path,
) -> None:
    text = REVIEWED.replace(
        "outcomes:",
        """  active:
    from: record.penalties
    where:
      decided_on: {gte: "{trigger.period_start}", lte: "{trigger.period_end}"}
      state: active
outcomes:""",
        1,
    )
    (tmp_path / "credit-report.yaml").write_text(text, encoding="utf-8")
    sim, outcome = play(matters=tmp_path)
    try:
        created = [m.payload for m in sim.timeline if m.event_type == "task.created"]
        assert {t["assignee"] for t in created} == {"ks.tax", "ks.enforcement.huaqiao"}
        assert issued(sim) == []  # the report waits for both reviews
        assert outcome.open_tasks == 2
    finally:
        sim.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("    listing: disclosed\n  - result: clean", "  - result: clean"),
         "a report lists the records of a list"),
        (("trigger: report.requested", "trigger: certificate.requested"),
         "a report answers report.requested"),
    ],
)  # fmt: skip
def test_a_report_outcome_must_list_and_answer_a_report_request(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = (MATTERS / "credit-report.yaml").read_text(encoding="utf-8")
    assert change[0] in text
    (tmp_path / "credit-report.yaml").write_text(text.replace(*change), encoding="utf-8")
    with pytest.raises(ConfigurationError, match=message):
        load_matters(tmp_path)


def test_a_department_of_an_unknown_domain_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "departments.yaml"
    path.write_text(
        "domains: [{code: tax, name: 税务}]\n"
        "departments:\n  - {code: ks.tax, name: Tax, domain: taxes}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match="domain 'taxes' is not among"):
        Directory.load(path)
