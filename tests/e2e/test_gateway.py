"""The HTTP gateway as integrators use it: a real ``bus gateway run`` process, a real broker.

Each test starts the gateway as a child process with the test's ``BUS_*`` settings, drives it
with httpx, and checks what reached (or did not reach) the bus's topics. Tests that need the
bus's verdict (canonical topic, de-duplication, certificates) also run a real worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bus.dev.processes import WorkerProcess, settings_env
from bus.dev.samples import enterprise, penalty, registered, town_code
from bus.domain.certificates import Signer
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.client import Record, read_topic
from bus.streaming.codec import EventCodec
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

codec = EventCodec()


def read(settings: Settings, name: str, idle: float | None = None) -> list[Record]:
    """Every record on ``<prefix>.<name>`` now (up to the end offsets, so a slow first fetch
    cannot return fewer); with ``idle``, also what comes until that many seconds of quiet."""
    how = {"to_end": True} if idle is None else {"idle": idle}

    async def collect() -> list[Record]:
        async with contextlib.aclosing(read_topic(settings, settings.topic(name), **how)) as rs:
            return [r async for r in rs]

    return asyncio.run(collect())


def wait_for(settings: Settings, name: str, count: int, timeout: float = 30) -> list[Record]:
    """Records on a topic once there are at least ``count`` (the worker is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read(settings, name)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.3)


def a_penalty(seed: int = 1) -> tuple[Envelope, dict[str, Any]]:
    """A valid ``penalty.imposed`` and its JSON form (as a department system sends it)."""
    rng = random.Random(seed)
    event = penalty(enterprise(rng), rng)
    return event, json.loads(codec.to_json(event))


def test_a_valid_event_is_accepted_and_reaches_the_canonical_topic(
    gateway: Gateway, tmp_path: Path
) -> None:
    event, body = a_penalty(3)
    del body["event_id"]  # the gateway gives one and says which
    del body["source"]  # the key says who is publishing
    headers = gateway.key(event.source)
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        r = gateway.http.post("/v1/events", json=body, headers=headers)
        assert r.status_code == 202, r.text
        answer = r.json()
        assert answer["status"] == "accepted_for_processing"
        records = wait_for(gateway.settings, "events.penalty", 1)
    assert [rec.headers["event_id"] for rec in records] == [answer["event_id"]]
    published = codec.decode(records[0].value or b"")
    assert published.source == event.source
    assert published.subject == event.subject
    assert published.payload == event.payload


def test_a_replayed_event_id_is_refused_and_published_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    event, body = a_penalty(4)
    other_id = "5d6c2a4e-9a0b-4c51-8d3e-6f1a2b3c4d5e"
    other_body = {**body, "event_id": other_id}
    headers = gateway.key(event.source)
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        first = gateway.http.post("/v1/events", json=body, headers=headers)
        assert first.status_code == 202, first.text
        assert first.json()["event_id"] == str(event.event_id)
        again = gateway.http.post("/v1/events", json=body, headers=headers)
        assert again.status_code == 409, again.text
        assert (again.json()["error"], again.json()["field"]) == ("duplicate.event_id", "event_id")
        # In a batch: the replayed item is named, and nothing of the batch is published.
        batch = gateway.http.post("/v1/events:batch", json=[other_body, body], headers=headers)
        assert (batch.status_code, batch.json()["field"]) == (409, "1.event_id")
        canonical = wait_for(gateway.settings, "events.penalty", 1)
        dead = read(gateway.settings, "deadletter", idle=0.5)
    assert [r.headers["event_id"] for r in canonical] == [str(event.event_id)]
    assert dead == []
    assert other_id not in {r.headers["event_id"] for r in canonical}


