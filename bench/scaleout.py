"""Scale-out: throughput with 1, 2, 3 workers, and hand-over, on Apache Kafka (``--engine``).

    python -m bench.scaleout --workers 1 2 3          # throughput, median of --rounds
    python -m bench.scaleout --handover 5             # 5 rounds: a worker stopped (SIGTERM)
    python -m bench.scaleout --handover 5 --action kill    # ... killed (SIGKILL) instead
    python -m bench.scaleout --handover 5 --action pause   # ... frozen past its session

Apache Kafka by default; of the embedded brokers only Tansu's consumer groups survive members
leaving and dying (docs/broker.md). Workers run with the settings of docs/broker.md: session 6 s,
heartbeat 1 s, rebalance 10 s, no recovery consistency check, and the product's producer
batches (``--batches single``: one record per batch, what docs/broker.md prescribed before the
stores read whole batches; it costs the pipeline three quarters of its throughput).

**Throughput.** The raw loop (``bench/raw_loop.py``) over the same penalties, in the same run,
is the limit. Then for each worker count: the workers start, the bench waits until their
consumer groups have split the partitions (each worker's "partitions assigned" log lines),
publishes ``--events`` penalties to ingress, and times the pipeline from its first canonical
record until the correlate agent has made every penalty durable (as ``bench/pipeline.py``).
CPU of the broker, the workers and this process (the load generator) is sampled from
``/proc/<pid>/stat`` over the same span, and the load average is printed: the machine may be
shared.

**Hand-over.** Two workers; registrations, penalties and compliance-certificate requests are
published at a steady rate; mid-stream one worker is stopped (or killed), then started again
so that it joins under load, then the other is stopped (``--cycles``). Afterwards everything
is read back, counting records and comparing ids:
``Handover`` says what was lost, skipped or done twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.cpu import CpuSampler
from bench.ingest import Msg, drain, encode
from bench.pipeline import correlate_done, raw_throughput
from bus.agents.app import load_signer
from bus.agents.cases import CaseState, case_key, step_event_id
from bus.agents.correlate import derived_id
from bus.agents.stores import PartedStore
from bus.dev.kafka_local import LOCAL_ENGINES, local_broker
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.dev.samples import penalties as sample_penalties
from bus.domain.departments import Directory
from bus.domain.record import EnterpriseRecord, apply_part
from bus.schemas.envelope import Envelope
from bus.schemas.events import FAMILIES, model_for
from bus.settings import Settings
from bus.streaming.client import kafka_admin
from bus.streaming.codec import EventCodec
from bus.streaming.topics import (
    CASES,
    CORRELATE_RECORDS,
    CORRELATE_SEEN,
    cases_changelog,
    create_topics,
    department_ingress_topic,
    publishing_departments,
)

AGENTS = ("ingest", "correlate")
OPENING_TASKS = 4  # opening-a-business: tax, social insurance, housing fund, town
_LINE = re.compile(
    r"\] (ingest|correlate): partitions (assigned|revoked) (.*?)(?: \(\d+ ids restored in .*)?$",
    re.M,
)


# ---- workers of one group ---------------------------------------------------------------


def group_settings(
    bootstrap: str, tmp: Path, run: str, *, partitions: int = 6, batched: bool = True
) -> Settings:
    """Settings for workers of one group (docs/broker.md), with one signing key for all of them.

    Workers of one bus share the key file as they would in production; each has its own data
    dir. ``batched=False``: single-record producer batches instead of the product's.
    """
    s = Settings(
        broker=bootstrap, app_id=run, topic_prefix=run, partitions=partitions,
        data_dir=tmp / run / "var", web_port=0, metrics_port=0,
        session_timeout=6, heartbeat_interval=1, rebalance_timeout=10,
        recovery_consistency_check=False,
    )  # fmt: skip
    if not batched:
        s = s.model_copy(update={"producer_max_batch_size": 1, "producer_linger_ms": 0})
    load_signer(s)  # made once here, not by two workers racing at start-up
    key = s.data_dir / "keys" / f"{s.signing_key_id}.pem"
    return s.model_copy(update={"signing_key_file": key})


def workers(settings: Settings, n: int, logs: Path) -> list[WorkerProcess]:
    """``n`` workers of one bus (same app id and topics), each with its own data dir."""
    return [
        WorkerProcess(
            settings.model_copy(update={"data_dir": settings.data_dir.parent / f"w{i}"}),
            logs / f"worker{i}.log",
        )
        for i in range(n)
    ]


async def start_all(procs: Sequence[WorkerProcess], seconds: float = 90.0) -> None:
    """Start workers together (one group join, not one per worker) and wait until ready."""
    for p in procs:
        p.start(wait=False)
    await asyncio.gather(*(asyncio.to_thread(p.wait_ready, seconds) for p in procs))


async def stop_all(procs: Iterable[WorkerProcess]) -> None:
    """SIGTERM every running worker at once (SIGKILL after 20 s)."""
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs if p.running))


def owned(log: str, agent: str) -> set[tuple[str, int]]:
    """What ``agent`` of one worker owns now, from its last "partitions ..." log line."""
    current: set[tuple[str, int]] = set()
    for m in _LINE.finditer(log):
        if m.group(1) != agent:
            continue
        current = set()
        if m.group(2) == "assigned" and m.group(3) != "none":
            for item in m.group(3).split(", "):
                topic, _, p = item.rpartition("/")
                current.add((topic, int(p)))
    return current


def agent_topics(settings: Settings, agent: str) -> list[str]:
    """The topics an agent's consumer group reads."""
    if agent == "ingest":  # the shared ingress and every department's own
        directory = Directory.load(settings.departments_file, settings.policy_file)
        own = [department_ingress_topic(settings, c) for c in publishing_departments(directory)]
        return [settings.topic("ingress"), *own]
    return [settings.topic(f"events.{f}") for f in FAMILIES]


