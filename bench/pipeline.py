"""The whole pipeline: certificate latency, and throughput with the correlate agent in the path.

    python -m bench.pipeline --engine kafka --events 30000   # both guarantees, one run
    python -m bench.pipeline --guarantee exactly_once         # only one of them
    python -m bench.pipeline --engine tansu                    # no transactions there

1. **Certificate latency**, for each guarantee. A worker with every agent; 200 enterprises
   registered; then ``--requests`` compliance-certificate requests for clean enterprises
   published at ``--rate`` per second, while ``--load`` other events per second (penalties
   on 500 other enterprises) flow. Latency is from publishing the request (to ingress, as
   the Financial Office would) to a consumer receiving the signed ``certificate.issued``
   (ingest, the fold, the case engine). ``--document report`` measures the special credit
   report instead (``report.requested`` from the credit office to ``report.issued``), and
   ``--domains 3`` gives each requesting enterprise a penalty in three credit domains first.
   On Kafka the same run measures the raw chains beside it (``bench/raw_chain.py``: three
   plain aiokafka hops, the same load; exactly once, a transaction per fetch and one per
   partition), after warming the broker up with each once: a fresh broker's JVM answers
   slower for its first minutes. Under exactly once the certificate is
   received by a reader of committed records, as a department reads it.
2. **Throughput with correlate.** The 500 enterprises are registered first (as they would
   be: a penalty is imposed on a registered enterprise; ``--unregistered`` skips this and
   measures the parking path instead), then ``--events`` penalties are published once the
   worker is ready (so consumer-group joins are not counted); the same events go through the
   raw loop (``bench/raw_loop.py``) in the same run. The pipeline's time runs from its first
   canonical penalty to the moment the correlate agent has made every penalty durable (the
   record of every enterprise updated and its changelog written). By default the pipeline
   runs twice, ``exactly_once`` (one Kafka transaction per batch and partition) and
   ``at_least_once``, each on fresh topics, so both stand beside the same raw loop.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.cpu import CpuSampler, per_event
from bench.ingest import ROOT, Msg, drain, encode, percentiles, produce, spawn
from bench.raw_chain import chain_latency
from bus.agents.cases import step_event_id
from bus.dev.kafka_local import LOCAL_ENGINES, local_broker
from bus.dev.processes import WorkerProcess, terminate
from bus.dev.samples import enterprise, registered, registrations
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.client import BusClient, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.topics import CASES, CORRELATE_SEEN, create_topics


def _fine(uscc: str, agency: str, n: int) -> Any:
    """A fine by ``agency`` in 2025, on ``uscc``."""
    return model_for("penalty.imposed")(
        event_type="penalty.imposed", source=agency, subject=uscc,
        payload={"case_number": f"昆罚〔2025〕{n}号", "kind": "fine", "violation": "未按规定办理",
                 "legal_basis": "《法》第一条", "amount": 2000, "decided_on": date(2025, 5, 1),
                 "agency": agency},
    )  # fmt: skip


async def certificate_latency(
    settings: Settings,
    requests: int,
    rate: float,
    load: float = 0.0,
    *,
    document: str = "certificate",
    domains: int = 0,
) -> dict[str, Any]:
    """p50/p99 from request published to document received, with ``load`` other events/s.

    The other events are penalties on 500 other registered enterprises (``bench.ingest``'s),
    published from 2 s before the first request to the last: they go through ingest and the
    fold, not the case engine, and leave the requesting enterprises clean. ``document`` is
    ``certificate`` or ``report``; with ``domains`` (reports only), each requesting enterprise
    first gets a fine in that many credit domains (tax, ecology, its town's bureau).
    """
    rng = random.Random(61)
    firms = [enterprise(rng) for _ in range(200)]
    others = registrations(seed=1) if load else []
    async with BusClient(settings) as client:
        await client.publish_many([registered(f, rng) for f in firms] + others)
    await drain(settings.bootstrap_servers[0], settings.topic("events.enterprise"),
                len(firms) + len(others), 60)  # fmt: skip
    if domains:
        from bus.dev.samples import town_code

        agencies = ["ks.tax", "ks.eco", "ks.ema", "ks.hrss", "ks.housing"][: domains - 1]
        fines = [_fine(f.uscc, a, i * 10 + j)
                 for i, f in enumerate(firms)
                 for j, a in enumerate([*agencies, town_code(f.town)])]  # fmt: skip
        async with BusClient(settings) as client:
            await client.publish_many(fines)
        await drain(settings.bootstrap_servers[0], settings.topic("events.penalty"),
                    len(fines), 60)  # fmt: skip
    # Each registration opens an opening-a-business case (4 tasks): wait for the case engine
    # to have decided them all, or the first requests queue behind them.
    await drain(settings.bootstrap_servers[0], settings.topic("events.task"),
                4 * (len(firms) + len(others)), 300)  # fmt: skip
    await asyncio.sleep(1.0)  # the registrations are folded in
    make = model_for(f"{document}.requested")
    office = "ks.finance" if document == "certificate" else "ks.credit"
    reqs = [
        make(event_type=f"{document}.requested", source=office, subject=f.uscc,
             payload={"period_start": date(2024, 1, 1), "period_end": date(2026, 10, 31),
                      "purpose": "financing", "requested_by": office, "applicant": "李娜"})
        for f in (rng.choice(firms) for _ in range(requests))
    ]  # fmt: skip
    codec = EventCodec()
    msgs = [(r.subject.encode(), codec.encode(r), r.kafka_headers(), str(r.event_id)) for r in reqs]
    cert_topic = settings.topic(f"events.{document}")
    # Under exactly once a department reads committed records: the document has arrived
    # when the case engine's transaction that made it has committed.
    committed = settings.processing_guarantee == "exactly_once"
    arriving = asyncio.create_task(
        drain(settings.bootstrap_servers[0], cert_topic, 2 * requests, 120,
              isolation_level="read_committed" if committed else "read_uncommitted")
    )  # fmt: skip
    flowing = None
    if load:
        other = encode(int(load * (requests / rate + 2)), 1)
        flowing = asyncio.create_task(
            produce(settings.bootstrap_servers[0], settings.topic("ingress"), other, load)
        )
        await asyncio.sleep(2.0)
    t0 = time.time()
    sent = await produce(settings.bootstrap_servers[0], settings.topic("ingress"), msgs, rate)
    arrived = await arriving
    flowed = 0.0
    if flowing is not None:
        other_sent = await flowing
        flowed = sum(t0 <= t <= max(sent.values()) for t in other_sent.values())
        flowed /= max(sent.values()) - t0
    by_request: dict[str, float] = {}
    for record_id, _, now in arrived:  # certificate.issued's event id is derived; use causation
        by_request.setdefault(record_id, now)
    latencies = []
    for r in reqs:
        issued_id = str(_certificate_id(r.event_id, document))
        if issued_id in by_request:
            latencies.append((by_request[issued_id] - sent[str(r.event_id)]) * 1000)
    latencies.sort()
    if len(latencies) < requests:
        raise RuntimeError(f"only {len(latencies)} of {requests} {document}s arrived")
    return {
        **percentiles(latencies),
        "under_1s": sum(lat < 1000 for lat in latencies) / len(latencies),
        "other_per_s": flowed,
        "hops": await hops(settings, reqs, sent, arrived, document),
    }


#: Where a certificate's time goes, from the records' own timestamps (each set when a producer
#: took the record): what each hop adds, from the record before it.
HOPS = (
    ("ingest", "request published → canonical request made by ingest"),
    ("fold", "→ case step made by correlate (ingest's commit, correlate's fetch and fold)"),
    ("engine", "→ certificate made by the case engine (correlate's commit, Faust's fetch, "
               "the batch wait, the decision)"),
    ("delivery", "→ certificate received by a consumer"),
)  # fmt: skip


async def hops(
    settings: Settings,
    reqs: list[Any],
    sent: dict[str, float],
    arrived: list[tuple[str, int, float]],
    document: str = "certificate",
) -> dict[str, tuple[float, float]]:
    """p50 and p99 in ms of each of :data:`HOPS`, over the requests."""
    made = {eid: ts / 1000 for eid, ts, _ in arrived}  # canonical requests and certificates
    received = {eid: now for eid, _, now in arrived}
    stepped: dict[str, float] = {}
    async for r in read_topic(settings, settings.topic(CASES.name), to_end=True):
        if (event_id := step_event_id(r.value or b"{}")) is not None:
            stepped[event_id] = r.timestamp_ms / 1000
    spans: dict[str, list[float]] = {name: [] for name, _ in HOPS}
    for req in reqs:
        rid, cid = str(req.event_id), str(_certificate_id(req.event_id, document))
        if rid not in made or rid not in stepped or cid not in made:
            continue
        times = (sent[rid], made[rid], stepped[rid], made[cid], received[cid])
        for (name, _), a, b in zip(HOPS, times, times[1:], strict=False):
            spans[name].append((b - a) * 1000)
    measured = {name: percentiles(v) for name, v in spans.items() if v}
    return {name: (q["p50_ms"], q["p99_ms"]) for name, q in measured.items()}


def _certificate_id(request_id: object, document: str = "certificate") -> object:
    from bus.agents.correlate import derived_id

    return derived_id(document, str(request_id))


async def correlate_done(settings: Settings, total: int, max_seconds: float) -> float:
    """When the correlate agent has made ``total`` events durable (the clock here)."""
    *_, seen_at = await durable(settings, total, max_seconds)
    return seen_at


async def durable(
    settings: Settings, at_least: int, max_seconds: float, *, quiet: float | None = None
) -> tuple[int, float, float]:
    """Events the correlate agent made durable, once at least ``at_least`` are.

    With ``quiet``, also once none more came for that many seconds (so it does not matter
    how many a warm-up's own events, tasks read back, added). Returns the count, the
    timestamp of the changelog record that made the last one durable, and when this saw it.
    Counted from the de-duplication changelog (16 bytes per event, written after a batch's
    outputs are acknowledged and before its offsets are committed): broker-agnostic, and no
    admin API that some Kafka-compatible brokers lack.
    """
    consumer = AIOKafkaConsumer(
        settings.topic(CORRELATE_SEEN.name), bootstrap_servers=settings.bootstrap_servers,
        group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=20,
        isolation_level="read_committed",  # durable under exactly_once means committed
    )  # fmt: skip
    await consumer.start()
    try:
        done, newest, seen_at = 0, 0.0, time.time()
        deadline = time.monotonic() + max_seconds
        last = time.monotonic()
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=50)).values():
                done += sum(len(r.value or b"") // 16 for r in records)
                newest = max([newest, *(r.timestamp / 1000 for r in records if r.value)])
                last, seen_at = time.monotonic(), time.time()
            settled = quiet is None or time.monotonic() - last > quiet
            if done >= at_least and settled:
                return done, newest, seen_at
    finally:
        await consumer.stop()
    raise RuntimeError(f"correlate made {done} of {at_least} events durable in {max_seconds}s")


class Measured(NamedTuple):
    """Events/s over a span, and the CPU seconds each group of processes spent in it."""

    eps: float
    events: int
    cpu: dict[str, float]

    def cpu_per_event(self) -> str:
        """The CPU line: ``worker 61 µs, broker 9 µs`` per event."""
        return per_event(self.cpu, self.events)


async def raw_throughput(
    bootstrap: str,
    tmp: Path,
    backlog: list[Msg],
    partitions: int,
    processes: int,
    *,
    broker_pid: int | None = None,
) -> Measured:
    """The raw loop's events/s over ``backlog`` already waiting, with ``processes`` copies.

    Each copy reads its own share of the partitions (assigned, no consumer group), so no
    rebalance falls inside the measurement. Timed from the first to the last output record;
    the CPU of the copies (and of the broker, given its pid) over that span is measured too.
    """
    run = f"raw{time.time_ns()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{run}.{t}", partitions, 1) for t in ("in", "out")])
    finally:
        await admin.close()
    await produce(bootstrap, f"{run}.in", backlog)
    procs = [
        spawn([sys.executable, str(ROOT / "bench" / "raw_loop.py"), bootstrap, f"{run}.in",
               f"{run}.out", f"{run}-g", ",".join(map(str, range(i, partitions, processes)))],
              tmp / f"{run}-{i}.log")
        for i in range(processes)
    ]  # fmt: skip
    groups = {"raw loop": [p.pid for p in procs], **_broker(broker_pid)}
    try:
        async with CpuSampler(groups) as cpu:
            got = await drain(bootstrap, f"{run}.out", len(backlog), 600)
    finally:
        for proc in procs:
            terminate(proc, 15)
    stamps = sorted(ts for _, ts, _ in got)
    first, last = stamps[0] / 1000, stamps[-1] / 1000
    return Measured((len(stamps) - 1) / (last - first), len(stamps), cpu.between(first, last))


def _broker(pid: int | None) -> dict[str, list[int]]:
    return {"broker": [pid]} if pid is not None else {}


async def pipeline_throughput(
    settings: Settings,
    tmp: Path,
    backlog: list[Msg],
    args: argparse.Namespace,
    *,
    broker_pid: int | None = None,
) -> Measured:
    """Events/s of the bus over ``backlog``, published once its workers are ready.

    Not waiting before they start, as the raw loop's backlog does: each consumer group joins
    on its own (5 s apart on Tansu), and ingest would start alone. So the registrations of
    the penalised enterprises go first (``--unregistered``: none), then the penalties are
    published as record batches built beforehand, which takes the bench little CPU and well
    under a second. The time runs from the first canonical penalty to the changelog record
    that made the last one durable in the correlate agent: record timestamps, read after the
    workers are done. The CPU of the workers (and of the broker, given its pid) over the same
    span is measured too.
    """
    from bench.scaleout import split_problem, start_all, wait_split

    await create_topics(settings)
    codec = EventCodec()
    bootstrap = bootstrap_of(settings)
    regs = [] if args.unregistered else registrations(seed=1)
    if args.split:
        split = (["ingest"], ["correlate", "cases"])
        shapes = [settings.model_copy(update={"agents": a}) for a in split]
    else:
        shapes = [settings] * args.workers
    procs = [
        WorkerProcess(
            w.model_copy(update={"data_dir": w.data_dir / f"w{i}"}), tmp / f"worker-full-{i}.log"
        )
        for i, w in enumerate(shapes)
    ]
    try:
        await start_all(procs)
        if args.workers > 1:
            await wait_split(settings, procs, 60)
        await produce(bootstrap, settings.topic("ingress"), [
            (e.subject.encode(), codec.encode(e), e.kafka_headers(), str(e.event_id)) for e in regs
        ])  # fmt: skip
        warm = (await durable(settings, 0, 120, quiet=3.0))[0] if regs else 0
        groups = {"worker": [p.proc.pid for p in procs if p.proc], **_broker(broker_pid)}
        async with CpuSampler(groups) as cpu:
            await publish_batches(bootstrap, settings.topic("ingress"), backlog)
            _, last, _ = await durable(settings, warm + len(backlog), 600, quiet=3.0)
        if args.workers > 1 and split_problem(settings, procs) is not None:
            print(f"   warning: partitions moved during the measurement (logs {tmp})")
    finally:
        for proc in procs:
            proc.stop()
    got = await drain(bootstrap, settings.topic("events.penalty"), len(backlog), 120)
    first = min(ts for _, ts, _ in got) / 1000
    return Measured(len(backlog) / (last - first), len(backlog), cpu.between(first, last))


async def publish_batches(bootstrap: str, topic: str, msgs: list[Msg]) -> None:
    """Publish ``msgs`` keyed as any Kafka producer would, as record batches built first."""
    from bus.agents.runtime import key_hash

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20)
    await producer.start()
    try:
        count = len(await producer.partitions_for(topic))
        batches: list[tuple[int, Any]] = []
        open_: dict[int, Any] = {}
        for key, value, headers, _ in msgs:
            p = key_hash(key) % count
            batch = open_.get(p)
            if batch is None or not batch.append(key=key, value=value, timestamp=None,
                                                 headers=headers):  # fmt: skip
                batch = open_[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
                batches.append((p, batch))
        futures = []
        for p, batch in batches:
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def bootstrap_of(settings: Settings) -> str:
    """The first bootstrap server, as the bench's plain clients take it."""
    return settings.bootstrap_servers[0]


GUARANTEES = {
    "both": ("exactly_once", "at_least_once"),
    "exactly_once": ("exactly_once",),
    "at_least_once": ("at_least_once",),
}


#: The raw chains a guarantee's certificate latency is compared with: exactly once, a
#: transaction per fetch (the limit) and one per partition (what fencing without KIP-447 takes).
RAW_CHAINS = {
    "exactly_once": ("exactly_once", "exactly_once/partition"),
    "at_least_once": ("at_least_once",),
}


async def main(args: argparse.Namespace) -> None:
    """Run both measurements and print them with the same run's raw loop."""
    tmp = Path(tempfile.mkdtemp(prefix="bus-pipeline-"))
    broker = local_broker(args.engine, data_dir=tmp / "broker")
    broker.start()
    bootstrap = broker.bootstrap
    try:
        run = f"p{time.time_ns()}"
        settings = Settings(broker=bootstrap, app_id=run, topic_prefix=run, partitions=3,
                            data_dir=tmp / "var", web_port=0, metrics_port=0)  # fmt: skip
        guarantees = GUARANTEES[args.guarantee]
        if args.engine == "tansu" and "exactly_once" in guarantees:
            print("Tansu has no transactions: at_least_once only", flush=True)
            guarantees = ("at_least_once",)
        if args.engine == "kafka":
            # A broker's JVM answers slower until its code is compiled: a certificate run on a
            # fresh broker took p99 128–194 ms at least once, 76–96 ms on a warm one.
            print("warming the broker up: each raw chain once", flush=True)
            for guarantee in guarantees:
                for chain in RAW_CHAINS[guarantee]:
                    await chain_latency(bootstrap, tmp, chain, args.requests, args.rate, args.load)
        for i, guarantee in enumerate(guarantees):
            one = settings.model_copy(update={
                "app_id": f"{run}-c{i}", "topic_prefix": f"{run}c{i}",
                "processing_guarantee": guarantee,
            })  # fmt: skip
            await create_topics(one)
            with WorkerProcess(one, tmp / f"worker-c{i}.log"):
                lat = await certificate_latency(
                    one,
                    args.requests,
                    args.rate,
                    args.load,
                    document=args.document,
                    domains=args.domains,
                )
            shown = args.document + (f" ({args.domains} domains with records)"
                                     if args.domains else "")  # fmt: skip
            print(f"{shown}, {guarantee}: p50 {lat['p50_ms']:.1f} ms, p99 "
                  f"{lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms, {lat['under_1s']:.1%} "
                  f"under 1 s ({args.requests} requests at {args.rate:.0f}/s, "
                  f"{lat['other_per_s']:.0f} other events/s published meanwhile)",
                  flush=True)  # fmt: skip
            for name, meaning in HOPS:
                if name in lat["hops"]:
                    p50, p99 = lat["hops"][name]
                    print(f"  {name:9} p50 {p50:7.1f} ms, p99 {p99:7.1f} ms   {meaning}")
            for chain in RAW_CHAINS[guarantee] if args.engine == "kafka" else ():
                raw = await chain_latency(bootstrap, tmp, chain, args.requests, args.rate,
                                          args.load)  # fmt: skip
                print(f"raw chain (three aiokafka hops, nothing in them), {chain}: p50 "
                      f"{raw['p50_ms']:.1f} ms, p99 {raw['p99_ms']:.1f} ms, max "
                      f"{raw['max_ms']:.1f} ms; the bus takes {lat['p50_ms'] / raw['p50_ms']:.1f}"
                      f" / {lat['p99_ms'] / raw['p99_ms']:.1f} times as long at p50 / p99",
                      flush=True)  # fmt: skip
        if args.latency_only:
            return

        backlog = encode(args.events, 1)
        raws = {n: await raw_throughput(bootstrap, tmp, backlog, args.partitions, n,
                                        broker_pid=broker.pid)
                for n in sorted({1, args.workers})}  # fmt: skip
        for n, raw in raws.items():
            print(f"raw loop, {n} process(es): {raw.eps:.0f} events/s; CPU per event: "
                  f"{raw.cpu_per_event()}", flush=True)  # fmt: skip
        shape = "ingest and correlate in two workers" if args.split else f"{args.workers} worker(s)"
        for i, guarantee in enumerate(guarantees):
            name = f"{run}-{guarantee}"
            full = settings.model_copy(update={
                "app_id": name, "topic_prefix": f"{run}g{i}", "partitions": args.partitions,
                "data_dir": tmp / name,
            })  # fmt: skip
            if args.workers > 1:
                from bench.scaleout import group_settings

                full = group_settings(bootstrap, tmp, name, partitions=args.partitions)
            full = full.model_copy(update={"processing_guarantee": guarantee})
            bus = await pipeline_throughput(full, tmp / name, backlog, args, broker_pid=broker.pid)
            ratios = ", ".join(f"{bus.eps / r.eps:.2f} of {n} raw process(es)"
                               for n, r in raws.items())  # fmt: skip
            print(f"pipeline {guarantee} (ingest + correlate, {shape}): {bus.eps:.0f} events/s; "
                  f"{ratios}; CPU per event: {bus.cpu_per_event()} "
                  f"({args.events} events, {args.partitions} partitions, logs {tmp})",
                  flush=True)  # fmt: skip
        raw = raws[1]
        budget = 2 * raw.cpu["raw loop"] / raw.events * 1e6
        print(f"at 0.50 of the raw loop, one process may spend {budget:.0f} µs of CPU per event "
              "(twice the raw loop's, if it is as busy)")  # fmt: skip
    finally:
        broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--rate", type=float, default=50.0, help="certificate requests per second")
    p.add_argument(
        "--load",
        type=float,
        default=1000.0,
        help="other events per second while the certificates are measured (0: none)",
    )
    p.add_argument("--latency-only", action="store_true", help="certificate latency alone")
    p.add_argument("--document", choices=["certificate", "report"], default="certificate",
                   help="what the latency is measured for: a compliance certificate or a "
                   "special credit report")  # fmt: skip
    p.add_argument(
        "--domains",
        type=int,
        default=0,
        choices=range(0, 7),
        help="reports: a fine in this many credit domains on each enterprise first",
    )
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--engine", default="kafka", choices=LOCAL_ENGINES)
    p.add_argument("--split", action="store_true", help="ingest and correlate in two workers")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="workers of one bus (Tansu: noida's groups do not rebalance); the raw "
        "loop is also measured with as many processes",
    )
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument(
        "--guarantee",
        choices=list(GUARANTEES),
        default="both",
        help="BUS_PROCESSING_GUARANTEE of the pipeline; both: one after the other, same run",
    )
    p.add_argument(
        "--unregistered",
        action="store_true",
        help="penalise enterprises the bus has not seen registered (parked events)",
    )
    asyncio.run(main(p.parse_args()))