def test_malformed_json_is_refused_as_schema_decode(gateway: Gateway) -> None:
    r = gateway.http.post(
        "/v1/events",
        content=b'{"event_type": "penalty.imposed",',
        headers={**gateway.key("ks.enforcement.huaqiao"), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"] == "schema.decode"
    assert read(gateway.settings, "ingress", idle=0.3) == []


def test_hostile_requests_get_a_precise_4xx_and_no_traceback(
    gateway: Gateway, tmp_path: Path
) -> None:
    """What an attacker found against a running gateway: each used to be a 500 with a full
    traceback in the log (verify without a key), or FastAPI's ``{"detail": [...]}``."""
    event, body = a_penalty(6)
    headers = gateway.key(event.source)
    deep = b"[" * 100_000 + b"]" * 100_000
    overflow = {**body, "occurred_at": "9999-12-31T23:59:59-01:00"}
    bidi = {**body, "payload": {**body["payload"], "case_number": "昆花综执罚决字\u202e号3210第"}}
    answers = {
        "deep event": gateway.http.post("/v1/events", content=deep, headers=headers),
        "overflow": gateway.http.post("/v1/events", json=overflow, headers=headers),
        "bidi": gateway.http.post("/v1/events", json=bidi, headers=headers),
        "query": gateway.http.get("/v1/inbox?cursor=-1", headers=headers),
        "route": gateway.http.get("/v1/nowhere", headers=headers),
        "method": gateway.http.delete("/v1/events", headers=headers),
    }
    got = {k: (r.status_code, r.json()["error"], r.json()["field"]) for k, r in answers.items()}
    assert got == {
        "deep event": (400, "schema.too_deep", None),
        "overflow": (422, "schema.date_range", "occurred_at"),
        "bidi": (422, "schema.text", "payload.case_number"),
        "query": (422, "query.invalid", "cursor"),
        "route": (404, "route.unknown", None),
        "method": (405, "route.method", None),
    }  # fmt: skip
    keys = gateway.settings.data_dir / "keys"  # as a worker publishes them
    keys.mkdir(parents=True, exist_ok=True)
    Signer.generate("ks-bus-1").save_public_key(keys / "ks-bus-1.pub")
    verify = gateway.http.post("/v1/certificates/verify", content=deep)  # no key needed
    assert verify.status_code == 200, verify.text
    assert verify.json()["reason"] == "certificate.malformed"
    assert read(gateway.settings, "ingress", idle=0.3) == []
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_a_field_of_the_wrong_type_is_named(gateway: Gateway) -> None:
    event, body = a_penalty(5)
    body["payload"]["amount"] = {"yuan": 5000}
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key(event.source))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "schema.validation"
    assert r.json()["field"] == "payload.amount"
    assert "payload.amount" in r.json()["message"]
    assert read(gateway.settings, "ingress", idle=0.3) == []


def test_an_unknown_field_is_refused(gateway: Gateway) -> None:
    event, body = a_penalty(6)
    body["payload"]["discount"] = "10%"
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key(event.source))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "payload.discount"
    assert r.json()["error"] == "schema.validation"


def test_an_unknown_event_type_is_refused(gateway: Gateway) -> None:
    event, body = a_penalty(7)
    body["event_type"] = "penalty.forgiven"
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key(event.source))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "schema.unknown_type"
    assert r.json()["field"] == "event_type"


def test_a_huge_body_is_refused_before_it_is_read(gateway: Gateway) -> None:
    event, body = a_penalty(8)
    body["payload"]["violation"] = "x" * (gateway.settings.max_event_bytes + 10)
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key(event.source))
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "size.too_large"
    assert read(gateway.settings, "ingress", idle=0.3) == []


def test_another_departments_event_type_is_forbidden(gateway: Gateway) -> None:
    rng = random.Random(9)
    body = json.loads(codec.to_json(registered(enterprise(rng), rng)))
    bureau = town_code("Huaqiao")
    del body["source"]
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key(bureau))
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "auth.event_type"
    assert read(gateway.settings, "ingress", idle=0.3) == []


