"""The case engine as a Faust agent: throughput, CPU per step, and its guarantee under faults.

    python -m bench.cases                         # the eight variants on one local Kafka node
    python -m bench.cases --events 10000 --variants batch-alo-0 batch-eos-50
    python -m bench.cases --fault eos --kills 3   # the fault run of the integration test
    python -m bench.cases --variants naive-alo-50 batch-alo-50 --faust-metrics  # monitor cost
    python -m bench.cases worker --help           # one worker process (what the runs start)

**The engine.** Triggers (a case opened, a task done, a case closed) arrive on ``cases``
keyed by the enterprise's USCC. One agent keeps each enterprise's open cases and tasks in a
Faust table (``case-state``, keyed like the topic, changelog written by Faust) and writes one
decision per trigger to ``decisions``. A decision's id is ``uuid5`` of its trigger and its
content depends only on the trigger and the enterprise's state before it (no wall clock); the
state remembers the last outcomes it decided, so a re-delivered trigger gets the same bytes
again. A timer puts one deadline tick per owned partition on ``cases`` every second; the agent
answers it with a ``case.overdue`` decision (id ``uuid5`` of the case) for every open case whose
due day is behind the partition's latest trigger day.

**Variants.** ``naive``: one event at a time (``async for``), ``await topic.send`` per
decision. ``batch``: ``stream.take_events(--take, within=--within)``, ``send_soon`` per
decision. Each with ``processing_guarantee`` at_least_once (``alo``) or exactly_once
(``eos``), and producer linger 0 or 50 ms (the suffix, in ms).

**Measure.** For each variant a fresh topic set; ``--events`` triggers are published first,
then one worker starts; its span runs from its first decision to its last (record
timestamps), CPU of the worker and the broker is sampled from ``/proc`` over that span.

**Fault run** (``--fault``; tests/integration/test_case_engine_eos.py): two workers of one
group, triggers published at a steady rate, one worker SIGKILLed ``--kills`` times at random
moments (restarted once the other owns every partition and has moved on), then one frozen
(SIGSTOP) past its session timeout and woken (SIGCONT); afterwards ``decisions`` is read with
``read_committed`` and ``read_uncommitted`` and every trigger's decisions are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.cpu import CpuSampler

ROOT = Path(__file__).resolve().parent.parent
NS = uuid.UUID("5b0f3c8e-2d1a-4c4e-9a43-6f1e8a7d0c21")
"""Namespace of every id this engine derives (triggers, decisions, overdue notices)."""

TASKS = ("tax", "social-insurance", "town")
DUE_DAYS = 10
MEMO = 32
"""Outcomes an enterprise's state remembers: re-deliveries come from the last uncommitted
batches (seconds of triggers), a few per enterprise."""
ASSIGNED = "cases: partitions assigned"
READY = "cases: worker ready"
SESSION_TIMEOUT = 6.0


# ---- the domain: triggers in, one decision per trigger out -----------------------------------


def triggers(count: int, firms: int, seed: int) -> list[dict[str, Any]]:
    """``count`` triggers over ``firms`` enterprises, as the departments' systems would send them.

    Per enterprise: a case is opened, its tasks are done one by one (the last closes it), then
    the next case; one case in five is left open (its deadline passes) when the next one opens.
    The day advances with the stream, so deadlines fall due.
    """
    from bus.dev.samples import enterprise

    rng = random.Random(seed)
    usccs = [enterprise(rng).uscc for _ in range(firms)]
    progress: dict[str, tuple[int, int]] = {u: (0, len(TASKS)) for u in usccs}  # case, next task
    out = []
    for i in range(count):
        uscc = rng.choice(usccs)
        case, step = progress[uscc]
        if step >= len(TASKS) or (step > 0 and rng.random() < 0.05):
            case, step = case + 1, -1  # open the next case, abandoning an unfinished one
        if step == -1:
            trig = {"kind": "case.open", "case": f"{uscc}/{case}"}
        else:
            trig = {"kind": "task.done", "case": f"{uscc}/{case}", "task": TASKS[step]}
        progress[uscc] = (case, step + 1)
        trig.update(id=str(uuid.uuid5(NS, f"trigger/{seed}/{i}")), uscc=uscc, day=i // 200)
        out.append(trig)
    return out


def decision_id(trigger_id: str) -> str:
    """The one id of the decision a trigger causes."""
    return str(uuid.uuid5(NS, f"decision/{trigger_id}"))


def decide(state: dict[str, Any] | None, trig: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Apply one trigger to an enterprise's state; the new state and the decision (bytes).

    Pure: the same state and trigger give the same bytes. A trigger the state has already
    decided (a re-delivery after its effect was kept) gives its first outcome again.
    """
    state = state or {"day": 0, "cases": {}, "memo": {}}
    memo = state["memo"]
    outcome = memo.get(trig["id"])
    if outcome is None:
        cases = state["cases"]
        case = cases.get(trig["case"])
        if trig["kind"] == "case.open":
            if case is None:
                cases[trig["case"]] = {
                    "open": list(TASKS), "due": trig["day"] + DUE_DAYS, "overdue": False,
                }  # fmt: skip
                outcome = ["case.opened", trig["day"] + DUE_DAYS]
            else:
                outcome = ["rejected", "case.exists"]
        elif case is None or trig.get("task") not in case["open"]:
            outcome = ["rejected", "task.unknown"]
        else:
            case["open"].remove(trig["task"])
            if case["open"]:
                outcome = ["task.closed", len(case["open"])]
            else:
                del cases[trig["case"]]
                outcome = ["case.closed", 0]
        memo[trig["id"]] = outcome
        if len(memo) > MEMO:
            del memo[next(iter(memo))]
        state["day"] = max(state["day"], trig["day"])
    return state, _encode(
        {
            "id": decision_id(trig["id"]),
            "trigger": trig["id"],
            "uscc": trig["uscc"],
            "case": trig["case"],
            "kind": outcome[0],
            "detail": outcome[1],
            "day": trig["day"],
        }
    )


