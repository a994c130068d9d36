"""The special credit report end to end: departments of three domains publish their decisions
through the gateway, the credit office asks for an enterprise's report, a real worker signs
it at once, and anyone verifies it: over HTTP, and offline with ``bus report verify``."""

from __future__ import annotations

import json
import random
import time
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered, town_code
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.streaming.codec import EventCodec
from tests.e2e.conftest import Gateway
from tests.e2e.test_cli import bus

codec = EventCodec()


def body(event: Envelope) -> dict[str, Any]:
    return dict(json.loads(codec.to_json(event)))


def fine(uscc: str, agency: str, case: str, decided: date) -> Envelope:
    return model_for("penalty.imposed")(
        event_type="penalty.imposed", source=agency, subject=uscc,
        payload={"case_number": case, "kind": "fine", "violation": "未按规定办理",
                 "legal_basis": "《法》第一条", "amount": Decimal(2000), "decided_on": decided,
                 "agency": agency},
    )  # fmt: skip


def request(uscc: str, by: str) -> Envelope:
    return model_for("report.requested")(
        event_type="report.requested", source=by, subject=uscc,
        payload={"period_start": date(2025, 1, 1), "period_end": date(2026, 12, 31),
                 "purpose": "bidding", "requested_by": by, "applicant": "李娜"},
    )  # fmt: skip


