"""The compliance certificate, end to end through a real broker and ``bus worker``.

Department events go in through ingress; what comes out on the canonical topics is checked:
a clean enterprise gets a certificate that verifies with the worker's public key; one with
an active penalty in the period gets a review task for the bureau instead; revoked and
repaired penalties and penalties outside the period do not count; a request that arrives
before the registration waits for it.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import aclosing
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from bus.dev.processes import WorkerProcess
from bus.dev.samples import TOWNS, Enterprise, enterprise, penalty, registered
from bus.domain.certificates import SignedCertificate, Verifier
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.client import BusClient, read_topic
from bus.streaming.codec import EventCodec
from tests.conftest import TestBroker
from tests.integration.test_ingest import PacedPublisher

pytestmark = pytest.mark.integration
codec = EventCodec()
CERTIFICATE = "compliance-certificate"


def publish(settings: Settings, events: list[Envelope]) -> float:
    async def go() -> None:
        async with BusClient(settings) as client:
            await client.publish_many(events)

    asyncio.run(go())
    return time.time()


def outputs(
    settings: Settings,
    family: str,
    event_type: str,
    n: int,
    matter: str | None = None,
    *,
    wait: float = 60.0,
    quiet: float | None = None,
) -> list[Envelope]:
    """Wait for ``n`` events of ``event_type`` on a canonical topic (or time out with fewer).

    Returns as soon as ``n`` are there; gives up after ``wait`` seconds, or as many quiet
    ones: checks that something does *not* come pass a short ``wait``. With ``quiet``, once
    ``n`` are there it reads on until the topic has been quiet that long and returns every
    match, so a test sees a duplicate without waiting out ``wait``.
    ``matter`` keeps only tasks of that matter (a registration also opens other cases).
    """

    async def go(idle: float, until: int | None) -> list[Envelope]:
        found = []
        topic = settings.topic(f"events.{family}")
        reading = read_topic(settings, topic, idle=idle, max_seconds=wait)
        async with aclosing(reading) as records:
            async for r in records:
                if r.headers.get("event_type") == event_type:
                    event = codec.decode(r.value or b"")
                    if matter is not None and getattr(event.payload, "matter", None) != matter:
                        continue
                    found.append(event)
                    if until is not None and len(found) >= until:
                        break
        return found

    found = asyncio.run(go(wait, n))
    if quiet is None or len(found) < n:
        return found
    while len(everything := asyncio.run(go(quiet, None))) < len(found):
        pass  # a first fetch slower than ``quiet``: read again
    return everything


def request(
    firm: Enterprise, start: date = date(2025, 1, 1), end: date = date(2026, 12, 31)
) -> Envelope:
    return model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=firm.uscc,
        payload={"period_start": start, "period_end": end, "purpose": "ipo",
                 "requested_by": "ks.finance", "applicant": "张伟"},
    )  # fmt: skip


def change(event: Envelope, event_type: str, source: str, payload: dict) -> Envelope:
    return model_for(event_type)(
        event_type=event_type, source=source, subject=event.subject, payload=payload
    )


@pytest.fixture
def firm() -> Enterprise:
    return enterprise(random.Random(41))


def test_clean_enterprise_gets_a_verifiable_certificate_dated_by_its_request(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    rng = random.Random(42)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng)])
        assert outputs(settings, "enterprise", "enterprise.registered", 1)
        req = request(firm)
        sent = publish(settings, [req])
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
    assert issued.causation_id == req.event_id
    assert issued.correlation_id == req.correlation_id
    assert issued.source == "ks.bus"
    # dated by the bus accepting the request, not by the clock (how fast: bench/pipeline.py)
    assert abs(issued.occurred_at.timestamp() - sent) < 30
    cert = SignedCertificate.from_payload(issued.payload, uscc=firm.uscc)
    Verifier.from_paths([settings.data_dir / "keys" / f"{settings.signing_key_id}.pub"]).verify(
        cert
    )
    assert cert.result == "clean"
    assert cert.enterprise_name == firm.name
    assert cert.record == []
    assert (cert.period_start, cert.period_end) == (date(2025, 1, 1), date(2026, 12, 31))


def test_active_penalty_in_the_period_opens_a_review_task_for_the_bureau(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    rng = random.Random(43)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), fine])
        assert outputs(settings, "penalty", "penalty.imposed", 1)
        folded(settings, "penalty", 1)  # the penalty is folded in before the request comes
        req = request(firm)
        publish(settings, [req])
        [task] = outputs(settings, "task", "task.created", 1, CERTIFICATE)
        issued = outputs(settings, "certificate", "certificate.issued", 1, wait=3)
    assert issued == []
    assert task.payload.assignee == fine.payload.agency
    assert task.payload.evidence == [fine.payload.case_number]
    assert task.payload.matter == "compliance-certificate"
    assert task.payload.supervisor == "ks.finance"
    assert task.payload.working_days == 5
    assert task.payload.due_at > task.occurred_at
    assert task.causation_id == req.event_id


@pytest.mark.parametrize("what", ["revoked", "repaired", "outside"])
def test_revoked_repaired_or_out_of_period_penalties_do_not_count(
    settings: Settings, tmp_path: Path, firm: Enterprise, what: str
) -> None:
    rng = random.Random(44)
    decided = date(2024, 6, 1) if what == "outside" else date(2026, 4, 1)
    fine = penalty(firm, rng, decided_on=decided)
    events = [registered(firm, rng), fine]
    if what == "revoked":
        events.append(change(fine, "penalty.revoked", fine.source, {
            "case_number": fine.payload.case_number, "reason": "复议撤销",
            "revoked_on": date(2026, 5, 1)}))  # fmt: skip
    elif what == "repaired":
        events.append(change(fine, "penalty.repaired", "ks.credit", {
            "case_number": fine.payload.case_number, "repaired_on": date(2026, 6, 1),
            "decision_number": "昆信修复〔2026〕12号"}))  # fmt: skip
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, events)
        assert outputs(settings, "penalty", events[-1].event_type, 1)
        folded(settings, "penalty", len(events) - 1)  # every penalty event, not the registration
        publish(settings, [request(firm)])
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
    assert issued.payload.result == "clean"


def test_request_before_registration_waits_for_it(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    rng = random.Random(45)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [request(firm)])
        assert outputs(settings, "certificate", "certificate.requested", 1)
        assert (
            outputs(settings, "certificate", "certificate.issued", 1, wait=3) == []
        )  # not on missing data
        publish(settings, [registered(firm, rng)])
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
    assert issued.payload.enterprise_name == firm.name


def answer(task: Envelope, event_type: str, source: str, **payload: object) -> Envelope:
    return model_for(event_type)(
        event_type=event_type, source=source, subject=task.subject,
        correlation_id=task.correlation_id, causation_id=task.event_id,
        payload={"task_id": task.payload.task_id, **payload},
    )  # fmt: skip


def penalised(settings: Settings, firm: Enterprise, seed: int) -> tuple[Envelope, Envelope]:
    """Register ``firm``, fine it, request a certificate; returns (penalty, review task)."""
    rng = random.Random(seed)
    fine = penalty(firm, rng, decided_on=date(2026, 4, 1))
    publish(settings, [registered(firm, rng), fine])
    assert outputs(settings, "penalty", "penalty.imposed", 1)
    folded(settings, "penalty", 1)
    publish(settings, [request(firm)])
    [task] = outputs(settings, "task", "task.created", 1, CERTIFICATE)
    return fine, task


def test_review_completed_by_the_bureau_issues_the_certificate(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    with WorkerProcess(settings, tmp_path / "worker.log"):
        fine, task = penalised(settings, firm, 46)
        intruder = answer(task, "task.completed", "ks.enforcement.zhangpu"
                          if fine.source != "ks.enforcement.zhangpu" else "ks.enforcement.jinxi",
                          outcome="cleared")  # fmt: skip
        publish(settings, [intruder])
        publish(settings, [answer(task, "task.accepted", fine.source)])
        publish(settings, [answer(task, "task.completed", fine.source, outcome="confirmed",
                                  note="处罚决定有效")])  # fmt: skip
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
        dead = asyncio.run(_deadletters(settings))
    cert = SignedCertificate.from_payload(issued.payload, uscc=firm.uscc)
    Verifier.from_paths([settings.data_dir / "keys" / f"{settings.signing_key_id}.pub"]).verify(
        cert
    )
    assert cert.result == "record_found"
    assert [e.case_number for e in cert.record] == [fine.payload.case_number]
    assert [(d.headers["bus.reason"], d.headers["bus.stage"]) for d in dead] == [
        ("task.not_assignee", "cases")
    ]


async def _deadletters(settings: Settings) -> list:
    from bus.edge.publish import list_deadletters

    return await list_deadletters(settings)


@pytest.mark.slow("a worker restarted between two deadline checks")
def test_late_tasks_are_escalated_once_even_across_a_restart(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    with WorkerProcess(settings, tmp_path / "worker.log"):
        _, task = penalised(settings, firm, 47)
        opened = outputs(settings, "task", "task.created", 5, quiet=3)  # review + opening
    # Three weeks later (as the worker sees it): every deadline (1 to 5 working days) has
    # passed, also for a task opened on a Friday night, China time, before a holiday week.
    late = settings.model_copy(update={"clock_skew": 21 * 86400.0, "task_check_interval": 0.2})
    with WorkerProcess(late, tmp_path / "worker.log"):
        overdue = outputs(late, "task", "task.overdue", len(opened))
        escalated = outputs(late, "task", "task.escalated", len(opened))
    with WorkerProcess(late, tmp_path / "worker.log"):  # restarted: what was sent is remembered
        time.sleep(2)  # guards what must not happen (a second notice): cannot fail when slow
        overdue_after = outputs(late, "task", "task.overdue", 2 * len(opened), wait=3)
        escalated_after = outputs(late, "task", "task.escalated", 2 * len(opened), wait=3)
    assert len(opened) == 5
    assert sorted(e.payload.task_id for e in overdue) == sorted(t.payload.task_id for t in opened)
    review = next(e for e in overdue if e.payload.task_id == task.payload.task_id)
    assert review.payload.due_at == task.payload.due_at
    assert {e.payload.task_id: e.payload.escalated_to for e in escalated}[task.payload.task_id] == (
        "ks.finance"
    )
    assert len(escalated) == len(opened)
    assert len(overdue_after) == len(overdue)
    assert len(escalated_after) == len(escalated)


@pytest.mark.slow("a worker killed mid-stream; its successor waits out the session timeout")
@pytest.mark.timeout(600)
def test_worker_killed_mid_stream_finishes_every_case_once(
    settings: Settings, broker: TestBroker, tmp_path: Path
) -> None:
    rng = random.Random(48)
    firms = [enterprise(rng) for _ in range(60)]
    fined = firms[0]
    requests = [request(f) for f in firms[1:]]
    publisher = PacedPublisher(settings, requests, seconds=6)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publish(settings, [registered(f, rng) for f in firms])
        publish(settings, [penalty(fined, rng, decided_on=date(2026, 4, 1))])
        publisher.start()
        outputs(settings, "certificate", "certificate.issued", 10)
        worker.kill()  # SIGKILL mid-stream
        killed_at = publisher.published
        publisher.join()
        broker.forget_dead_members()
        worker.start()
        # Generous waits: a restarted worker has been seen to stall about a minute before its
        # first writes go through (docs/architecture.md, "Known: a restarted worker ...").
        issued = outputs(
            settings, "certificate", "certificate.issued", len(requests), wait=180, quiet=3
        )
        # The record survived the crash: the fined enterprise still needs a review.
        publish(settings, [request(fined)])
        [review] = outputs(settings, "task", "task.created", 1, CERTIFICATE, wait=180)
        created = outputs(settings, "task", "task.created", 4 * len(firms) + 1, wait=180, quiet=3)
    finally:
        worker.stop()
    assert killed_at < len(requests), "publishing finished before the worker was killed"
    by_request: dict[str, set[str]] = {}
    for cert in issued:
        by_request.setdefault(cert.payload.request_event_id, set()).add(str(cert.event_id))
    assert set(by_request) == {str(r.event_id) for r in requests}  # every case finished
    assert all(len(ids) == 1 for ids in by_request.values())  # ... with one certificate each
    assert review.subject == fined.uscc
    opened = {(t.causation_id, t.payload.assignee): str(t.event_id) for t in created}
    assert len({str(t.event_id) for t in created}) == len(opened)  # no second task for a case
    assert len([k for k in opened if k[1] == "ks.tax"]) == len(firms)  # every registration


def test_an_unreadable_canonical_record_is_a_dead_letter_not_a_stall(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    async def garbage() -> None:
        async with BusClient(settings) as client:
            topic = settings.topic("events.enterprise")
            await client.send_raw(topic, firm.uscc.encode(), b"\x00\x00\x00\x03\xe7junk", [])

    rng = random.Random(47)
    with WorkerProcess(settings, tmp_path / "worker.log"):
        asyncio.run(garbage())
        publish(settings, [registered(firm, rng), request(firm)])
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
        dead = asyncio.run(_deadletters(settings))
    assert issued.payload.result == "clean"
    assert [(d.headers["bus.stage"], d.headers["bus.reason"]) for d in dead] == [
        ("correlate", "schema.unknown_id")
    ]


def test_a_cleared_review_takes_its_penalty_off_the_certificate(
    settings: Settings, tmp_path: Path, firm: Enterprise
) -> None:
    """Two bureaus review: one clears its case, one confirms; only the confirmed is listed."""
    rng = random.Random(49)
    other = next(t for t in TOWNS if t != firm.town)
    kept = penalty(firm, rng, n=1, decided_on=date(2026, 4, 1))
    cleared = penalty(replace(firm, town=other), rng, n=2, decided_on=date(2026, 5, 1))
    with WorkerProcess(settings, tmp_path / "worker.log"):
        publish(settings, [registered(firm, rng), kept, cleared])
        folded(settings, "penalty", 2)
        publish(settings, [request(firm)])
        reviews = outputs(settings, "task", "task.created", 2, CERTIFICATE, quiet=1)
        by_bureau = {t.payload.assignee: t for t in reviews}
        publish(settings, [
            answer(by_bureau[cleared.source], "task.completed", cleared.source, outcome="cleared"),
            answer(by_bureau[kept.source], "task.completed", kept.source, outcome="confirmed"),
        ])  # fmt: skip
        [issued] = outputs(settings, "certificate", "certificate.issued", 1)
    assert sorted(by_bureau) == sorted([kept.source, cleared.source])
    assert issued.payload.result == "record_found"
    assert [(e.case_number, e.agency, e.state) for e in issued.payload.record] == [
        (kept.payload.case_number, kept.source, "active")
    ]


def folded(settings: Settings, family: str, n: int, timeout: float = 30) -> None:
    """Wait until the correlate agent has committed ``n`` records of a canonical topic.

    It commits a batch after its effects (and the enterprise record) are written, so what
    follows is decided on a record that holds them.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    async def committed() -> int:
        admin = AIOKafkaAdminClient(**settings.kafka())
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(f"{settings.app_id}.correlate")
        finally:
            await admin.close()
        topic = settings.topic(f"events.{family}")
        return sum(om.offset for tp, om in offsets.items() if tp.topic == topic)

    deadline = time.monotonic() + timeout
    while (done := asyncio.run(committed())) < n:
        assert time.monotonic() < deadline, f"correlate committed {done} of {n} on {family}"
        time.sleep(0.2)
