"""Departments on the gateway: inboxes with cursors, their tasks, and the cases they took part in.

A real worker routes and decides; a real gateway process answers over HTTP. The flow is the
tell-us-once matter: market regulation registers an enterprise, the tax bureau finds its task
in its inbox, accepts and completes it through the gateway, and traces the case.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, registered
from bus.streaming.codec import EventCodec
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e
codec = EventCodec()


def until(check: Any, timeout: float = 20.0) -> Any:
    """Call ``check`` until it returns something truthy (the bus is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def register(gateway: Gateway, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    body = json.loads(codec.to_json(registered(enterprise(rng), rng)))
    r = gateway.http.post("/v1/events", json=body, headers=gateway.key("ks.amr"))
    assert r.status_code == 202, r.text
    return body


def test_a_department_reads_its_inbox_and_answers_its_task(
    gateway: Gateway, tmp_path: Path
) -> None:
    tax, hrss = gateway.key("ks.tax"), gateway.key("ks.hrss")
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        reg = register(gateway, 71)
        page = gateway.http.get("/v1/inbox", params={"wait": 20}, headers=tax).json()
        [item] = page["items"]
        assert item["route"] == "notify"
        assert item["event"]["event_type"] == "task.created"
        assert item["event"]["subject"] == reg["subject"]
        task_id = item["event"]["payload"]["task_id"]
        assert page["next_cursor"] == item["cursor"] + 1

        # Resuming from the cursor: nothing new yet, and a long poll waits before saying so.
        t0 = time.monotonic()
        again = gateway.http.get(
            "/v1/inbox", params={"cursor": page["next_cursor"], "wait": 1}, headers=tax
        ).json()
        assert again["items"] == []
        assert time.monotonic() - t0 >= 0.9
        assert again["next_cursor"] == page["next_cursor"]

        [task] = gateway.http.get("/v1/tasks", params={"state": "open"}, headers=tax).json()[
            "tasks"
        ]
        assert (task["task_id"], task["matter"], task["state"]) == (
            task_id, "opening-a-business", "open"
        )  # fmt: skip

        # Another department cannot see or answer it.
        assert gateway.http.get("/v1/tasks", headers=hrss).json()["tasks"][0]["task_id"] != task_id
        r = gateway.http.post(f"/v1/tasks/{task_id}/accept", headers=hrss)
        assert (r.status_code, r.json()["error"]) == (404, "task.unknown")

        r = gateway.http.post(f"/v1/tasks/{task_id}/accept", json={"note": "已受理"}, headers=tax)
        assert r.status_code == 202, r.text
        assert until(lambda: gateway.http.get(
            "/v1/tasks", params={"state": "accepted"}, headers=tax).json()["tasks"])  # fmt: skip
        r = gateway.http.post(
            f"/v1/tasks/{task_id}/complete", json={"outcome": "registered"}, headers=tax
        )
        assert r.status_code == 202, r.text
        done = until(lambda: gateway.http.get(
            "/v1/tasks", params={"state": "completed"}, headers=tax).json()["tasks"])  # fmt: skip
        assert [(t["task_id"], t["outcome"]) for t in done] == [(task_id, "registered")]
        assert [h["event"] for h in done[0]["history"]] == [
            "task.created", "task.accepted", "task.completed"
        ]  # fmt: skip
        r = gateway.http.post(f"/v1/tasks/{task_id}/reject", json={"reason": "x"}, headers=tax)
        assert (r.status_code, r.json()["error"]) == (409, "task.closed")

        # The whole inbox again from the start, in order: the task and the two confirmations.
        items = gateway.http.get("/v1/inbox", headers=tax).json()["items"]
        assert [i["event"]["event_type"] for i in items] == [
            "task.created", "task.accepted", "task.completed"
        ]  # fmt: skip
        assert [i["cursor"] for i in items] == sorted(i["cursor"] for i in items)

        # The case, across departments, for a department that takes part; others cannot tell
        # it from a case that does not exist.
        case = gateway.http.get(f"/v1/cases/{reg['correlation_id']}", headers=tax)
        assert case.status_code == 200, case.text
        kinds = [s["event_type"] for s in case.json()["steps"]]
        assert kinds[0] == "enterprise.registered"
        assert kinds.count("task.created") == 4
        assert kinds[-2:] == ["task.accepted", "task.completed"]
        outsider = gateway.http.get(
            f"/v1/cases/{reg['correlation_id']}", headers=gateway.key("ks.finance")
        )
        unknown = gateway.http.get("/v1/cases/no-such-case", headers=tax)
        assert (outsider.status_code, outsider.json()["error"]) == (404, "case.not_found")
        assert (unknown.status_code, unknown.json()["error"]) == (404, "case.not_found")


def test_bad_task_requests_name_what_is_wrong(gateway: Gateway) -> None:
    tax = gateway.key("ks.tax")
    r = gateway.http.get("/v1/tasks", params={"state": "lost"}, headers=tax)
    assert (r.status_code, r.json()["field"]) == (422, "state")
    r = gateway.http.post("/v1/tasks/task-0123456789abcdef/approve", headers=tax)
    assert (r.status_code, r.json()["field"]) == (404, "action")
    r = gateway.http.post("/v1/tasks/task-0123456789abcdef/accept", content=b"{", headers=tax)
    assert (r.status_code, r.json()["error"]) == (400, "schema.decode")
    r = gateway.http.post("/v1/tasks/task-0123456789abcdef/accept", headers=tax)
    assert (r.status_code, r.json()["field"]) == (404, "task_id")
    r = gateway.http.get("/v1/inbox", params={"cursor": -1}, headers=tax)
    assert r.status_code == 422
    assert gateway.http.get("/v1/inbox").status_code == 401


def test_metrics_count_requests_by_route_template(gateway: Gateway) -> None:
    tax = gateway.key("ks.tax")
    gateway.http.post("/v1/tasks/task-0123456789abcdef/accept", headers=tax)
    gateway.http.post("/v1/tasks/task-fedcba9876543210/accept", headers=tax)
    gateway.http.get("/v1/inbox", headers=tax)
    text = gateway.http.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    key = ("route", "/v1/tasks/{task_id}/{action}"), ("method", "POST"), ("status", "404")
    assert samples[("bus_gateway_requests_total", tuple(sorted(key)))] == 2
    assert any(n == "bus_gateway_request_seconds_count" for n, _ in samples)
    assert "task-0123456789abcdef" not in text  # ids never become labels


def test_health_says_whether_a_worker_is_consuming(gateway: Gateway, tmp_path: Path) -> None:
    assert gateway.http.get("/healthz").json() == {
        "status": "degraded", "broker": "ok", "worker": "down"
    }  # fmt: skip
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        assert gateway.http.get("/healthz").json()["worker"] == "ok"