def expected(trigs: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """Decision id -> the one right document, decided in publishing order (each enterprise's
    triggers are on one partition, so every worker sees them in this order)."""
    states: dict[str, dict[str, Any]] = {}
    out = {}
    for t in trigs:
        states[t["uscc"]], doc = decide(states.get(t["uscc"]), t)
        out[decision_id(t["id"])] = doc
    return out


def overdue(uscc: str, state: dict[str, Any], today: int) -> list[bytes]:
    """Overdue notices for the enterprise's open cases whose due day is before ``today``;
    marks them so each is noticed once."""
    out = []
    for name, case in state["cases"].items():
        if case["due"] < today and not case["overdue"]:
            case["overdue"] = True
            out.append(
                _encode(
                    {
                        "id": str(uuid.uuid5(NS, f"overdue/{name}")),
                        "trigger": None,
                        "uscc": uscc,
                        "case": name,
                        "kind": "case.overdue",
                        "detail": case["due"],
                        "day": case["due"],
                    }
                )
            )
    return out


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# ---- the Faust app ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """One worker's settings; every worker of a group gets the same."""

    broker: str
    app_id: str
    partitions: int = 6
    guarantee: str = "at_least_once"
    linger: float = 0.0
    mode: str = "batch"  # or "naive"
    take: int = 500
    within: float = 0.05
    tick: float = 1.0
    datadir: str = "."
    consistency_check: bool = True
    faust_metrics: bool = False  # bus.streaming.faust_metrics.observe, as the bus's worker does

    def topic(self, name: str) -> str:
        return f"{self.app_id}.{name}"

    def argv(self) -> list[str]:
        return [
            "--broker", self.broker, "--app-id", self.app_id,
            "--partitions", str(self.partitions), "--guarantee", self.guarantee,
            "--linger", str(self.linger), "--mode", self.mode, "--take", str(self.take),
            "--within", str(self.within), "--tick", str(self.tick), "--datadir", self.datadir,
            *([] if self.consistency_check else ["--no-consistency-check"]),
            *(["--faust-metrics"] if self.faust_metrics else []),
        ]  # fmt: skip


def make_app(cfg: EngineConfig) -> Any:
    """The case engine: one agent, one table, one timer."""
    import faust

    app = faust.App(
        cfg.app_id,
        broker=f"kafka://{cfg.broker}",
        autodiscover=False,
        store="memory://",
        datadir=cfg.datadir,
        processing_guarantee=cfg.guarantee,
        topic_partitions=cfg.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        producer_linger=cfg.linger,
        stream_wait_empty=False,
        web_enabled=False,
        recovery_consistency_check=cfg.consistency_check,
    )
    if cfg.faust_metrics:
        from prometheus_client import CollectorRegistry

        from bus.streaming.faust_metrics import observe

        observe(app, CollectorRegistry())
    cases = app.topic(cfg.topic("cases"), key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")  # fmt: skip
    decisions = app.topic(cfg.topic("decisions"), key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")  # fmt: skip
    # Keyed by the partitioner over the raw USCC bytes, as the topic is: the changelog record of
    # an enterprise goes to its trigger's partition number. Faust's default (the partition of
    # "the current event") is the batch's last event inside take(); a str key would be
    # JSON-encoded (quoted), hashing to another partition.
    table = app.Table("case-state", default=None, use_partitioner=True, key_type=bytes)
    naive = cfg.mode == "naive"

    def step(event: Any) -> list[tuple[bytes, bytes]]:
        trig = json.loads(event.value)
        if trig["kind"] == "tick":
            return tick(event.message.partition)
        key = trig["uscc"].encode()
        state, decision = decide(table.get(key), trig)
        table[key] = state
        return [(key, decision)]

    def tick(partition: int) -> list[tuple[bytes, bytes]]:
        mine = [(k, v) for k, v in table.items() if v is not None and _partition(k) == partition]
        today = max((v["day"] for _, v in mine), default=0)
        out = []
        for key, state in mine:
            notices = overdue(key.decode(), state, today)
            if notices:
                table[key] = state
                out += [(key, n) for n in notices]
        return out

    partitioner: dict[bytes, int] = {}

    def _partition(key: bytes) -> int:
        p = partitioner.get(key)
        if p is None:
            from aiokafka.partitioner import murmur2

            p = partitioner[key] = (murmur2(key) & 0x7FFFFFFF) % cfg.partitions
        return p

    @app.agent(cases)
    async def engine(stream: Any) -> None:
        if naive:
            async for event in stream.events():
                for key, value in step(event):
                    await decisions.send(key=key, value=value)
            return
        async for batch in stream.take_events(cfg.take, within=cfg.within):
            for event in batch:
                for key, value in step(event):
                    decisions.send_soon(key=key, value=value)

    @app.timer(cfg.tick)
    async def deadlines() -> None:
        mine = sorted(
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == cases.get_topic_name()
        )
        for p in mine:
            try:
                await cases.send(key=b"~tick", value=b'{"kind":"tick"}', partition=p)
            except Exception as exc:  # a partition lost while ticking: its new owner ticks
                logging.getLogger("cases").info("tick to %s skipped: %r", p, exc)

    @app.on_partitions_assigned.connect
    async def assigned(app: Any, assigned: set[Any], **_: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == cases.get_topic_name())
        logging.getLogger("cases").warning("%s %s", ASSIGNED, mine)

    @app.task
    async def ready() -> None:
        logging.getLogger("cases").warning(READY)

    return app


def run_worker(cfg: EngineConfig) -> None:
    """Run one worker in this process until SIGTERM."""
    import faust

    app = make_app(cfg)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# ---- processes and topics --------------------------------------------------------------------


class Worker:
    """One worker child process (``python -m bench.cases worker``), its output in a log."""

    def __init__(self, cfg: EngineConfig, log: Path) -> None:
        self.cfg = cfg
        self.log_file = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._mark = 0

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._mark = self.log_file.stat().st_size if self.log_file.exists() else 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.cases", "worker", *self.cfg.argv()],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            )  # fmt: skip

    def log(self) -> str:
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(self._mark)
            return f.read().decode(errors="replace")

    def owned(self) -> list[int] | None:
        """Partitions of ``cases`` this run last said it owns; None before its first assignment."""
        lines = [ln for ln in self.log().splitlines() if ASSIGNED in ln]
        return json.loads(lines[-1].split(ASSIGNED, 1)[1]) if lines else None

    def assignments(self) -> int:
        return self.log().count(ASSIGNED)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Faust commits and ends its transactions), SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen worker cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def create(bootstrap: str, cfg: EngineConfig) -> None:
    """The engine's source and output topics, same partition count (Faust makes its changelog)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(cfg.topic(n), cfg.partitions, 1) for n in ("cases", "decisions")]
        )
    finally:
        await admin.close()


async def publish(
    bootstrap: str, topic: str, trigs: Sequence[dict[str, Any]], rate: float = 0
) -> None:
    """Publish triggers keyed by USCC (``rate`` per second, 0: as fast as possible)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        start = time.monotonic()
        for i, t in enumerate(trigs):
            await producer.send(topic, _encode(t), key=t["uscc"].encode())
            if rate and i % 20 == 19:
                ahead = start + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Read:
    """Decisions as one isolation level shows them."""

    per_id: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    by_trigger: Counter[str] = field(default_factory=Counter)
    first_ts: float = float("inf")
    last_ts: float = 0.0

    def add(self, value: bytes, ts_ms: int) -> None:
        doc = json.loads(value)
        self.per_id[doc["id"]].append(value)
        if doc["trigger"] is not None:
            self.by_trigger[doc["trigger"]] += 1
            self.first_ts = min(self.first_ts, ts_ms / 1000)
            self.last_ts = max(self.last_ts, ts_ms / 1000)

    @property
    def records(self) -> int:
        return sum(len(v) for v in self.per_id.values())

    @property
    def duplicates(self) -> int:
        """Records beyond the first of each decision id."""
        return sum(len(v) - 1 for v in self.per_id.values())

    @property
    def conflicting(self) -> set[str]:
        """Decision ids seen with more than one content."""
        return {k for k, v in self.per_id.items() if len(set(v)) > 1}


@contextlib.asynccontextmanager
async def tail(bootstrap: str, topic: str, isolation: str) -> AsyncIterator[Read]:
    """Follow ``topic`` from the start in the background; the ``Read`` grows as records come."""
    read = Read()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level=isolation, group_id=None,
    )  # fmt: skip
    await consumer.start()

    async def follow() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for r in records:
                    read.add(r.value, r.timestamp)

    task = asyncio.create_task(follow())
    try:
        yield read
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, isolation: str, within: float = 60) -> Read:
    """Everything on ``topic`` up to its end (the last stable offset for read_committed)."""
    read = Read()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        isolation_level=isolation, group_id=None,
    )  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + within
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} ({isolation}) not read to its end in {within} s")
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for r in records:
                    read.add(r.value, r.timestamp)
    finally:
        await consumer.stop()
    return read


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    """Wait for ``condition`` (checked 10 times a second) or fail naming ``what``."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.1)


# ---- throughput --------------------------------------------------------------------------------

VARIANTS = {
    "naive-alo-0": ("naive", "at_least_once", 0.0),
    "naive-alo-50": ("naive", "at_least_once", 0.05),
    "naive-eos-0": ("naive", "exactly_once", 0.0),
    "naive-eos-50": ("naive", "exactly_once", 0.05),
    "batch-alo-0": ("batch", "at_least_once", 0.0),
    "batch-alo-50": ("batch", "at_least_once", 0.05),
    "batch-eos-0": ("batch", "exactly_once", 0.0),
    "batch-eos-50": ("batch", "exactly_once", 0.05),
}


OBSERVED = "+faust-metrics"


async def measure(
    bootstrap: str, broker_pid: int | None, name: str, trigs: list[dict[str, Any]],
    tmp: Path, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """One variant: a fresh topic set, the triggers first, then one worker until all decided."""
    mode, guarantee, linger = VARIANTS[name.removesuffix(OBSERVED)]
    cfg = EngineConfig(
        bootstrap, f"cb{uuid.uuid4().hex[:8]}", args.partitions, guarantee, linger, mode,
        args.take, args.within, datadir=str(tmp / name), faust_metrics=name.endswith(OBSERVED),
    )  # fmt: skip
    await create(bootstrap, cfg)
    await publish(bootstrap, cfg.topic("cases"), trigs)
    worker = Worker(cfg, tmp / f"{name}.log")
    pids = {"worker": [], "broker": [broker_pid] if broker_pid else []}
    try:
        worker.start()
        pids["worker"].append(worker.pid)
        async with CpuSampler(pids) as cpu, tail(bootstrap, cfg.topic("decisions"),
                                                  "read_committed") as seen:  # fmt: skip
            ids = {t["id"] for t in trigs}
            await until(
                lambda: len(seen.by_trigger) >= len(ids) or not worker.running,
                args.timeout,
                f"{name}: every trigger decided",
            )
        if not worker.running:
            raise RuntimeError(f"{name}: worker exited:\n{worker.log()[-3000:]}")
        span = seen.last_ts - seen.first_ts
        used = cpu.between(seen.first_ts, seen.last_ts)
    finally:
        worker.stop()
    n = len(trigs)
    return {
        "variant": name, "steps": n, "seconds": span, "steps_s": n / span if span else 0,
        "worker_us": used["worker"] / n * 1e6, "broker_us": used["broker"] / n * 1e6,
        "duplicates": seen.duplicates,
    }  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    head = "| variant | steps/s per worker | worker CPU per step | broker CPU per step | dup |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['steps_s']:,.0f} | {r['worker_us']:,.0f} µs | "
            f"{r['broker_us']:,.0f} µs | {r['duplicates']} |"
        )
    return "\n".join(lines)


# ---- the fault run -----------------------------------------------------------------------------


@dataclass
class FaultResult:
    guarantee: str
    triggers: int
    kills: int = 0
    pauses: int = 0
    crashes: int = 0
    committed: Read = field(default_factory=Read)
    uncommitted: Read = field(default_factory=Read)
    events: list[str] = field(default_factory=list)
    worker_errors: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    right: dict[str, bytes] = field(default_factory=dict)

    @property
    def lost(self) -> set[str]:
        return self.ids - set(self.committed.by_trigger)

    @property
    def doubled(self) -> set[str]:
        """Triggers with more than one committed decision record."""
        return {t for t, n in self.committed.by_trigger.items() if n > 1}

    @property
    def wrong(self) -> set[str]:
        """Committed decisions whose content is not what the triggers before them decide."""
        return {
            k
            for k, v in self.committed.per_id.items()
            if k in self.right and {self.right[k]} != set(v)
        }

    def summary(self) -> str:
        c, u = self.committed, self.uncommitted
        return (
            f"{self.guarantee}: {self.triggers} triggers, {self.kills} kills, {self.pauses} "
            f"pauses, {self.crashes} crashes (restarted); read_committed: {c.records} records, "
            f"{len(self.lost)} triggers without "
            f"a decision, {len(self.doubled)} with more than one ({c.duplicates} extra records), "
            f"{len(c.conflicting)} ids with two contents, {len(self.wrong)} decided on wrong "
            f"state; read_uncommitted: {u.records} records, "
            f"{u.duplicates} extra, {len(u.conflicting)} ids with two contents; "
            f"overdue notices {sum(1 for k, v in c.per_id.items() if b'overdue' in v[0])}\n"
            + "".join(
                f"\nwrong: {self.committed.per_id[k][0].decode()}\n right: {self.right[k].decode()}"
                for k in sorted(self.wrong)[:3]
            )
            + "\n"
            + "\n".join(self.events)
            + ("\nworker errors:\n" + "\n".join(self.worker_errors) if self.worker_errors else "")
        )


_ERRORS = ("Traceback", "ERROR", "Crashed", "ProducerFenced", "KafkaError", "fenced")


async def fault_run(
    bootstrap: str, tmp: Path, *, guarantee: str, count: int = 6000, rate: float = 250,
    kills: int = 3, pause: bool = True, seed: int = 1, firms: int = 300, within: float = 240,
    consistency_check: bool = True,
) -> FaultResult:  # fmt: skip
    """Two workers; ``kills`` SIGKILLs at random moments and one SIGSTOP past the session timeout.

    Every wait is for a condition: a worker owning partitions, decisions moving on. A worker
    that exits by itself is restarted at once, as a supervisor would, and counted.
    """
    rng = random.Random(seed)
    cfg = EngineConfig(bootstrap, f"cf{uuid.uuid4().hex[:8]}", 6, guarantee, 0.05,
                       datadir=str(tmp / "data"), consistency_check=consistency_check)  # fmt: skip
    await create(bootstrap, cfg)
    trigs = triggers(count, firms, seed)
    result = FaultResult(guarantee, count, ids={t["id"] for t in trigs}, right=expected(trigs))
    workers = [Worker(cfg, tmp / f"worker{i}.log") for i in range(2)]
    t0 = time.monotonic()

    def note(what: str) -> None:
        result.events.append(f"{time.monotonic() - t0:6.1f} s  {what}")

    def owns_all(w: Worker) -> bool:
        return w.owned() == list(range(cfg.partitions))

    down: set[int] = set()  # killed on purpose, not yet restarted

    async def supervise() -> None:
        while True:
            for i, w in enumerate(workers):
                if i not in down and not w.running:
                    result.crashes += 1
                    note(
                        f"worker{i} exited by itself (code {w.proc and w.proc.returncode}): restart"
                    )
                    w.start()
            await asyncio.sleep(0.2)

    supervisor = None
    try:
        for w in workers:
            w.start()
        supervisor = asyncio.create_task(supervise())
        await until(lambda: all(w.owned() for w in workers), 120, "two workers split the group")
        note(f"split {[w.owned() for w in workers]}")
        feeding = asyncio.create_task(publish(bootstrap, cfg.topic("cases"), trigs, rate))
        async with tail(bootstrap, cfg.topic("decisions"), "read_uncommitted") as seen:

            async def moved_on(n: int, what: str) -> None:
                mark = len(seen.by_trigger)
                await until(lambda: len(seen.by_trigger) >= min(mark + n, count), within, what)

            marks = sorted(rng.uniform(0.1, 0.7) * count for _ in range(kills))
            for k, mark in enumerate(marks):
                await until(lambda m=mark: len(seen.by_trigger) >= m, within, "kill mark")
                victim, other = (workers[k % 2], workers[1 - k % 2])
                down.add(k % 2)
                victim.kill()
                result.kills += 1
                note(f"SIGKILL worker{workers.index(victim)} at {len(seen.by_trigger)} decided")
                await until(lambda o=other: owns_all(o), within, "survivor owns every partition")
                await moved_on(100, "decisions move on after the kill")
                note(f"worker{workers.index(other)} took over, {len(seen.by_trigger)} decided")
                victim.start()
                down.discard(k % 2)
                await until(lambda v=victim: bool(v.owned()), within, "restarted worker rejoins")
                note(f"worker{workers.index(victim)} rejoined: {victim.owned()}")
            if pause:
                victim, other = workers
                await moved_on(100, "decisions move on before the pause")
                victim.signal(signal.SIGSTOP)
                result.pauses += 1
                note(f"SIGSTOP worker0 at {len(seen.by_trigger)} decided")
                await until(lambda: owns_all(other), within, "other worker evicts the frozen one")
                await moved_on(100, "decisions move on while worker0 is frozen")
                note(f"worker1 owns all, {len(seen.by_trigger)} decided; SIGCONT worker0")
                before = victim.assignments()
                victim.signal(signal.SIGCONT)
                await until(lambda: victim.assignments() > before or not victim.running, within,
                            "the woken worker rejoins")  # fmt: skip
                note(f"worker0 woke: running={victim.running}, owns {victim.owned()}")
            await feeding
            note("all triggers published")
            async with tail(bootstrap, cfg.topic("decisions"), "read_committed") as committed:
                try:
                    await until(lambda: result.ids <= set(committed.by_trigger), 120,
                                "every trigger has a committed decision")  # fmt: skip
                except TimeoutError as exc:
                    note(str(exc))
            note("stopping workers")
    finally:
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for w in workers:
            w.signal(signal.SIGCONT)
        for w in workers:
            w.stop()
        for i, w in enumerate(workers):
            text = w.log_file.read_text(errors="replace") if w.log_file.exists() else ""
            result.worker_errors += [
                f"worker{i}: {ln.strip()[:300]}" for ln in text.splitlines()
                if any(e in ln for e in _ERRORS)
            ][:40]  # fmt: skip
    note("workers stopped")
    result.committed = await read_all(bootstrap, cfg.topic("decisions"), "read_committed")
    result.uncommitted = await read_all(bootstrap, cfg.topic("decisions"), "read_uncommitted")
    return result


# ---- command line ------------------------------------------------------------------------------


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cases worker")
    p.add_argument("--broker", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--guarantee", default="at_least_once")
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--mode", default="batch", choices=["batch", "naive"])
    p.add_argument("--take", type=int, default=500)
    p.add_argument("--within", type=float, default=0.05)
    p.add_argument("--tick", type=float, default=1.0)
    p.add_argument("--datadir", default=".")
    p.add_argument("--no-consistency-check", dest="consistency_check", action="store_false")
    p.add_argument("--faust-metrics", action="store_true")
    run_worker(EngineConfig(**vars(p.parse_args(argv))))


async def main(args: argparse.Namespace) -> None:
    from bus.dev.kafka_local import KafkaCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-cases-"))
    print(f"logs and data in {tmp}", flush=True)
    cluster = None
    try:
        if args.broker:
            bootstrap, broker_pid = args.broker, args.broker_pid
        else:
            cluster = KafkaCluster(1, data_dir=tmp / "kafka")
            cluster.start()
            bootstrap, broker_pid = cluster.bootstrap, cluster.pid
        if args.fault:
            for g in args.fault:
                res = await fault_run(
                    bootstrap, tmp / g, guarantee=g, count=args.events, rate=args.rate,
                    kills=args.kills, seed=args.seed, consistency_check=args.consistency_check,
                )  # fmt: skip
                print(res.summary(), flush=True)
            return
        trigs = triggers(args.events, args.firms, args.seed)
        rows = []
        names = args.variants
        if args.faust_metrics:  # each variant without, then with the monitor, in turn
            names = [n for v in args.variants for n in (v, v + OBSERVED)]
        for name in names:
            rows.append(await measure(bootstrap, broker_pid, name, trigs, tmp, args))
            print(f"{name}: {rows[-1]['steps_s']:,.0f} steps/s, "
                  f"{rows[-1]['worker_us']:,.0f} µs worker CPU per step", flush=True)  # fmt: skip
        print(f"\n{args.events} triggers, {args.firms} enterprises, {args.partitions} partitions, "
              f"take({args.take}, within={args.within}); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")  # fmt: skip
        print(table(rows))
    finally:
        if cluster is not None:
            cluster.stop()


def cli() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="triggers per variant")
    p.add_argument("--firms", type=int, default=1_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--take", type=int, default=500)
    p.add_argument("--within", type=float, default=0.05)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--timeout", type=float, default=300.0, help="per variant, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--broker", help="host:port of a running Kafka (default: start one node)")
    p.add_argument("--broker-pid", type=int, help="its process id, to sample its CPU")
    p.add_argument("--fault", nargs="*", choices=["at_least_once", "exactly_once"],
                   help="the fault run instead, for these guarantees")  # fmt: skip
    p.add_argument("--kills", type=int, default=3)
    p.add_argument(
        "--no-consistency-check",
        dest="consistency_check",
        action="store_false",
        help="Faust's recovery_consistency_check off (it crashes exactly_once workers)",
    )
    p.add_argument("--rate", type=float, default=250.0, help="fault run: triggers per second")
    p.add_argument(
        "--faust-metrics",
        action="store_true",
        help="run each variant also with Faust's Prometheus monitor (bus.streaming.faust_metrics)",
    )
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
