"""The gateway's answers to hostile requests, in process: the app behind its HTTP client.

No broker: every request here is answered before anything is published (the lifespan that
starts the Kafka client does not run), which is the point — these are refused at the door.
Each answer is a 4xx with the documented body (``error``, ``field``, ``message``), never a
500 and never the framework's ``{"detail": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.domain.certificates import Signer
from bus.edge.gateway.app import create_app
from bus.edge.gateway.keys import issue_key, keys_path
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from bus.streaming.metrics import GatewayMetrics
from tests.unit.eventdata import build

DEPARTMENT = "ks.enforcement.huaqiao"
codec = EventCodec()


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path)
    (tmp_path / "keys").mkdir()
    Signer.generate("ks-bus-1").save_public_key(tmp_path / "keys" / "ks-bus-1.pub")
    app = create_app(settings, GatewayMetrics())
    key = issue_key(keys_path(tmp_path), DEPARTMENT)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        yield client


def penalty(**changes: Any) -> dict[str, Any]:
    body = json.loads(codec.to_json(build("penalty.imposed")))
    payload = {**body["payload"], **changes.pop("payload", {})}
    return {**body, **changes, "payload": payload}


def error_of(r: httpx.Response, status: int) -> tuple[str, str | None]:
    """``(error, field)`` after checking the status and that the body is the documented one."""
    assert r.status_code == status, r.text
    body = r.json()
    assert {"error", "field", "message"} <= set(body), body
    assert "detail" not in body
    return body["error"], body["field"]


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- bodies the parser must never see ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events:batch"])
async def test_deep_json_is_refused_as_too_deep(http: httpx.AsyncClient, path: str) -> None:
    r = await http.post(path, content=deep(100_000))
    assert error_of(r, 400) == ("schema.too_deep", None)
    assert "32 levels" in r.json()["message"]


async def test_deep_json_inside_an_event_is_refused_as_too_deep(http: httpx.AsyncClient) -> None:
    text = json.dumps(penalty(payload={"case_number": "@"})).replace('"@"', deep(5000).decode())
    r = await http.post("/v1/events", content=text)
    assert error_of(r, 400) == ("schema.too_deep", None)


async def test_verify_answers_deep_json_without_a_key(http: httpx.AsyncClient) -> None:
    """Anyone may call verify: 100 000 brackets used to be an unauthenticated 500."""
    r = await http.post(
        "/v1/certificates/verify", content=deep(100_000), headers={"Authorization": ""}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["valid"], r.json()["reason"]) == (False, "certificate.malformed")


async def test_verify_answers_an_overflowing_instant(http: httpx.AsyncClient) -> None:
    doc = {"format": "gov.ks.bus.certificate/1", "issued_at": "9999-12-31T23:59:59-01:00"}
    r = await http.post("/v1/certificates/verify", json=doc)
    assert r.status_code == 200, r.text
    assert r.json()["reason"] == "certificate.malformed"


# --- events with hostile values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"occurred_at": "9999-12-31T23:59:59-01:00"}, "schema.date_range", "occurred_at"),
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "schema.date_range", "occurred_at"),
        ({"occurred_at": "2100-01-01T00:00:00Z"}, "schema.date_range", "occurred_at"),
        ({"payload": {"decided_on": "0001-01-01"}}, "schema.date_range", "payload.decided_on"),
        ({"payload": {"decided_on": "2026-03-03"}}, "schema.date_order", "payload.decided_on"),
        ({"payload": {"case_number": "昆花\u202e号3210第"}}, "schema.text", "payload.case_number"),
        ({"payload": {"case_number": "昆花\x00〔2026〕"}}, "schema.text", "payload.case_number"),
        ({"payload": {"violation": "扬尘\x1b[2J"}}, "schema.text", "payload.violation"),
        ({"correlation_id": "case\u2066-1"}, "schema.text", "correlation_id"),
    ],
)
async def test_hostile_values_are_422_with_a_precise_reason(
    http: httpx.AsyncClient, changes: dict[str, Any], error: str, field: str
) -> None:
    r = await http.post("/v1/events", json=penalty(**changes))
    assert error_of(r, 422) == (error, field)


async def test_a_batch_names_each_hostile_item(http: httpx.AsyncClient) -> None:
    items = [penalty(), penalty(occurred_at="9999-12-31T23:59:59-01:00")]
    r = await http.post("/v1/events:batch", json=items)
    assert error_of(r, 422) == ("batch.invalid", None)
    [bad] = r.json()["items"]
    assert (bad["index"], bad["error"], bad["field"]) == (1, "schema.date_range", "occurred_at")


@pytest.mark.parametrize("declared", ["²", "9" * 5000])
async def test_a_strange_content_length_is_not_a_crash(
    http: httpx.AsyncClient, declared: str
) -> None:
    """Servers reject these before the app; the app does not rely on it."""
    request = http.build_request("POST", "/v1/events", content=b"{}")
    request.headers["content-length"] = declared
    r = await http.send(request)
    assert r.status_code < 500, r.text


# --- the framework's own errors, in the same body ------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("cursor=-1", "cursor"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("wait=31", "wait"),
        ("wait=nan", "wait"),
        ("cursor=1&limit=1001", "limit"),
    ],
)
async def test_a_bad_query_parameter_is_query_invalid(
    http: httpx.AsyncClient, query: str, field: str
) -> None:
    r = await http.get(f"/v1/inbox?{query}")
    assert error_of(r, 422) == ("query.invalid", field)
    assert r.json()["message"].startswith(f"{field}: ")


async def test_two_bad_parameters_name_the_first_and_count_the_rest(
    http: httpx.AsyncClient,
) -> None:
    r = await http.get("/v1/inbox?cursor=-1&limit=0")
    assert error_of(r, 422) == ("query.invalid", "cursor")
    assert r.json()["message"].endswith("(+1 more)")


async def test_an_unknown_route_is_route_unknown(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/nothing/here")
    assert error_of(r, 404) == ("route.unknown", None)


async def test_a_wrong_method_is_route_method_with_allow(http: httpx.AsyncClient) -> None:
    r = await http.put("/v1/events", json={})
    assert error_of(r, 405) == ("route.method", None)
    assert r.headers["allow"] == "POST"


async def test_the_documented_errors_are_unchanged(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/events", content=b"{not json")
    assert error_of(r, 400) == ("schema.decode", None)
    r = await http.get("/v1/tasks?state=lost")
    assert error_of(r, 422) == ("query.invalid", "state")
    r = await http.get("/v1/inbox", headers={"Authorization": "Bearer nope"})
    assert error_of(r, 401) == ("auth.key", None)
