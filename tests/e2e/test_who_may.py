"""Who may do what, as an attacker tries it: a bureau acts only on its own decisions.

A real gateway and worker on the real broker. The headline hole: bureau Z revokes bureau H's
penalty and the enterprise gets a clean compliance certificate. Also: a penalty imposed in
another bureau's name, an event written straight to Kafka as the bus itself, and a key for
the bus's identity.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from bus.dev.processes import WorkerProcess, settings_env
from bus.dev.samples import enterprise, penalty, registered
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.streaming.client import BusClient, Record
from bus.streaming.codec import EventCodec
from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import read
from tests.unit.eventdata import build

pytestmark = pytest.mark.e2e
codec = EventCodec()
Z = "ks.enforcement.zhoushi"


def body(event: Envelope, **payload: Any) -> dict[str, Any]:
    """The JSON a department system sends, payload fields changed."""
    data = json.loads(codec.to_json(event))
    data["payload"].update(payload)
    return data


def act(event_type: str, fine: Envelope, source: str, **payload: Any) -> Envelope:
    return model_for(event_type)(
        event_type=event_type, source=source, subject=fine.subject,
        payload={"case_number": fine.payload.case_number, **payload},
    )  # fmt: skip


def wait_records(gateway: Gateway, topic: str, done: Any, seconds: float = 60) -> list[Record]:
    """Records of ``topic`` once ``done(records)`` holds (the worker is asynchronous)."""
    deadline = time.monotonic() + seconds
    while True:
        records = read(gateway.settings, topic, idle=0.5)
        if done(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def test_a_bureau_cannot_launder_another_bureaus_penalty(gateway: Gateway, tmp_path: Path) -> None:
    rng = random.Random(81)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    h = fine.source
    revoke = act("penalty.revoked", fine, Z, reason="撤销", revoked_on=date(2026, 5, 1))
    again = act("penalty.revoked", fine, Z, reason="撤销", revoked_on=date(2026, 5, 2))
    repair = act("penalty.repaired", fine, Z, repaired_on=date(2026, 6, 1),
                 decision_number="昆信修复〔2026〕1号")  # fmt: skip
    request = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": date(2026, 1, 1), "period_end": date(2026, 12, 31),
                 "purpose": "ipo", "requested_by": "ks.finance", "applicant": "张伟"},
    )  # fmt: skip
    z = gateway.key(Z)
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        post = gateway.http.post
        amr = gateway.key("ks.amr")
        assert post("/v1/events", json=body(registered(firm, rng)), headers=amr).status_code == 202
        assert post("/v1/events", json=body(fine), headers=gateway.key(h)).status_code == 202
        # In another's name: refused at the door, the field named.
        forged = post("/v1/events", json=body(penalty(firm, rng, n=2), agency=h) | {"source": Z},
                      headers=z)  # fmt: skip
        assert forged.status_code == 403, forged.text
        assert (forged.json()["error"], forged.json()["field"]) == (
            "auth.bound_field", "payload.agency"
        )  # fmt: skip
        # On H's decision: the gateway cannot know whose it is; the worker does.
        assert post("/v1/events", json=body(revoke), headers=z).status_code == 202
        assert post("/v1/events", json=body(repair), headers=z).status_code == 403  # directory
        asyncio.run(_publish(gateway, [again, repair]))  # straight to Kafka, as a producer could
        dead = wait_records(gateway, "deadletter", lambda rs: len(rs) >= 3)
        finance = gateway.key("ks.finance")
        assert post("/v1/events", json=body(request), headers=finance).status_code == 202
        tasks = wait_records(gateway, "events.task", lambda rs: any(
            r.headers["event_type"] == "task.created"
            and codec.decode(r.value or b"").payload.matter == "compliance-certificate"
            for r in rs))  # fmt: skip
        certificates = read(gateway.settings, "events.certificate", idle=1)
        penalties = read(gateway.settings, "events.penalty")
    refused = {r.headers["event_id"]: r.headers for r in dead}
    assert refused[str(repair.event_id)]["bus.reason"] == "auth.event_type"
    for event in (revoke, again):
        headers = refused[str(event.event_id)]
        assert headers["bus.reason"] == "auth.not_owner"
        assert headers["bus.field"] == "payload.case_number"
        assert f"belongs to {h}" in headers["bus.error"]
    assert {r.headers["event_id"] for r in penalties} == {str(fine.event_id)}  # nothing forged
    assert not [r for r in certificates if r.headers["event_type"] == "certificate.issued"]
    review = [codec.decode(r.value or b"").payload for r in tasks
              if r.headers["event_type"] == "task.created"]  # fmt: skip
    assert [t.assignee for t in review if t.matter == "compliance-certificate"] == [h]


def test_the_owner_revokes_and_the_credit_office_repairs(gateway: Gateway, tmp_path: Path) -> None:
    rng = random.Random(82)
    firm = enterprise(rng)
    fine, other = penalty(firm, rng, n=1), penalty(firm, rng, n=2)
    revoke = act("penalty.revoked", fine, fine.source, reason="复议撤销", revoked_on=date.today())
    repair = act("penalty.repaired", other, "ks.credit", repaired_on=date.today(),
                 decision_number="昆信修复〔2026〕2号")  # fmt: skip
    early = act("penalty.revoked", penalty(firm, rng, n=3), fine.source, reason="撤销",
                revoked_on=date.today())  # fmt: skip
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        asyncio.run(_publish(gateway, [fine, other, revoke, repair, early]))
        accepted = wait_records(gateway, "events.penalty", lambda rs: len(rs) >= 4)
        dead = wait_records(gateway, "deadletter", lambda rs: len(rs) >= 1)
    assert {r.headers["event_id"] for r in accepted} == {
        str(e.event_id) for e in (fine, other, revoke, repair)
    }
    [unknown] = dead
    assert unknown.headers["event_id"] == str(early.event_id)
    assert unknown.headers["bus.reason"] == "auth.unknown_decision"


def test_nobody_speaks_as_the_bus(gateway: Gateway, tmp_path: Path) -> None:
    rng = random.Random(83)
    firm = enterprise(rng)
    forged = build("certificate.issued", subject=firm.uscc)
    request = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": date(2026, 1, 1), "period_end": date(2026, 12, 31),
                 "purpose": "ipo", "requested_by": "ks.finance", "applicant": "张伟"},
    )  # fmt: skip
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        asyncio.run(_publish(gateway, [forged, registered(firm, rng), request]))
        dead = wait_records(gateway, "deadletter", lambda rs: len(rs) >= 1)
        certificates = wait_records(gateway, "events.certificate", lambda rs: any(
            r.headers["event_type"] == "certificate.issued" for r in rs))  # fmt: skip
    [genuine] = [r for r in certificates if r.headers["event_type"] == "certificate.issued"]
    assert [r.headers["bus.reason"] for r in dead] == ["auth.reserved_source"]
    # A forgery written past ingest, straight onto the canonical topic: never served or listed.
    real = codec.decode(genuine.value or b"")
    fake_payload = real.payload.model_copy(update={"serial": "KS-2026-FORGED000001"})
    fake = real.model_copy(update={"payload": fake_payload, "event_id": forged.event_id})
    asyncio.run(_send(gateway, gateway.settings.topic("events.certificate"), fake))
    finance = gateway.key("ks.finance")
    got = gateway.http.get(f"/v1/certificates/{real.payload.serial}", headers=finance)
    assert got.status_code == 200, got.text
    missing = gateway.http.get("/v1/certificates/KS-2026-FORGED000001", headers=finance)
    assert missing.status_code == 404, missing.text
    listed = _bus(gateway, "certificate", "list")
    assert real.payload.serial in listed.stdout
    assert "FORGED" not in listed.stdout
    assert "1 certificate.issued on the topic do not verify" in listed.stderr
    issued = _bus(gateway, "gateway", "keys", "issue", "ks.bus")
    assert issued.returncode != 0
    assert "reserved" in issued.stderr


def test_writing_into_another_case_does_not_join_it(gateway: Gateway, tmp_path: Path) -> None:
    rng = random.Random(84)
    firm, other = enterprise(rng), enterprise(rng)
    reg = registered(firm, rng)
    case = str(reg.correlation_id)
    intruder = penalty(other, rng).model_copy(update={"correlation_id": reg.correlation_id})
    tax = gateway.key("ks.tax")
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        asyncio.run(_publish(gateway, [reg]))
        wait_records(gateway, "events.task", lambda rs: len(rs) >= 4)
        z = gateway.key(intruder.source)
        assert gateway.http.post("/v1/events", json=body(intruder), headers=z).status_code == 202
        wait_records(gateway, "events.penalty", lambda rs: len(rs) >= 1)
        outsider = gateway.key("ks.finance")
        before = _case_reads(gateway)
        guesses = [gateway.http.get(f"/v1/cases/{case}", headers=outsider) for _ in range(5)]
        after_outsider = _case_reads(gateway)
        seen = gateway.http.get(f"/v1/cases/{case}", headers=tax)
        stolen = gateway.http.get(f"/v1/cases/{case}", headers=z)
        traced = _bus(gateway, "trace", case)
    assert {g.status_code for g in guesses} == {404}
    assert after_outsider == before  # an outsider's guesses never read the evidence log
    assert _case_reads(gateway) == before + 2  # the assignee, and Z who just published into it
    assert seen.status_code == 200, seen.text
    assert "penalty.imposed" not in [s["event_type"] for s in seen.json()["steps"]]
    assert (stolen.status_code, stolen.json()["error"]) == (404, "case.not_found")
    assert f"{intruder.source} (not a participant)" in traced.stdout, traced.stdout


def _case_reads(gateway: Gateway) -> float:
    text = gateway.http.get("/metrics").text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("bus_gateway_case_reads_total"))  # fmt: skip


def _bus(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(gateway.settings), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def _send(gateway: Gateway, topic: str, event: Envelope) -> None:
    async with BusClient(gateway.settings) as client:
        await client.send_raw(topic, event.subject.encode(), codec.encode(event),
                              event.kafka_headers())  # fmt: skip


async def _publish(gateway: Gateway, events: list[Envelope]) -> None:
    async with BusClient(gateway.settings) as client:
        await client.publish_many(events)


def test_a_refused_answer_is_reported_as_refused_not_accepted(
    gateway: Gateway, tmp_path: Path
) -> None:
    rng = random.Random(85)
    firm = enterprise(rng)
    reg = registered(firm, rng)
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        asyncio.run(_publish(gateway, [reg]))
        tasks = wait_records(gateway, "events.task", lambda rs: len(rs) >= 4)
        created = [codec.decode(r.value or b"") for r in tasks]
        hrss_task = next(t for t in created if t.payload.assignee == "ks.hrss")

        def answer(source: str) -> Envelope:
            return model_for("task.completed")(
                event_type="task.completed", source=source, subject=firm.uscc,
                correlation_id=hrss_task.correlation_id, causation_id=hrss_task.event_id,
                payload={"task_id": hrss_task.payload.task_id, "outcome": "registered"},
            )  # fmt: skip

        wrong, right, again = answer("ks.tax"), answer("ks.hrss"), answer("ks.hrss")
        (tmp_path / "answers.jsonl").write_text(
            "".join(codec.to_json(e) + "\n" for e in (wrong, right))
        )
        published = _bus(gateway, "publish", str(tmp_path / "answers.jsonl"), "--wait", "60")
        (tmp_path / "again.jsonl").write_text(codec.to_json(again) + "\n")
        closed = _bus(gateway, "publish", str(tmp_path / "again.jsonl"), "--wait", "60")
        traced = _bus(gateway, "trace", str(reg.correlation_id))
    assert published.returncode == 1, published.stdout
    assert "refused by the cases agent: task.not_assignee" in published.stdout
    assert "2 published, 1 accepted" in published.stdout
    assert closed.returncode == 1, closed.stdout
    assert "task.closed" in closed.stdout
    assert "REFUSED task.not_assignee" in traced.stdout
    assert "REFUSED task.closed" in traced.stdout


def test_concurrent_posts_of_one_event_id_publish_it_once(gateway: Gateway) -> None:
    event = penalty(enterprise(random.Random(86)), random.Random(86))
    headers = gateway.key(event.source)

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/events", json=body(event), headers=headers) for _ in range(8))
            )
        return sorted(a.status_code for a in answers)

    codes = asyncio.run(post_all())
    ingress = read(gateway.settings, "ingress")
    assert codes == [202] + [409] * 7
    assert [r.headers["event_id"] for r in ingress] == [str(event.event_id)]


@pytest.mark.slow("two workers one after the other, and four CLI runs between them")
def test_decisions_from_before_the_policy_get_their_owners(
    gateway: Gateway, tmp_path: Path
) -> None:
    """An upgrade: penalties already on the canonical topic, an owners store that never saw them."""
    rng = random.Random(87)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 3, 2))
    h = fine.source
    penalties = gateway.settings.topic("events.penalty")
    asyncio.run(_send(gateway, penalties, fine))  # accepted by a bus that had no policy yet
    by_z = act("penalty.revoked", fine, Z, reason="撤销", revoked_on=date(2026, 5, 1))
    by_h = act("penalty.revoked", fine, h, reason="撤销", revoked_on=date(2026, 5, 2))
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        busy = _bus(gateway, "migrate", "owners")
        asyncio.run(_publish(gateway, [by_h]))
        dead = wait_records(gateway, "deadletter", lambda rs: len(rs) >= 1)
    assert busy.returncode != 0
    assert "stop every worker first" in busy.stdout + busy.stderr
    assert dead[0].headers["bus.reason"] == "auth.unknown_decision"  # the gap being closed
    dry = _bus(gateway, "migrate", "owners", "--dry-run")
    assert "would add 1" in dry.stdout, dry.stdout + dry.stderr
    first = _bus(gateway, "migrate", "owners")
    second = _bus(gateway, "migrate", "owners")
    assert "added 1" in first.stdout, first.stdout + first.stderr
    assert "1 known, added 0" in second.stdout, second.stdout + second.stderr  # idempotent
    with WorkerProcess(gateway.settings, tmp_path / "worker2.log"):
        asyncio.run(_publish(gateway, [by_z, by_h]))
        dead = wait_records(gateway, "deadletter", lambda rs: len(rs) >= 2)
        accepted = wait_records(gateway, "events.penalty", lambda rs: len(rs) >= 2)
    reasons = {r.headers["event_id"]: r.headers["bus.reason"] for r in dead}
    assert reasons[str(by_z.event_id)] == "auth.not_owner"
    assert str(by_h.event_id) in {r.headers["event_id"] for r in accepted}


def test_the_gateway_tells_the_final_verdict_when_asked_to_wait(
    gateway: Gateway, tmp_path: Path
) -> None:
    rng = random.Random(88)
    firm = enterprise(rng)
    reg = registered(firm, rng)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    revoke = act("penalty.revoked", fine, Z, reason="撤销", revoked_on=date(2026, 5, 1))
    post = gateway.http.post
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        asyncio.run(_publish(gateway, [reg, fine]))
        tasks = wait_records(gateway, "events.task", lambda rs: len(rs) >= 4)
        task = next(e for r in tasks if (e := codec.decode(r.value or b"")).payload.assignee
                    == "ks.hrss")  # fmt: skip

        def answer(source: str) -> dict[str, Any]:
            return json.loads(codec.to_json(model_for("task.completed")(
                event_type="task.completed", source=source, subject=firm.uscc,
                correlation_id=task.correlation_id, causation_id=task.event_id,
                payload={"task_id": task.payload.task_id, "outcome": "registered"},
            )))  # fmt: skip

        quick = post("/v1/events", json=body(revoke), headers=gateway.key(Z))
        owner = post("/v1/events?wait=30", json=body(revoke) | {"event_id": str(uuid4())},
                     headers=gateway.key(Z))  # fmt: skip
        wrong = post("/v1/events?wait=30", json=answer("ks.tax"), headers=gateway.key("ks.tax"))
        batch = post("/v1/events:batch?wait=30", json=[answer("ks.hrss"), answer("ks.hrss")],
                     headers=gateway.key("ks.hrss"))  # fmt: skip
    assert quick.status_code == 202
    assert quick.json()["verdict"] is None  # not asked to wait: on ingress, nothing more said
    assert owner.json()["verdict"]["verdict"] == "refused", owner.text
    assert owner.json()["verdict"]["refusal"]["error"] == "auth.not_owner"
    assert owner.json()["verdict"]["refusal"]["field"] == "payload.case_number"
    assert wrong.json()["verdict"]["verdict"] == "refused", wrong.text
    assert wrong.json()["verdict"]["refusal"]["error"] == "task.not_assignee"
    verdicts = batch.json()["verdicts"]
    assert [v["verdict"] for v in verdicts] == ["accepted", "refused"], batch.text
    assert verdicts[1]["refusal"]["error"] == "task.closed"
