"""Decisions replay byte for byte: the same log into a fresh bus gives the same signed documents.

A real worker decides a day's cases (a clean certificate, a review answered by its bureau, a
parallel approval, a registration's fan-out, a credit report). Every event the departments
published is then copied, with its record time, onto the canonical topics of a fresh bus
(another app id and prefix, no state), phase by phase as the first bus saw them, and a fresh
worker decides again.
Each of the bus's events must come out with the same id and the same bytes.

Phases: the worker today reads several canonical topics, and the order in which two topics'
records about one enterprise meet is up to the fetches; the case engine's single ordered
input removes that. Within a phase every enterprise has records on one topic only.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from datetime import date
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.certificates import SignedCertificate, Verifier
from bus.schemas.events import FAMILIES, model_for
from bus.settings import Settings
from bus.streaming.client import Record, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics
from connectors.contract import drop_topics
from tests.integration.test_correlate import answer, outputs, publish, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
codec = EventCodec()
BUS = "ks.bus"


def canonical(settings: Settings) -> list[str]:
    return [settings.topic(f"events.{f}") for f in FAMILIES]


def log(settings: Settings) -> list[Record]:
    async def go() -> list[Record]:
        out: list[Record] = []
        for topic in canonical(settings):
            out += [r async for r in read_topic(settings, topic, to_end=True, max_seconds=60)]
        return out

    return asyncio.run(go())


async def record_ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict:
    """Per partition, the offset after its last record: a transaction's commit marker takes
    an offset too, which no consumer receives and no group commits past."""
    ends = await consumer.end_offsets(tps)
    found = {}
    for tp in tps:
        consumer.assign([tp])
        consumer.seek(tp, max(ends[tp] - 2, 0))  # a transaction holds a record before its marker
        last = None
        while await consumer.position(tp) < ends[tp]:
            for r in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                last = r.offset
        found[tp] = ends[tp] if last is None and ends[tp] < 2 else (last or 0) + 1
    return found


def settle(settings: Settings, timeout: float = 180) -> None:
    """Wait until the correlate agent and the case engine have committed everything."""
    groups = {f"{settings.app_id}.correlate": canonical(settings),
              settings.app_id: [settings.topic("cases")]}  # fmt: skip

    async def behind() -> int:
        admin = AIOKafkaAdminClient(**settings.kafka())
        consumer = AIOKafkaConsumer(**settings.kafka(), group_id=None,
                                    isolation_level="read_committed")  # fmt: skip
        await admin.start()
        await consumer.start()
        try:
            total = 0
            for group, topics in groups.items():
                committed = await admin.list_consumer_group_offsets(group)
                tps = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
                done = {tp: om.offset for tp, om in committed.items()}
                ends = await record_ends(consumer, tps)
                total += sum(max(n - done.get(tp, 0), 0) for tp, n in ends.items())
            return total
        finally:
            await consumer.stop()
            await admin.close()

    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:  # caught up three times running: nothing of its own still on the way
        assert time.monotonic() < deadline, "the bus did not catch up"
        quiet = quiet + 1 if asyncio.run(behind()) == 0 else 0
        time.sleep(0.3)


def decisions(settings: Settings) -> dict[str, str]:
    """The bus's own events: event id -> SHA-256 of the bytes on the canonical topic."""
    return {
        r.headers["event_id"]: hashlib.sha256(r.value or b"").hexdigest()
        for r in log(settings)
        if r.headers.get("source") == BUS
    }


def copy(source: Settings, target: Settings, event_ids: set[str]) -> None:
    """Put these departments' records onto ``target``'s canonical topics, times and all."""

    records = sorted(log(source), key=lambda r: (r.topic, r.partition, r.offset))

    async def go() -> None:
        producer = AIOKafkaProducer(**target.kafka(), acks="all")
        await producer.start()
        try:
            for r in records:
                if r.headers.get("event_id") not in event_ids:
                    continue
                topic = target.topic(r.topic.removeprefix(source.topic_prefix + "."))
                headers = [(k, v.encode()) for k, v in r.headers.items()]
                await producer.send_and_wait(
                    topic, r.value, key=r.key, partition=r.partition,
                    timestamp_ms=r.timestamp_ms, headers=headers,
                )  # fmt: skip
        finally:
            await producer.stop()

    asyncio.run(go())


def opinion(firm_uscc: str, dept: str, verdict: str) -> object:
    return model_for("approval.opinion")(
        event_type="approval.opinion", source=dept, subject=firm_uscc,
        payload={"application_number": "KS-SP-2026-000777", "opinion": verdict},
    )  # fmt: skip


@pytest.mark.slow("two buses decide the same day of cases, phase by phase, each phase waited out")
def test_the_same_log_into_a_fresh_bus_gives_the_same_signed_documents(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(61)
    clean, fined, applicant = enterprise(rng), enterprise(rng), enterprise(rng)
    fine = penalty(fined, rng, decided_on=date(2026, 4, 1))
    asked = ["ks.hrss", "ks.tax"]
    application = model_for("approval.requested")(
        event_type="approval.requested", source="ks.approval", subject=applicant.uscc,
        payload={"application_number": "KS-SP-2026-000777", "title": "建设工程施工许可",
                 "departments": asked, "applicant": "王芳", "submitted_on": date(2026, 11, 2)},
    )  # fmt: skip
    report = model_for("report.requested")(
        event_type="report.requested", source="ks.credit", subject=fined.uscc,
        payload={"period_start": date(2026, 1, 1), "period_end": date(2026, 12, 31),
                 "purpose": "bidding", "requested_by": "ks.credit", "applicant": "李娜"},
    )  # fmt: skip
    phases: list[set[str]] = []

    def phase(events: list) -> None:
        publish(settings, events)
        phases.append({str(e.event_id) for e in events})
        settle(settings)

    with WorkerProcess(settings, tmp_path / "first.log"):
        phase([registered(clean, rng), registered(fined, rng), registered(applicant, rng)])
        phase([fine, application])
        phase([request(clean), request(fined), *(opinion(applicant.uscc, d, "approve")
                                                 for d in asked)])  # fmt: skip
        [review] = outputs(settings, "task", "task.created", 1, "compliance-certificate")
        phase([answer(review, "task.completed", fine.source, outcome="confirmed")])
        phase([report])
    first = decisions(settings)
    certificates = [codec.decode(r.value or b"") for r in log(settings)
                    if r.headers.get("event_type") == "certificate.issued"]  # fmt: skip
    kinds = {codec.decode(r.value or b"").event_type for r in log(settings)
             if r.headers.get("source") == BUS}  # fmt: skip
    assert {"certificate.issued", "report.issued", "task.created", "task.completed",
            "approval.decided"} <= kinds  # fmt: skip
    assert sorted(c.payload.result for c in certificates) == ["clean", "record_found"]

    run = f"r{settings.app_id}"
    fresh = settings.model_copy(update={"app_id": run, "topic_prefix": run})
    asyncio.run(create_topics(fresh))
    with WorkerProcess(fresh, tmp_path / "again.log"):  # same data dir: the same signing key
        for ids in phases:
            copy(settings, fresh, ids)
            settle(fresh)
    again = decisions(fresh)
    asyncio.run(drop_topics(fresh))

    assert len(first) >= 10
    assert again == first  # the same ids, the same bytes: signatures and dates included
    keys = Verifier.from_paths([settings.data_dir / "keys"])
    for c in certificates:
        keys.verify(SignedCertificate.from_payload(c.payload, uscc=c.subject))
