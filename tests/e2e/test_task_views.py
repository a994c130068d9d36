"""Tasks seen three ways — a department's ``GET /v1/tasks``, ``bus status`` and the worker's
``bus_tasks`` gauge — tell the same story, and an answered opinion closes its task.

A real worker decides, a real gateway answers over HTTP; the scenario is the demo's: a
registration (tell us once), a parallel approval answered by opinions, and tasks accepted
and completed through the gateway.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bus.dev.brokers import free_port
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, registered
from bus.domain.matters import load_matters
from bus.domain.tasks import TASK_STATES, by_state
from bus.edge.status import collect
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.streaming.client import BusClient
from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway_inbox import until
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.e2e
APPLICATION = "KS-SP-2026-000777"


def publish(gateway: Gateway, events: list[Envelope]) -> None:
    async def go() -> None:
        async with BusClient(gateway.settings) as client:
            await client.publish_many(events)

    asyncio.run(go())


def tasks(gateway: Gateway, department: str, **params: str) -> list[dict[str, Any]]:
    r = gateway.http.get("/v1/tasks", params=params, headers=gateway.key(department))
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


def opinion(department: str, subject: str, verdict: str = "approve") -> Envelope:
    return model_for("approval.opinion")(
        event_type="approval.opinion", source=department, subject=subject,
        payload={"application_number": APPLICATION, "opinion": verdict, "note": "同意"},
    )  # fmt: skip


def scenario(gateway: Gateway, seed: int) -> tuple[str, list[str]]:
    """Register an enterprise and ask three offices about its permit; (USCC, asked)."""
    rng = random.Random(seed)
    firm = enterprise(rng)
    asked = ["ks.tax", "ks.hrss", f"ks.town.{firm.town.lower()}"]
    application = model_for("approval.requested")(
        event_type="approval.requested", source="ks.approval", subject=firm.uscc,
        payload={"application_number": APPLICATION, "title": "建设工程施工许可",
                 "departments": asked, "applicant": "王芳", "submitted_on": date(2026, 11, 2)},
    )  # fmt: skip
    publish(gateway, [registered(firm, rng), application])
    return firm.uscc, asked


@pytest.mark.timeout(180)
def test_an_opinion_completes_its_task_and_the_decision_leaves_none_open(
    gateway: Gateway, tmp_path: Path
) -> None:
    with WorkerProcess(gateway.settings, tmp_path / "worker.log"):
        uscc, asked = scenario(gateway, 61)
        assert until(lambda: len(tasks(gateway, "ks.tax")) == 2, 60)  # opening + opinion
        publish(gateway, [opinion(d, uscc) for d in asked])

        def decided() -> bool:
            r = gateway.http.get("/v1/inbox", headers=gateway.key("ks.tax")).json()
            kinds = [i["event"]["event_type"] for i in r["items"]]
            return "approval.decided" in kinds and "task.completed" in kinds

        assert until(decided, 60)
        mine = {t["matter"]: t for t in tasks(gateway, "ks.tax")}
        still_open = tasks(gateway, "ks.tax", state="open")
    opinion_task = mine["parallel-approval"]
    assert opinion_task["state"] == "completed"
    assert opinion_task["outcome"] == "approve"
    assert [h["event"] for h in opinion_task["history"]] == ["task.created", "task.completed"]
    assert [t["matter"] for t in still_open] == ["opening-a-business"]


@pytest.mark.timeout(240)
def test_gateway_status_and_gauge_count_the_same_tasks(gateway: Gateway, tmp_path: Path) -> None:
    s = gateway.settings.model_copy(update={"metrics_port": free_port()})
    with WorkerProcess(s, tmp_path / "worker.log"):
        uscc, asked = scenario(gateway, 62)
        assert until(lambda: len(tasks(gateway, "ks.hrss")) == 2, 60)
        publish(gateway, [opinion(d, uscc) for d in asked[:2]])  # one opinion still missing
        [housing] = until(lambda: tasks(gateway, "ks.housingfund"), 60)
        r = gateway.http.post(f"/v1/tasks/{housing['task_id']}/complete",
                              json={"outcome": "opened"},
                              headers=gateway.key("ks.housingfund"))  # fmt: skip
        assert r.status_code == 202, r.text
        [tax_opening] = [t for t in tasks(gateway, "ks.tax") if t["matter"] != "parallel-approval"]
        r = gateway.http.post(f"/v1/tasks/{tax_opening['task_id']}/accept",
                              headers=gateway.key("ks.tax"))  # fmt: skip
        assert r.status_code == 202, r.text
        departments = sorted({"ks.tax", "ks.hrss", "ks.housingfund", "ks.amr", *asked})
        expected = Counter(open=3, accepted=1, completed=3)  # 4 opening + 3 opinion tasks

        def from_gateway() -> Counter[tuple[str, str, str]]:
            return Counter(
                (t["matter"], d, t["state"]) for d in departments for t in tasks(gateway, d)
            )

        def from_gauge() -> Counter[tuple[str, str, str]]:
            samples = scrape(s.metrics_port)
            return Counter({
                (dict(labels)["matter"], dict(labels)["department"], dict(labels)["state"]): int(v)
                for (name, labels), v in samples.items() if name == "bus_tasks" and v
            })  # fmt: skip

        assert until(lambda: by_state(from_gateway()) == expected, 60), from_gateway()
        assert until(lambda: by_state(from_gauge()) == expected, 30), from_gauge()
        gateway_view, gauge = from_gateway(), from_gauge()
        status = asyncio.run(collect(s))
        samples = scrape(s.metrics_port)
    assert status.task_counts == gateway_view == gauge
    assert status.tasks == expected
    assert list(status.tasks) == list(TASK_STATES)  # every state, zeros included
    matters_reported = {dict(labels)["matter"] for (name, labels) in samples if name == "bus_tasks"}
    assert matters_reported == {m.name for m in load_matters().values()}