def test_a_spoofed_source_is_forbidden(gateway: Gateway) -> None:
    event, body = a_penalty(10)
    other = "ks.enforcement.zhoushi" if event.source != "ks.enforcement.zhoushi" else "ks.amr"
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key(other))
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "auth.source_mismatch"
    assert r.json()["field"] == "source"
    assert read(gateway.settings, "ingress", idle=0.3) == []


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer gk_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "revoked"],
)
def test_a_missing_invalid_or_revoked_key_is_unauthorised(
    gateway: Gateway, authorization: str | None
) -> None:
    event, body = a_penalty(11)
    headers = {}
    if authorization == "revoked":
        headers = gateway.key(event.source)
        key_id = headers["Authorization"].split()[1].split(".")[0]
        revoke = subprocess.run(
            [sys.executable, "-m", "bus.cli.gateway", "keys", "revoke", key_id],
            env={**os.environ, **settings_env(gateway.settings)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoke.returncode == 0, revoke.stderr
    elif authorization:
        headers = {"Authorization": authorization}
    r = gateway.http.post("/v1/events", json=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "auth.key"
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_batch_with_one_bad_item_publishes_nothing(gateway: Gateway) -> None:
    bodies = [a_penalty(seed)[1] for seed in (20, 21, 22)]
    bureau = bodies[0]["source"]
    for b in bodies:
        b["source"] = bureau
        b["payload"]["agency"] = bureau
    bodies[1]["subject"] = "91350100M000100Y44"  # wrong check character
    r = gateway.http.post("/v1/events:batch", json=bodies, headers=gateway.key(bureau))
    assert r.status_code == 422, r.text
    items = r.json()["items"]
    assert [(i["index"], i["field"]) for i in items] == [(1, "subject")]
    assert items[0]["error"] == "schema.uscc"
    assert read(gateway.settings, "ingress", idle=0.5) == []


def test_a_good_batch_is_published_in_order(gateway: Gateway) -> None:
    bodies = [a_penalty(seed)[1] for seed in (30, 31)]
    bureau = bodies[0]["source"]
    for b in bodies:
        b["source"] = bureau
        b["payload"]["agency"] = bureau
    r = gateway.http.post("/v1/events/batch", json=bodies, headers=gateway.key(bureau))
    assert r.status_code == 202, r.text
    assert r.json()["event_ids"] == [b["event_id"] for b in bodies]
    ingress = read(gateway.settings, "ingress")
    assert sorted(rec.headers["event_id"] for rec in ingress) == sorted(r.json()["event_ids"])
    assert all((rec.value or b"")[:1] == b"\x00" for rec in ingress)  # Avro, not JSON


def test_openapi_lists_the_routes(gateway: Gateway) -> None:
    r = gateway.http.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["info"]["title"]
    assert spec["info"]["description"]
    for path in (
        "/v1/events",
        "/v1/events:batch",
        "/v1/certificates/{serial}",
        "/v1/certificates/verify",
        "/v1/reports/{serial}",
        "/v1/reports/verify",
        "/v1/decisions/verify",
        "/healthz",
    ):
        assert path in spec["paths"], path
    assert gateway.http.get("/docs").status_code == 200


def test_the_asyncapi_document_is_served_without_a_key(gateway: Gateway) -> None:
    from bus.streaming.asyncapi import asyncapi_document

    r = gateway.http.get("/asyncapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    spec = r.json()
    assert spec == json.loads(json.dumps(asyncapi_document(gateway.settings)))
    assert spec["asyncapi"] == "3.0.0"
    prefix = gateway.settings.topic_prefix
    assert spec["channels"]["ingress"]["address"] == f"{prefix}.ingress"
    assert spec["servers"]["kafka"]["host"] == ",".join(gateway.settings.bootstrap_servers)


def test_a_certificate_is_fetched_and_verified(gateway: Gateway, tmp_path: Path) -> None:
    rng = random.Random(71)
    firm = enterprise(rng)
    reg = json.loads(codec.to_json(registered(firm, rng)))
    request = model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": date(2025, 1, 1), "period_end": date(2025, 12, 31),
                 "purpose": "bidding", "requested_by": "ks.finance", "applicant": "赵敏"},
    )  # fmt: skip
    finance = gateway.key("ks.finance")
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        assert gateway.http.post("/v1/events", json=reg, headers=gateway.key("ks.amr")).is_success
        r = gateway.http.post("/v1/events", content=codec.to_json(request), headers=finance)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        issued: list[Record] = []
        while not issued and time.monotonic() < deadline:
            records = read(gateway.settings, "events.certificate", idle=0.5)
            issued = [x for x in records if x.headers["event_type"] == "certificate.issued"]
    assert issued, "no certificate was issued"
    serial = codec.decode(issued[0].value or b"").payload.serial
    got = gateway.http.get(f"/v1/certificates/{serial}", headers=finance)
    assert got.status_code == 200, got.text
    document = got.json()
    assert document["uscc"] == firm.uscc
    assert document["serial"] == serial
    assert gateway.http.get(f"/v1/certificates/{serial}").status_code == 401
    missing = gateway.http.get("/v1/certificates/KS-2026-000000000000", headers=finance)
    assert missing.status_code == 404
    ok = gateway.http.post("/v1/certificates/verify", json=document)
    assert ok.status_code == 200
    assert ok.json()["valid"] is True
    assert ok.json()["uscc"] == firm.uscc
    forged = {**document, "result": "record_found" if document["result"] == "clean" else "clean"}
    bad = gateway.http.post("/v1/certificates/verify", json=forged)
    assert bad.status_code == 200
    assert bad.json() | {"message": ""} == {
        "valid": False,
        "reason": "certificate.bad_signature",
        "message": "",
    }


def test_docs_work_offline_from_the_gateways_own_assets(gateway: Gateway) -> None:
    import re

    page = gateway.http.get("/docs")
    assert page.status_code == 200, page.text
    html = page.text
    assert not re.search(r"https?:|//[a-z]", html), html  # nothing from a CDN or elsewhere
    referenced = [a or b for a, b in re.findall(r"""(?:src|href)="([^"]+)"|url: '([^']+)'""", html)]
    assert {u.rsplit(".", 1)[-1] for u in referenced} >= {"js", "css", "json"}, html
    for url in referenced:
        assert url.startswith("/"), url
        r = gateway.http.get(url)
        assert r.status_code == 200, (url, r.status_code)
        assert r.content, url
    assert (
        "SwaggerUIBundle" in gateway.http.get(next(u for u in referenced if u.endswith(".js"))).text
    )
    assert gateway.http.get("/redoc").status_code == 404  # ReDoc would load from a CDN
