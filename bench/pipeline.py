"""The whole pipeline: certificate latency, and throughput with the correlate agent in the path.

    python -m bench.pipeline                      # embedded noida broker
    python -m bench.pipeline --engine tansu

1. **Certificate latency.** A worker with every agent; 200 enterprises registered; then
   ``--requests`` compliance-certificate requests for clean enterprises published at
   ``--rate`` per second. Latency is from publishing the request (to ingress, as the
   Financial Office would) to a consumer receiving the signed ``certificate.issued``.
2. **Throughput with correlate.** The 500 enterprises are registered first (as they would
   be: a penalty is imposed on a registered enterprise; ``--unregistered`` skips this and
   measures the parking path instead), then ``--events`` penalties are published once the
   worker is ready (so consumer-group joins are not counted); the same events go through the
   raw loop (``bench/raw_loop.py``) in the same run. The pipeline's time runs from its first
   canonical penalty to the moment the correlate agent has made every penalty durable (the
   record of every enterprise updated and its changelog written).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.ingest import ROOT, drain, encode, measure, produce, spawn
from bus.brokers import EmbeddedBroker
from bus.client import BusClient
from bus.codec import EventCodec
from bus.processes import WorkerProcess
from bus.samples import enterprise, registered, registrations
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.topics import CORRELATE_SEEN, create_topics


async def certificate_latency(settings: Settings, requests: int, rate: float) -> dict[str, float]:
    """p50/p99 from request published to certificate received."""
    rng = random.Random(61)
    firms = [enterprise(rng) for _ in range(200)]
    async with BusClient(settings) as client:
        await client.publish_many([registered(f, rng) for f in firms])
    await drain(settings.bootstrap_servers[0], settings.topic("events.enterprise"), len(firms), 60)
    await asyncio.sleep(1.0)  # the registrations are folded in
    make = model_for("certificate.requested")
    reqs = [
        make(event_type="certificate.requested", source="ks.finance", subject=f.uscc,
             payload={"period_start": date(2024, 1, 1), "period_end": date(2026, 10, 31),
                      "purpose": "financing", "requested_by": "ks.finance", "applicant": "李娜"})
        for f in (rng.choice(firms) for _ in range(requests))
    ]  # fmt: skip
    codec = EventCodec()
    msgs = [(r.subject.encode(), codec.encode(r), r.kafka_headers(), str(r.event_id)) for r in reqs]
    cert_topic = settings.topic("events.certificate")
    arriving = asyncio.create_task(
        drain(settings.bootstrap_servers[0], cert_topic, 2 * requests, 120)
    )
    sent = await produce(settings.bootstrap_servers[0], settings.topic("ingress"), msgs, rate)
    arrived = await arriving
    by_request: dict[str, float] = {}
    for record_id, _, now in arrived:  # certificate.issued's event id is derived; use causation
        by_request.setdefault(record_id, now)
    latencies = []
    for r in reqs:
        issued_id = str(_certificate_id(r.event_id))
        if issued_id in by_request:
            latencies.append((by_request[issued_id] - sent[str(r.event_id)]) * 1000)
    latencies.sort()
    if len(latencies) < requests:
        raise RuntimeError(f"only {len(latencies)} of {requests} certificates arrived")
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "max_ms": latencies[-1],
        "under_1s": sum(lat < 1000 for lat in latencies) / len(latencies),
    }


def _certificate_id(request_id: object) -> object:
    from bus.agents.correlate import derived_id

    return derived_id("certificate", str(request_id))


async def correlate_done(
    settings: Settings, total: int, max_seconds: float, *, quiet: float | None = None
) -> float:
    """When the correlate agent has made ``total`` events durable.

    With ``quiet``, instead: the number made durable once none more came for ``quiet``
    seconds (what a warm-up left behind).

    Counted from its de-duplication changelog (16 bytes per event, written after a batch's
    outputs are acknowledged and before its offsets are committed): broker-agnostic, and no
    admin API that some Kafka-compatible brokers lack.
    """
    consumer = AIOKafkaConsumer(
        settings.topic(CORRELATE_SEEN.name), bootstrap_servers=settings.bootstrap_servers,
        group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=20,
    )  # fmt: skip
    await consumer.start()
    try:
        done = 0
        deadline = time.monotonic() + max_seconds
        last = time.monotonic()
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=50)).values():
                done += sum(len(r.value or b"") // 16 for r in records)
                last = time.monotonic()
            if quiet is not None and time.monotonic() - last > quiet:
                return float(done)
            if quiet is None and done >= total:
                return time.time()
    finally:
        await consumer.stop()
    raise RuntimeError(f"correlate made {done} of {total} events durable in {max_seconds}s")


async def main(args: argparse.Namespace) -> None:
    """Run both measurements and print them with the same run's raw loop."""
    tmp = Path(tempfile.mkdtemp(prefix="bus-pipeline-"))
    broker = EmbeddedBroker(args.engine, data_dir=tmp / "broker")
    broker.start()
    bootstrap = broker.bootstrap
    try:
        run = f"p{time.time_ns()}"
        settings = Settings(broker=bootstrap, app_id=run, topic_prefix=run, partitions=3,
                            data_dir=tmp / "var", web_port=0, metrics_port=0)  # fmt: skip
        await create_topics(settings)
        with WorkerProcess(settings, tmp / "worker.log"):
            lat = await certificate_latency(settings, args.requests, args.rate)
        print(f"certificate: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
              f"max {lat['max_ms']:.1f} ms, {lat['under_1s']:.1%} under 1 s "
              f"({args.requests} requests at {args.rate:.0f}/s)", flush=True)  # fmt: skip

        backlog = encode(args.events, 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(f"{run}.raw.{t}", 3, 1) for t in ("in", "out")])
        await admin.close()
        raw = await measure(
            "raw", bootstrap, f"{run}.raw.in", f"{run}.raw.out",
            lambda: spawn([sys.executable, str(ROOT / "bench" / "raw_loop.py"), bootstrap,
                           f"{run}.raw.in", f"{run}.raw.out", f"{run}-raw"], tmp / "raw.log"),
            backlog, [], 0,
        )  # fmt: skip
        codec = EventCodec()
        full = settings.model_copy(update={"app_id": f"{run}-full", "topic_prefix": f"{run}f"})
        await create_topics(full)
        workers = (
            [full.model_copy(update={"agents": [a]}) for a in ("ingest", "correlate")]
            if args.split
            else [full]
        )
        procs = [WorkerProcess(w, tmp / f"worker-full-{i}.log") for i, w in enumerate(workers)]
        try:
            for proc in procs:
                proc.start()  # returns once every agent has its partitions
            warm = 0
            if not args.unregistered:
                regs = registrations(seed=1)
                await produce(bootstrap, full.topic("ingress"), [
                    (e.subject.encode(), codec.encode(e), e.kafka_headers(), str(e.event_id))
                    for e in regs
                ])  # fmt: skip
                warm = int(await correlate_done(full, 0, 120, quiet=3.0))
            # Published after start-up, so group joins (5 s on Tansu) are not counted.
            await produce(bootstrap, full.topic("ingress"), backlog)
            got = await drain(bootstrap, full.topic("events.penalty"), 1, 120)
            first = got[0][1] / 1000
            done = await correlate_done(full, warm + len(backlog), 600)
        finally:
            for proc in procs:
                proc.stop()
        eps = len(backlog) / (done - first)
        print(
            f"pipeline (ingest + correlate): {eps:.0f} events/s; "
            f"ratio to raw {eps / raw['events_per_s']:.2f} ({args.events} events, logs {tmp})"
        )
    finally:
        broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--rate", type=float, default=50.0, help="certificate requests per second")
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--engine", default="noida", choices=["noida", "tansu"])
    p.add_argument("--split", action="store_true", help="ingest and correlate in two workers")
    p.add_argument(
        "--unregistered",
        action="store_true",
        help="penalise enterprises the bus has not seen registered (parked events)",
    )
    asyncio.run(main(p.parse_args()))