def inbox_until(gateway: Gateway, key: dict[str, str], want: Any, seconds: float = 90) -> list[Any]:
    """The department's inbox events, read until ``want(events)`` holds."""
    events: list[Any] = []
    cursor = 0
    deadline = time.monotonic() + seconds
    while not want(events):
        assert time.monotonic() < deadline, [e["event_type"] for e in events]
        page = gateway.http.get("/v1/inbox", params={"cursor": cursor, "wait": 5}, headers=key)
        assert page.status_code == 200, page.text
        events += [item["event"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
    return events


def test_a_credit_report_is_issued_at_once_and_verified_anywhere(
    gateway: Gateway, tmp_path: Path
) -> None:
    rng = random.Random(2025)
    firm, clean = enterprise(rng), enterprise(rng)
    bureau = town_code(firm.town)
    post = gateway.http.post
    credit, finance = gateway.key("ks.credit"), gateway.key("ks.finance")
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        for f in (firm, clean):
            reg = post("/v1/events", json=body(registered(f, rng)), headers=gateway.key("ks.amr"))
            assert reg.status_code == 202, reg.text
        decisions = [
            fine(firm.uscc, "ks.tax", "昆税罚〔2025〕17号", date(2025, 4, 10)),
            fine(firm.uscc, "ks.eco", "昆环罚〔2025〕88号", date(2025, 8, 1)),
            penalty(firm, rng, n=42, decided_on=date(2026, 2, 14)),
        ]
        for d in decisions:
            r = post("/v1/events", json=body(d), headers=gateway.key(d.source))
            assert r.status_code == 202, r.text
        revoked = model_for("penalty.revoked")(
            event_type="penalty.revoked", source="ks.eco", subject=firm.uscc,
            payload={"case_number": "昆环罚〔2025〕88号", "reason": "复议撤销",
                     "revoked_on": date(2025, 11, 20)},
        )  # fmt: skip
        assert post("/v1/events", json=body(revoked), headers=gateway.key("ks.eco")).is_success
        # Only the departments of the directory's request windows may ask, in their own name.
        asking = body(request(firm.uscc, "ks.tax"))
        tax = post("/v1/events", json=asking, headers=gateway.key("ks.tax"))
        assert (tax.status_code, tax.json()["error"]) == (403, "auth.event_type")
        posing = body(request(firm.uscc, "ks.credit")) | {"source": "ks.finance"}
        forged = post("/v1/events", json=posing, headers=finance)
        assert (forged.status_code, forged.json()["field"]) == (403, "payload.requested_by")

        # The credit office follows every penalty: once the four are in its inbox, the bus
        # has folded them into the record, and the report is asked for.
        inbox_until(gateway, credit, lambda es: sum(e["event_type"].startswith("penalty.")
                                                    for e in es) >= 4)  # fmt: skip
        asked = post("/v1/events", json=body(request(firm.uscc, "ks.credit")), headers=credit)
        assert asked.status_code == 202, asked.text
        assert post("/v1/events", json=body(request(clean.uscc, "ks.finance")),
                    headers=finance).status_code == 202  # fmt: skip
        events = inbox_until(gateway, credit, lambda es: any(
            e["event_type"] == "report.issued" for e in es))  # fmt: skip
        [issued] = [e for e in events if e["event_type"] == "report.issued"]
        theirs = inbox_until(gateway, finance, lambda es: any(
            e["event_type"] == "report.issued" for e in es))  # fmt: skip
        [other] = [e for e in theirs if e["event_type"] == "report.issued"]

        serial = issued["payload"]["serial"]
        got = gateway.http.get(f"/v1/reports/{serial}", headers=credit)
        assert got.status_code == 200, got.text
        document = got.json()
        assert gateway.http.get(f"/v1/reports/{serial}").status_code == 401
        missing = gateway.http.get("/v1/reports/KS-2026-000000000000", headers=credit)
        assert (missing.status_code, missing.json()["error"]) == (404, "report.not_found")

    assert document["uscc"] == firm.uscc
    assert document["result"] == "records"
    found = {d["domain"]: [(r["case_number"], r["state"]) for r in d["records"]]
             for d in document["domains"] if d["records"]}  # fmt: skip
    case = decisions[2].payload.case_number
    assert found == {
        "tax": [("昆税罚〔2025〕17号", "active")],
        "ecology_environment": [("昆环罚〔2025〕88号", "revoked")],
        "law_enforcement": [(case, "active")],
    }
    assert bureau == decisions[2].source
    assert other["payload"]["result"] == "clean"
    assert {d["result"] for d in other["payload"]["domains"]} == {"no_record"}

    ok = gateway.http.post("/v1/reports/verify", json=document)
    assert ok.status_code == 200
    assert ok.json()["valid"] is True
    assert ok.json()["domains"]["tax"] == 1
    assert ok.json()["domains"]["market_regulation"] == 0
    forged_doc = json.loads(json.dumps(document))
    forged_doc["domains"][1]["records"] = []
    forged_doc["domains"][1]["result"] = "no_record"
    bad = gateway.http.post("/v1/reports/verify", json=forged_doc)
    assert (bad.json()["valid"], bad.json()["reason"]) == (False, "report.bad_signature")

    # Offline, with nothing but the bus's public key.
    public = gateway.settings.data_dir / "keys" / f"{gateway.settings.signing_key_id}.pub"
    (tmp_path / "r.json").write_text(json.dumps(document, ensure_ascii=False))
    shown = bus("report", "verify", str(tmp_path / "r.json"), "--public-key", str(public))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "昆税罚〔2025〕17号" in shown.stdout
    assert "no record" in shown.stdout
    (tmp_path / "forged.json").write_text(json.dumps(forged_doc, ensure_ascii=False))
    refused = bus("report", "verify", str(tmp_path / "forged.json"), "-k", str(public))
    assert refused.returncode == 1
    assert "report.bad_signature" in refused.stderr


def test_anyone_verifies_a_signed_decision_over_http(gateway: Gateway) -> None:
    from bus.domain.certificates import Signer
    from bus.domain.decisions import sign_decision

    keys = gateway.settings.data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate("ks-bus-decisions")
    signer.save_public_key(keys / "ks-bus-decisions.pub")
    uscc = enterprise(random.Random(3)).uscc
    decided = model_for("application.decided")(
        event_type="application.decided", source="ks.bus", subject=uscc,
        payload={"matter": "enterprise-deregistration", "application_number": "KS-ZX-2026-000042",
                 "result": "deregistered"},
    )  # fmt: skip
    signed = body(sign_decision(signer, decided))
    ok = gateway.http.post("/v1/decisions/verify", json=signed)  # no key needed
    assert ok.status_code == 200, ok.text
    assert (ok.json()["valid"], ok.json()["decision"]["result"]) == (True, "deregistered")
    forged = json.loads(json.dumps(signed))
    forged["payload"]["result"] = "refused"
    bad = gateway.http.post("/v1/decisions/verify", json=forged).json()
    assert (bad["valid"], bad["reason"]) == (False, "decision.bad_signature")
    unsigned = gateway.http.post("/v1/decisions/verify", json=body(decided)).json()
    assert (unsigned["valid"], unsigned["field"]) == (False, "payload.signature")