def split_problem(settings: Settings, procs: Sequence[WorkerProcess]) -> str | None:
    """Why the running workers do not (yet) split every agent's partitions; None if they do.

    Split means: each running worker owns some partitions (when there are enough), no
    partition is owned twice, and together they own every partition of every topic.
    """
    running = [p for p in procs if p.running]
    for agent in AGENTS:
        if agent not in settings.agents:
            continue
        want = {(t, p) for t in agent_topics(settings, agent) for p in range(settings.partitions)}
        sets = [owned(p.log(), agent) for p in running]
        union: set[tuple[str, int]] = set().union(*sets)
        if sum(len(s) for s in sets) != len(union):
            return f"{agent}: a partition is owned twice"
        if union != want:
            return f"{agent}: {len(want - union)} partitions unowned"
        if len(running) <= settings.partitions and not all(sets):
            return f"{agent}: a worker owns nothing"
    return None


async def wait_split(settings: Settings, procs: Sequence[WorkerProcess], seconds: float) -> float:
    """Wait until the running workers split the partitions; returns the seconds it took."""
    t0 = time.monotonic()
    problem = split_problem(settings, procs)
    while problem is not None:
        if time.monotonic() - t0 > seconds:
            raise RuntimeError(f"partitions not split after {seconds}s: {problem}")
        for p in procs:
            if p.proc is not None and not p.running and p.proc.returncode not in (0, -9):
                raise RuntimeError(f"worker exited with {p.proc.returncode}:\n{p.log()[-2000:]}")
        await asyncio.sleep(0.1)
        problem = split_problem(settings, procs)
    return time.monotonic() - t0


# ---- CPU and load ------------------------------------------------------------------------


