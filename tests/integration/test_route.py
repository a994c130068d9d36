"""Inboxes, end to end: a real worker routes canonical events to department inboxes.

Subscriptions (the shipped ``bus/data/subscriptions.yaml``) decide who receives an event;
tasks, escalations and decisions reach their departments by construction. Every check reads
the inbox topics the worker wrote.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import aclosing
from datetime import date
from pathlib import Path

import pytest

from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered, town_code
from bus.settings import Settings
from bus.streaming.client import Record, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.topics import inbox_topic
from tests.integration.test_correlate import answer, outputs, publish, request

pytestmark = pytest.mark.integration
codec = EventCodec()


def inbox(
    settings: Settings, department: str, n: int | None = None, idle: float = 2.0
) -> list[Record]:
    """The records in a department's inbox (waits for ``n``, or until quiet for ``idle``)."""
    quiet = idle if n is None else 60  # a busy worker may be quiet for seconds before the first

    async def go() -> list[Record]:
        topic = inbox_topic(settings, department)
        async with aclosing(read_topic(settings, topic, idle=quiet, max_seconds=60, until=n)) as rs:
            return [r async for r in rs]

    return asyncio.run(go())


def kinds(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.headers["event_type"], r.headers["bus.route"]) for r in records]


def test_a_penalty_reaches_the_town_of_the_enterprise_and_the_credit_office(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(61)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    town = firm.town.lower()
    other = "ks.town.lujia" if town != "lujia" else "ks.town.jinxi"
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), fine])
        credit = inbox(settings, "ks.credit", 1)
        town_inbox = inbox(settings, f"ks.town.{town}", 2)
        elsewhere = inbox(settings, other, idle=1.0)
    assert kinds(credit) == [("penalty.imposed", "credit-penalties")]
    assert codec.decode(credit[0].value or b"") == fine
    assert credit[0].key == firm.uscc.encode()
    # The town government: its opening-a-business task, then the penalty by subscription.
    assert sorted(kinds(town_inbox)) == [
        ("penalty.imposed", f"{town}-town-penalties"),
        ("task.created", "notify"),
    ]
    assert [r.headers["event_type"] for r in elsewhere] == []


def test_a_penalty_before_the_registration_waits_for_the_town_to_be_known(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(62)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    town = f"ks.town.{firm.town.lower()}"
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [fine])
        assert inbox(settings, "ks.credit", 1)  # no condition on the enterprise: at once
        assert inbox(settings, town, idle=1.5) == []  # town unknown: not guessed
        publish(settings, [registered(firm, rng)])
        delivered = inbox(settings, town, 2)
    assert sorted(kinds(delivered)) == [
        ("penalty.imposed", f"{firm.town.lower()}-town-penalties"),
        ("task.created", "notify"),
    ]
    assert codec.decode(next(r.value for r in delivered if r.headers["event_type"] ==
                             "penalty.imposed") or b"").event_id == fine.event_id  # fmt: skip


def test_tasks_answers_and_decisions_reach_the_departments_concerned(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(63)
    firm = enterprise(rng)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    bureau = town_code(firm.town)
    intruder = (
        "ks.enforcement.jinxi" if bureau != "ks.enforcement.jinxi" else "ks.enforcement.lujia"
    )
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), fine])
        assert inbox(settings, "ks.credit", 1)
        req = request(firm)
        publish(settings, [req])
        [task] = outputs(settings, "task", "task.created", 1, "compliance-certificate")
        publish(settings, [answer(task, "task.completed", intruder, outcome="cleared")])
        publish(settings, [answer(task, "task.completed", bureau, outcome="confirmed")])
        bureau_inbox = inbox(settings, bureau, 2)
        finance = inbox(settings, "ks.finance", 1)
        intruder_inbox = inbox(settings, intruder, idle=1.0)
    # The bureau: its review task, then its own answer once the bus has taken it.
    assert kinds(bureau_inbox) == [("task.created", "notify"), ("task.completed", "notify")]
    assert codec.decode(bureau_inbox[0].value or b"").payload.task_id == task.payload.task_id
    # The Financial Office, which asked: the signed certificate.
    [issued] = [codec.decode(r.value or b"") for r in finance]
    assert issued.event_type == "certificate.issued"
    assert issued.causation_id == req.event_id
    assert issued.payload.result == "record_found"
    # A department that answered someone else's task gets nothing (its answer is a dead letter).
    assert intruder_inbox == []