def load() -> str:
    """The 1-minute load average and the core count, for the record."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


# ---- throughput --------------------------------------------------------------------------


async def publish(bootstrap: str, topic: str, msgs: Sequence[Msg]) -> None:
    """Publish as fast as the producer goes (the pipeline is already running)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers, _ in msgs
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def pipeline(
    bootstrap: str, broker_pid: int, tmp: Path, n: int, backlog: list[Msg], args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    """Events/s of ingest + correlate with ``n`` workers, and the CPU share of each process."""
    run = f"s{n}x{time.time_ns()}"
    s = group_settings(
        bootstrap, tmp, run, partitions=args.partitions, batched=args.batches != "single"
    )
    await create_topics(s)
    procs = workers(s, n, tmp / run)
    try:
        await start_all(procs)
        await wait_split(s, procs, 60)
        groups = {"broker": [broker_pid], "bench": [os.getpid()]}
        groups |= {f"worker{i}": [p.proc.pid] for i, p in enumerate(procs) if p.proc is not None}
        async with CpuSampler(groups) as sampler:
            began = time.time()
            await publish(bootstrap, s.topic("ingress"), backlog)
            got = await drain(bootstrap, s.topic("events.penalty"), 1, 120)
            first = min(ts for _, ts, _ in got) / 1000
            done = await correlate_done(s, len(backlog), 600)
            ended = time.time()
        # Percent of one core each process used, from publishing to the last durable event.
        cpu = {k: 100 * v / (ended - began) for k, v in sampler.between(began, ended).items()}
        if split_problem(s, procs) is not None:
            print(f"   warning: partitions moved during the measurement (logs {tmp / run})")
    finally:
        await stop_all(procs)
    return len(backlog) / (done - first), cpu


async def throughput(args: argparse.Namespace) -> None:
    """Raw limit, then 1..N workers, ``--rounds`` times; medians and ratios at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="bus-scaleout-"))
    broker = local_broker(args.engine, data_dir=tmp / "broker")
    broker.start()
    assert broker.pid is not None
    backlog = encode(args.events, 1)
    raw: list[float] = []
    eps: dict[int, list[float]] = {n: [] for n in args.workers}
    cpus: dict[int, list[dict[str, float]]] = {n: [] for n in args.workers}
    try:
        print(f"{args.events} penalties, {args.partitions} partitions, {args.engine}, "
              f"{args.batches or 'product'} batches; {load()}")  # fmt: skip
        for r in range(1, args.rounds + 1):
            measured = await raw_throughput(broker.bootstrap, tmp, backlog, args.partitions, 1)
            raw.append(measured.eps)
            for n in args.workers:
                e, cpu = await pipeline(broker.bootstrap, broker.pid, tmp, n, backlog, args)
                eps[n].append(e)
                cpus[n].append(cpu)
                shares = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items())
                print(f"round {r}: {n} worker(s) {e:7.0f} events/s = {e / raw[-1]:.2f} of raw "
                      f"{raw[-1]:.0f}; CPU {shares}; {load()}", flush=True)  # fmt: skip
    finally:
        broker.stop(timeout=1)
    base = statistics.median(eps[args.workers[0]])
    print(f"\nmedian of {args.rounds}: raw {statistics.median(raw):.0f} events/s")
    for n in args.workers:
        m = statistics.median(eps[n])
        workers_cpu = statistics.median(
            sum(v for k, v in c.items() if k.startswith("worker")) for c in cpus[n]
        )
        broker_cpu = statistics.median(c["broker"] for c in cpus[n])
        bench_cpu = statistics.median(c["bench"] for c in cpus[n])
        print(f"{n} worker(s): {m:7.0f} events/s, {m / statistics.median(raw):.2f} of raw, "
              f"x{m / base:.2f} of {args.workers[0]}; CPU workers {workers_cpu:.0f}%, "
              f"broker {broker_cpu:.0f}%, load generator {bench_cpu:.0f}%")  # fmt: skip
    print(f"{load()}; logs in {tmp}")


# ---- hand-over ---------------------------------------------------------------------------


def certificate_request(uscc: str) -> Envelope:
    """A compliance-certificate request from the Financial Office."""
    return model_for("certificate.requested")(
        event_type="certificate.requested", source="ks.finance", subject=uscc,
        payload={"period_start": date(2025, 1, 1), "period_end": date(2026, 12, 31),
                 "purpose": "financing", "requested_by": "ks.finance", "applicant": "王芳"},
    )  # fmt: skip


@dataclass
class Scenario:
    """What is published: registrations first, then penalties and requests, interleaved."""

    registrations: list[Envelope]  # published and handled before the hand-overs
    events: list[Envelope]  # published while workers stop, die and join
    requests: list[Envelope]  # from firms without penalties: one clean certificate each
    names: dict[str, str]  # USCC -> registered name
    cases: dict[str, set[str]]  # USCC -> penalty case numbers
    parked: dict[str, set[str]]  # unregistered USCC -> penalties parked until it registers

    @property
    def published(self) -> list[Envelope]:
        """Everything, in publishing order."""
        return [*self.registrations, *self.events]


def scenario(firms: int, penalty_count: int, seed: int) -> Scenario:
    """Registered firms, then their penalties and requests amid penalties for other firms.

    The registrations are handled before any worker stops, so every request and penalty
    for a registered firm must find its record: a worker that decides before it has
    restored a partition's state parks the request as unregistered or overwrites the
    record. Every fourth registered firm is fined; the others ask for a certificate, so
    each request must end in exactly one clean certificate.
    """
    rng = random.Random(seed)
    pool = [enterprise(rng) for _ in range(firms)]
    regs = [registered(f, rng) for f in pool]
    mine = [
        penalty(f, rng, n=9000 + i) if i % 4 == 0 else certificate_request(f.uscc)
        for i, f in enumerate(pool)
    ]
    bulk = sample_penalties(penalty_count, seed=seed + 1)
    per = -(-penalty_count // max(firms, 1))
    events: list[Envelope] = []
    for i, e in enumerate(mine):
        events.append(e)
        events.extend(bulk[i * per : (i + 1) * per])
    events.extend(bulk[len(mine) * per :])
    cases: dict[str, set[str]] = {}
    for e in [*mine, *bulk]:
        if e.event_type == "penalty.imposed":
            cases.setdefault(e.subject, set()).add(e.payload.case_number)
    parked: dict[str, set[str]] = {}
    for e in bulk:  # their town's subscriptions need the profile: routed once registered
        parked.setdefault(e.subject, set()).add(str(e.event_id))
    requests = [e for e in mine if e.event_type == "certificate.requested"]
    return Scenario(regs, events, requests, {f.uscc: f.name for f in pool}, cases, parked)


class Paced:
    """Publishes events to ingress in chunks until a deadline, keyed by subject.

    The deadline can be pushed out (``extend``) while publishing, so that events keep
    arriving through every rebalance however long workers take to stop and start.
    """

    def __init__(self, settings: Settings, events: Sequence[Envelope], seconds: float) -> None:
        codec = EventCodec()
        self.msgs = [(e.subject.encode(), codec.encode(e), e.kafka_headers()) for e in events]
        self.topic = settings.topic("ingress")
        self.kafka = settings.kafka()
        self.until = time.monotonic() + seconds
        self.sent = 0

    def extend(self, seconds: float) -> None:
        """Keep publishing for at least ``seconds`` from now."""
        self.until = max(self.until, time.monotonic() + seconds)

    async def run(self, chunks: int = 100) -> None:
        """Publish in ``chunks`` equal parts, the rest spread evenly until the deadline."""
        producer = AIOKafkaProducer(**self.kafka, linger_ms=5, acks="all")
        await producer.start()
        try:
            size = -(-len(self.msgs) // chunks)
            for i in range(0, len(self.msgs), size):
                futures = [
                    await producer.send(self.topic, value, key=key, headers=headers)
                    for key, value, headers in self.msgs[i : i + size]
                ]
                await asyncio.gather(*futures)
                self.sent = min(i + size, len(self.msgs))
                left = -(-(len(self.msgs) - self.sent) // size)
                if left:
                    await asyncio.sleep(max(self.until - time.monotonic(), 0) / left)
        finally:
            await producer.stop()


@dataclass
class Seen:
    """Everything read back: canonical copies by id, correlate's durable ids, dead letters."""

    canonical: Counter[str] = field(default_factory=Counter)
    decided: set[str] = field(default_factory=set)  # ids of the bus's own decisions
    handled: set[str] = field(default_factory=set)
    deadletters: Counter[str] = field(default_factory=Counter)
    certificates: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    tasks: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    records: dict[int, dict[str, EnterpriseRecord]] = field(default_factory=dict)
    cases: dict[str, CaseState] = field(default_factory=dict)  # the case engine's, by USCC
    steps: dict[str, tuple[int, int]] = field(default_factory=dict)  # event id handed to the
    # case engine -> (partition, offset) of its step on ``cases``


class Reader:
    """Reads canonical topics, dead letters and the correlate agent's changelogs from the start.

    One consumer with every partition assigned, no group, committed records only (what every
    consumer of the bus reads): counts records instead of trusting end offsets. The
    enterprise records are rebuilt from their changelog as a worker taking over a partition
    would (``bus.domain.record.apply_part``), to check what a next owner gets.
    """

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.codec = EventCodec()
        self.seen = Seen()
        self.topics = [settings.topic(f"events.{f}") for f in FAMILIES]
        self.handled_topic = settings.topic(CORRELATE_SEEN.name)
        self.records_topic = settings.topic(CORRELATE_RECORDS.name)
        self.cases_topic = cases_changelog(settings)
        self.steps_topic = settings.topic(CASES.name)
        self.dead_topic = settings.topic("deadletter")
        self.consumer = AIOKafkaConsumer(
            **settings.kafka(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=50, max_poll_records=5000,
            isolation_level="read_committed",  # what the bus's consumers see
        )  # fmt: skip

    async def __aenter__(self) -> Reader:
        await self.consumer.start()
        tps = [
            TopicPartition(t, p)
            for t in [
                *self.topics,
                self.handled_topic,
                self.records_topic,
                self.dead_topic,
                self.cases_topic,
                self.steps_topic,
            ]
            for p in range(self.s.partitions)
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        """Read what has arrived; returns how many records, deadline ticks not counted (the
        case engine's timer adds them for ever, so they are no sign of progress)."""
        n = 0
        for tp, records in (await self.consumer.getmany(timeout_ms=timeout_ms)).items():
            n += len(records)
            for r in records:
                if tp.topic == self.records_topic:
                    self._apply(r.partition, r.key or b"", r.value)
                elif tp.topic == self.cases_topic:  # the last state of each enterprise
                    self.seen.cases[(r.key or b"").decode()] = CaseState.model_validate_json(
                        r.value or b"{}"
                    )
                elif tp.topic == self.steps_topic:
                    n -= not self._step(r.value or b"{}", r.partition, r.offset)
                else:
                    self._add(tp.topic, r.value or b"", dict(r.headers or ()))
        return n

    def _apply(self, partition: int, key: bytes, value: bytes | None) -> None:
        uscc, _, part = key.decode().partition(PartedStore.SEP)
        records = self.seen.records.setdefault(partition, {})
        record = records.get(uscc)
        if record is None:
            record = records[uscc] = EnterpriseRecord(uscc=uscc)
        apply_part(record, part, value)

    def _step(self, value: bytes, partition: int, offset: int) -> bool:
        """Note where a case step is; False for a deadline tick."""
        event_id = step_event_id(value)
        if event_id is not None:
            self.seen.steps[event_id] = (partition, offset)
        return event_id is not None

    def _add(self, topic: str, value: bytes, headers: dict[str, bytes]) -> None:
        seen = self.seen
        if topic == self.handled_topic:
            seen.handled.update(
                str(uuid.UUID(bytes=value[i : i + 16])) for i in range(0, len(value), 16)
            )
        elif topic == self.dead_topic:
            seen.deadletters[headers.get("bus.reason", b"?").decode()] += 1
        else:
            event_id = headers.get("event_id", b"").decode()
            seen.canonical[event_id] += 1
            if headers.get("source") == b"ks.bus":
                seen.decided.add(event_id)
            kind = headers.get("event_type", b"").decode()
            if kind == "certificate.issued":
                cert = self.codec.decode(value).payload
                seen.certificates.setdefault(cert.request_event_id, set()).add(
                    (event_id, cert.serial)
                )
            elif kind == "task.created":
                task = self.codec.decode(value)
                case = (str(task.causation_id), task.payload.assignee)
                seen.tasks.setdefault(case, set()).add(task.payload.task_id)

    async def until(self, done: Callable[[Seen], bool], stall: float, idle: float = 2.0) -> bool:
        """Read until ``done(seen)`` and ``idle`` quiet seconds; False after ``stall`` seconds
        in which nothing new was read.

        A wait for progress, not a clock budget: on a busy machine the workers are slow but
        keep writing. Six stalls' time bounds the whole, in case output never settles.
        """
        quiet = start = time.monotonic()
        while time.monotonic() - quiet < stall and time.monotonic() - start < 6 * stall:
            if await self.poll():
                quiet = time.monotonic()
            elif done(self.seen) and time.monotonic() - quiet >= idle:
                return True
        return False


@dataclass
class Handover:
    """What one hand-over round found. All but ``duplicates`` and ``takeover_s`` must be empty."""

    action: str
    published: int
    lost: set[str]  # published, never on its canonical topic
    unhandled: set[str]  # on a canonical topic, never made durable by the correlate agent
    duplicates: int  # extra canonical copies of departments' events: re-deliveries in the flow
    decision_copies: int  # extra copies of the bus's decisions (same id, same bytes): the case
    # engine decides a step again when a hand-over came before Faust committed its offset
    missing_certificates: set[str]  # requests without a certificate
    doubled_certificates: set[str]  # requests with two certificate ids or serials
    doubled_tasks: set[tuple[str, str]]  # (case, assignee) with two task ids
    incomplete_cases: set[str]  # registrations without their four opening tasks
    bad_records: dict[str, str]  # USCC -> what its record, as a next owner restores it, lacks
    parked: int  # requests of registered firms parked as unregistered: state not yet restored
    deadletters: Counter[str]  # by reason; only duplicate.event_id is expected
    takeover_s: list[float] = field(default_factory=list)
    stepped: dict[str, str] = field(default_factory=dict)  # missing certificates whose step
    # reached the case engine (the rest never left the flow) -> where, and the engine's offset
    settled: bool = True  # everything expected had come out before the verdict was drawn
    seed: int | None = None  # the round's random moments: the same seed acts at the same shares

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing skipped, nothing done twice."""
        unexpected = set(self.deadletters) - {"duplicate.event_id"}
        return not (self.lost or self.unhandled or self.missing_certificates
                    or self.doubled_certificates or self.doubled_tasks
                    or self.incomplete_cases or self.bad_records or self.parked
                    or unexpected)  # fmt: skip

    def summary(self) -> str:
        """One line for the bench's output and test failures."""
        return (
            f"{self.action}: {self.published} published, lost {len(self.lost)}, "
            f"skipped by correlate {len(self.unhandled)}, duplicates {self.duplicates}, "
            f"decision copies {self.decision_copies}, "
            f"certificates missing {len(self.missing_certificates)} "
            f"({len(self.stepped)} of them handed to the case engine"
            f"{': ' + ', '.join(self.stepped.values()) if self.stepped else ''}) / doubled "
            f"{len(self.doubled_certificates)}, tasks doubled {len(self.doubled_tasks)}, "
            f"cases incomplete {len(self.incomplete_cases)}, records wrong "
            f"{len(self.bad_records)}, parked {self.parked}, dead letters "
            f"{dict(self.deadletters)}, takeover {', '.join(f'{t:.1f}' for t in self.takeover_s)} s"
            + ("" if self.settled else "; output stalled before it was complete")
            + ("" if self.seed is None else f"; seed {self.seed}")
        )


def verdict(
    action: str,
    sc: Scenario,
    seen: Seen,
    takeover: list[float],
    logs: Iterable[Path],
    settled: bool = True,
) -> Handover:
    """Compare what was published with what came out, and what the workers logged."""
    published = {str(e.event_id) for e in sc.published}
    certificates = {
        str(r.event_id): seen.certificates.get(str(r.event_id), set()) for r in sc.requests
    }
    return Handover(
        action=action,
        published=len(published),
        lost=published - set(seen.canonical),
        unhandled=set(seen.canonical) - seen.handled,
        duplicates=sum(n - 1 for k, n in seen.canonical.items() if k not in seen.decided),
        decision_copies=sum(n - 1 for k, n in seen.canonical.items() if k in seen.decided),
        missing_certificates={k for k, v in certificates.items() if not v},
        stepped={
            k: "cases/{}@{}".format(*seen.steps[k])
            for k, v in certificates.items()
            if not v and k in seen.steps
        },
        settled=settled,
        doubled_certificates={
            k
            for k, v in certificates.items()
            if len({i for i, _ in v}) > 1
            or len({s for _, s in v}) > 1
            or any(i != str(derived_id("certificate", k)) for i, _ in v)
        },
        doubled_tasks={k for k, v in seen.tasks.items() if len(v) > 1},
        incomplete_cases={
            str(r.event_id)
            for r in sc.registrations
            if sum(1 for (case, _), ids in seen.tasks.items() if case == str(r.event_id))
            != OPENING_TASKS
        },
        bad_records=record_problems(sc, seen.records, seen.cases),
        parked=sum(p.read_text().count(" waits for the registration of ") for p in logs),
        deadletters=seen.deadletters,
        takeover_s=takeover,
    )


def record_problems(
    sc: Scenario,
    by_partition: dict[int, dict[str, EnterpriseRecord]],
    cases: dict[str, CaseState],
) -> dict[str, str]:
    """What is wrong with each enterprise's record and cases as their changelogs hold them."""
    records: dict[str, EnterpriseRecord] = {}
    problems: dict[str, str] = {}
    for part in by_partition.values():
        for uscc, record in part.items():
            if uscc in records:
                problems[uscc] = "in two partitions"
            records[uscc] = record
    for reg in sc.registrations:
        r = records.get(reg.subject)
        if r is None:
            problems[reg.subject] = "no record"
        elif r.status != "registered" or r.name != sc.names[reg.subject]:
            problems[reg.subject] = f"profile lost (status {r.status}, name {r.name})"
        elif r.waiting:
            problems[reg.subject] = f"{len(r.waiting)} requests still parked"
        elif (c := cases.get(reg.subject)) is None or (
            case_key("opening-a-business", str(reg.event_id)) not in c.reviews
        ):
            problems[reg.subject] = "opening case lost"
        elif len(c.tasks) != OPENING_TASKS:
            problems[reg.subject] = f"opening case has {len(c.tasks)} tasks"
    for uscc, imposed in sc.cases.items():
        r = records.get(uscc)
        missing = imposed - set(r.penalties if r is not None else ())
        if missing:
            problems[uscc] = f"{len(missing)} of {len(imposed)} penalties missing"
    for uscc, ids in sc.parked.items():
        r = records.get(uscc)
        kept = set(r.unrouted) if r is not None else set()  # parked by event id
        if ids - kept:
            problems[uscc] = f"{len(ids - kept)} of {len(ids)} parked penalties forgotten"
    return problems


def _complete(sc: Scenario) -> Callable[[Seen], bool]:
    published = {str(e.event_id) for e in sc.published}
    requests = {str(r.event_id) for r in sc.requests}

    def done(seen: Seen) -> bool:
        return (
            published <= set(seen.canonical)
            and set(seen.canonical) <= seen.handled
            and requests <= set(seen.certificates)
            and len(seen.tasks) >= OPENING_TASKS * len(sc.registrations)
        )

    return done


#: Seconds a hand-over round waits for the partitions to split, and for any new output while
#: it waits for the rest: generous, because a rebalance on a busy machine is slow, not stuck.
SPLIT_S = 120
STALL_S = 90
#: How a worker leaves in a hand-over: SIGTERM, SIGKILL, or SIGSTOP past the session timeout
#: (a zombie that is evicted, then SIGCONT and rejoins with its stale batch in hand).
ACTIONS = ("stop", "kill", "pause")


async def handover(
    bootstrap: str,
    tmp: Path,
    *,
    action: str = "stop",
    cycles: int = 2,
    firms: int = 200,
    penalty_count: int = 3000,
    seconds: float = 20.0,
    seed: int = 5,
    batched: bool = True,
    settings: dict[str, object] | None = None,
) -> Handover:
    """One round: two workers under load; stop, kill or pause one, bring it back, then the other.

    Each cycle acts at a random moment of its share of the stream (``seed``), waits until the
    survivor owns every partition (the take-over time), then brings the worker back (a join
    under load) and waits for the split; the next cycle acts on the other worker. After the
    last cycle a stopped or killed worker stays down; a paused one is resumed, so that what
    it does with its stale batch shows. ``settings`` overrides the workers' settings.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
    run = f"h{time.time_ns()}"
    s = group_settings(bootstrap, tmp, run, batched=batched)
    if settings:
        s = s.model_copy(update=settings)
    await create_topics(s)
    sc = scenario(firms, penalty_count, seed)
    rng = random.Random(seed)
    pair = workers(s, 2, tmp / run)
    takeover: list[float] = []
    async with Reader(s) as reader:
        try:
            await start_all(pair)
            await wait_split(s, pair, SPLIT_S)
            await Paced(s, sc.registrations, 0).run(chunks=10)
            opened = OPENING_TASKS * len(sc.registrations)
            if not await reader.until(lambda seen: len(seen.tasks) >= opened, STALL_S, idle=0):
                raise RuntimeError(f"registrations not handled:\n{pair[0].log()[-2000:]}")
            paced = Paced(s, sc.events, seconds)
            publishing = asyncio.create_task(paced.run())
            for c in range(cycles):
                victim, survivor = pair[c % 2], pair[(c + 1) % 2]
                share = (c + rng.random()) / cycles * 0.8  # somewhere in this cycle's share
                while paced.sent < len(sc.events) * share:
                    await reader.poll(50)
                paced.extend(15 + s.session_timeout)  # events keep coming through the take-over
                t0 = time.monotonic()
                if action == "kill":
                    victim.kill()
                elif action == "pause":
                    victim.pause()
                else:
                    stopping = asyncio.create_task(asyncio.to_thread(victim.stop))
                await wait_split(s, [survivor], SPLIT_S + s.session_timeout)
                takeover.append(time.monotonic() - t0)
                if action == "stop":
                    code = await stopping
                    if code != 0:
                        raise RuntimeError(f"worker stopped with {code}:\n{victim.log()[-2000:]}")
                if action == "pause":
                    victim.resume()  # wakes with a batch from partitions it no longer owns
                elif c < cycles - 1:
                    paced.extend(25)  # ... and through the rejoin
                    await asyncio.to_thread(victim.start)
                if action == "pause" or c < cycles - 1:
                    await wait_split(s, pair, SPLIT_S)
            await publishing
            settled = await reader.until(_complete(sc), STALL_S)
        finally:
            await stop_all(pair)
    logs = [p.log_file for p in pair]
    result = verdict(action, sc, reader.seen, takeover, logs, settled)
    result.seed = seed
    if result.stepped:  # had the engine's group committed past those steps?
        done = await committed(s, s.app_id, s.topic(CASES.name))
        for k, where in result.stepped.items():
            p = reader.seen.steps[k][0]
            result.stepped[k] = f"{where} (the engine's group committed {done.get(p)})"
    return result


async def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """A group's committed offsets on ``topic``, by partition."""
    admin = kafka_admin(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def handovers(args: argparse.Namespace) -> None:
    """``--handover`` rounds on one broker; each line says what was lost or doubled."""
    tmp = Path(tempfile.mkdtemp(prefix="bus-handover-"))
    broker = local_broker(args.engine, data_dir=tmp / "broker")
    broker.start()
    results = []
    try:
        print(f"{args.handover} rounds, {args.cycles} hand-overs each, "
              f"{args.batches or 'product'} batches ({load()})", flush=True)  # fmt: skip
        for r in range(1, args.handover + 1):
            h = await handover(
                broker.bootstrap, tmp, action=args.action, cycles=args.cycles, firms=args.firms,
                penalty_count=args.penalties, seconds=args.seconds, seed=r,
                batched=args.batches != "single",
            )  # fmt: skip
            results.append(h)
            print(f"round {r}: {'ok' if h.clean else 'FAILED'} {h.summary()}; {load()}", flush=True)
            for uscc, problem in list(h.bad_records.items())[:3]:
                print(f"   record {uscc}: {problem}", flush=True)
    finally:
        broker.stop(timeout=1)
    bad = sum(not h.clean for h in results)
    takeovers = [t for h in results for t in h.takeover_s]
    print(
        f"{bad} of {len(results)} rounds lost, skipped or doubled something; take-over median "
        f"{statistics.median(takeovers):.1f} s (max {max(takeovers):.1f}); logs in {tmp}"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", default="kafka", choices=LOCAL_ENGINES, help="local broker")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--events", type=int, default=20_000, help="penalties per throughput run")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds; medians reported")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batches", choices=["single", "product"], help="producer batches")
    p.add_argument("--handover", type=int, default=0, metavar="ROUNDS", help="hand-over rounds")
    p.add_argument(
        "--action", choices=ACTIONS, default="stop",
        help="how a worker leaves: SIGTERM, SIGKILL, or SIGSTOP past the session timeout",
    )  # fmt: skip
    p.add_argument("--cycles", type=int, default=2, help="hand-overs per round")
    p.add_argument("--firms", type=int, default=200, help="registrations and requests per round")
    p.add_argument("--penalties", type=int, default=4000, help="penalties per round")
    p.add_argument("--seconds", type=float, default=25.0, help="publishing time at least")
    ns = p.parse_args()
    asyncio.run(handovers(ns) if ns.handover else throughput(ns))
