"""The case engine alone (``bus/agents/cases/``): case steps/s and CPU per step, beside raw.

    python -m bench.case_engine                       # Apache Kafka, 1 then 2 workers
    python -m bench.case_engine --steps 20000 --workers 1
    python -m bench.case_engine --within 0.005 0.05   # BUS_CASE_BATCH_WAIT, side by side
    python -m bench.case_engine --profile             # py-spy on the (first) worker too
    python -m bench.case_engine --workers 1 --batch 500 1   # beside the naive agent

1 000 enterprises are registered, a share of them penalised (``--penalised``); their records
are built here as the flow would hand them on. A backlog of ``--steps`` case steps is
published straight to ``<prefix>.cases``, keyed by USCC, once the workers (only the ``cases``
agent) own their partitions. Three kinds, in the log's order per enterprise:

- a certificate request for a clean enterprise: decided at once (a certificate);
- a request for a penalised enterprise: a review case opens (a ``task.created``);
- the penalty bureau's ``task.completed`` for that review (a few steps later): the case
  closes and a certificate is issued after review.

Half the steps are clean requests, a quarter reviews opened, a quarter answers. The time runs
from the first decision to the last, by record timestamps of the certificates and tasks the
engine commits; CPU of the workers and the broker over that span (``bench/cpu.py``). The raw
loop (``bench/raw_loop.py``) runs over as many events in the same run, for reference.
``--batch 1`` is the naive agent, the same code taking one step at a time: one ``take`` per
event, and its write (a transaction when it changes state) awaited before the next.

``--matter five-steps`` measures a matter of five steps instead (``FIVE_STEPS``, written in
the matter language): an application opens a case whose five departments are asked one
after another, each answer starting the next task, the fifth deciding the application. Each
case is six case steps (the application and five answers); the figure is cases/s, from the
first decision or task to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from bench.cpu import CpuSampler, per_event
from bench.ingest import Msg, drain, encode
from bench.pipeline import Measured, _broker, publish_batches, raw_throughput
from bench.scaleout import group_settings, load, start_all
from bus.agents.cases import case_id, encode_step, task_id_for
from bus.dev.kafka_local import LOCAL_ENGINES, local_broker
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.matters import load_matters
from bus.domain.record import EnterpriseRecord
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from bus.streaming.topics import CASES, create_topics

certificate_matter = load_matters()["compliance-certificate"]

FIVE_STEPS = """
name: five-steps
version: 1
title: Five departments in turn (a benchmark)
trigger: application.submitted
correlation: subject
lead: ks.amr
requires_registration: true
when: {trigger.matter: five-steps}
tasks:
  - {name: s1, assignee: ks.tax, title: "1 of {trigger.application_number}", working_days: 5}
  - {name: s2, assignee: ks.hrss, after: [s1], title: "2 of {trigger.application_number}",
     working_days: 5}
  - {name: s3, assignee: ks.housingfund, after: [s2], title: "3 of {trigger.application_number}",
     working_days: 5}
  - {name: s4, assignee: ks.banking, after: [s3], title: "4 of {trigger.application_number}",
     working_days: 5}
  - {name: s5, assignee: ks.amr, after: [s4], title: "5 of {trigger.application_number}",
     working_days: 5}
outcomes:
  - result: done
    emit:
      event: application.decided
      payload: {matter: five-steps, application_number: "{trigger.application_number}",
                result: done}
"""
FIVE = [("s1", "ks.tax"), ("s2", "ks.hrss"), ("s3", "ks.housingfund"), ("s4", "ks.banking"),
        ("s5", "ks.amr")]  # fmt: skip

FIRMS = 1000
KEPT_HEADERS = ("event_type", "event_id", "correlation_id")


def _step(kind: str, event: Envelope, record: EnterpriseRecord, at: datetime) -> Msg:
    """One case step as the flow writes it (``CorrelateAgent._step``)."""
    value = CODEC.encode(event)
    headers = event.kafka_headers()
    step = encode_step(kind, at, value, headers, "", record)  # type: ignore[arg-type]
    kept = [(k, v) for k, v in headers if k in KEPT_HEADERS]
    return event.subject.encode(), step, kept, str(event.event_id)


CODEC = EventCodec()


def backlog(steps: int, penalised: float, seed: int = 5) -> tuple[list[Msg], int, int]:
    """``steps`` case steps; returns them, the certificates and the tasks they lead to."""
    rng = random.Random(seed)
    firms = [enterprise(rng) for _ in range(FIRMS)]
    records: dict[str, EnterpriseRecord] = {}
    at = datetime(2026, 11, 2, 1, tzinfo=UTC)
    for i, f in enumerate(firms):
        record = EnterpriseRecord(uscc=f.uscc)
        record.apply(registered(f, rng, at))
        if i < FIRMS * penalised:
            record.apply(penalty(f, rng, n=i + 1, decided_on=date(2026, 3, 1)))
        records[f.uscc] = record
    clean = firms[int(FIRMS * penalised) :]
    fined = firms[: int(FIRMS * penalised)]
    request = model_for("certificate.requested")
    done = model_for("task.completed")

    def ask(uscc: str) -> Envelope:
        return request(
            event_type="certificate.requested", source="ks.finance", subject=uscc,
            occurred_at=at, payload={
                "period_start": date(2024, 1, 1), "period_end": date(2026, 10, 31),
                "purpose": "financing", "requested_by": "ks.finance", "applicant": "李娜"},
        )  # fmt: skip

    out: list[Msg] = []
    waiting: list[tuple[int, Envelope]] = []  # reviews opened, answered 8 steps later
    certificates = tasks = 0
    while len(out) < steps:
        at += timedelta(milliseconds=10)
        if waiting and waiting[0][0] <= len(out):
            _, req = waiting.pop(0)
            record = records[req.subject]
            agency = next(iter(record.penalties.values())).agency or ""
            case = case_id(certificate_matter, req)
            task_id = task_id_for("review", case, agency)
            answer = done(
                event_type="task.completed", source=agency, subject=req.subject,
                occurred_at=at, correlation_id=req.correlation_id, causation_id=req.event_id,
                payload={"task_id": task_id, "outcome": "confirmed"},
            )  # fmt: skip
            out.append(_step("answer", answer, record, at))
            certificates += 1
        elif len(out) % 4 == 1 and len(out) + 9 < steps:
            req = ask(rng.choice(fined).uscc)
            out.append(_step("trigger", req, records[req.subject], at))
            waiting.append((len(out) + 8, req))
            tasks += 1
        else:
            req = ask(rng.choice(clean).uscc)
            out.append(_step("trigger", req, records[req.subject], at))
            certificates += 1
    return out, certificates, tasks


def five_step_backlog(cases: int, matters: Path, seed: int = 5) -> list[Msg]:
    """``cases`` applications of the five-step matter with their five answers each, the cases
    interleaved at random, each case's steps in order; the matter is written to ``matters``."""
    matters.mkdir(parents=True, exist_ok=True)
    (matters / "five-steps.yaml").write_text(FIVE_STEPS, encoding="utf-8")
    matter = load_matters(matters)["five-steps"]
    rng = random.Random(seed)
    firms = [enterprise(rng) for _ in range(FIRMS)]
    at = datetime(2026, 11, 2, 1, tzinfo=UTC)
    records: dict[str, EnterpriseRecord] = {}
    for f in firms:
        records[f.uscc] = EnterpriseRecord(uscc=f.uscc)
        records[f.uscc].apply(registered(f, rng, at))
    applied = model_for("application.submitted")
    done = model_for("task.completed")
    sequences: list[list[tuple[str, Envelope]]] = []
    for n in range(cases):
        uscc = rng.choice(firms).uscc
        app = applied(
            event_type="application.submitted", source="ks.amr", subject=uscc, occurred_at=at,
            payload={"matter": "five-steps", "application_number": f"KS-B5-2026-{n:06d}",
                     "applicant": "李娜", "requested_by": "ks.amr", "submitted_on": at.date()},
        )  # fmt: skip
        case = case_id(matter, app)
        answers = [
            ("answer", done(event_type="task.completed", source=dept, subject=uscc,
                            occurred_at=at, payload={"task_id": task_id_for(name, case, dept),
                                                     "outcome": "done"}))
            for name, dept in FIVE
        ]  # fmt: skip
        sequences.append([("trigger", app), *answers])
    out: list[Msg] = []
    while sequences:
        i = rng.randrange(len(sequences))
        kind, event = sequences[i].pop(0)
        if not sequences[i]:
            sequences.pop(i)
        at += timedelta(milliseconds=2)
        out.append(_step(kind, event, records[event.subject], at))
    return out


async def stable(settings: Settings, members: int, seconds: float = 90.0) -> None:
    """Wait until the case engine's consumer group is stable with ``members`` members."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers[0])
    await admin.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            (group,) = await admin.describe_consumer_groups([settings.app_id])
            desc = group.groups[0] if hasattr(group, "groups") else None
            if desc is not None and desc[2] == "Stable" and len(desc[5]) == members:
                return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise RuntimeError(f"the cases group did not settle with {members} members in {seconds}s")


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on a worker for ``seconds``: its collapsed stacks are written to ``out``."""
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
           "200", "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def engine_throughput(
    bootstrap: str, tmp: Path, steps: list[Msg], expect: dict[str, int], workers: int,
    within: float, args: argparse.Namespace, broker_pid: int | None, batch: int = 500,
    matters: Path | None = None,
) -> Measured:  # fmt: skip
    """Case steps/s of ``workers`` workers running only the case engine over ``steps``.

    ``within`` is their ``BUS_CASE_BATCH_WAIT``, ``batch`` their ``BUS_BATCH_SIZE``;
    ``expect``: how many records each canonical topic (``events.<family>``) gets, the first
    the decisions; ``matters``: the workers' ``BUS_MATTERS_DIR``.
    """
    run = f"c{time.time_ns()}"
    settings = group_settings(bootstrap, tmp, run, partitions=args.partitions)
    settings = settings.model_copy(update={
        "agents": ["cases"], "case_batch_wait": within, "task_check_interval": 60.0,
        "batch_size": batch, "matters_dir": matters,
    })  # fmt: skip
    await create_topics(settings)
    procs = [
        WorkerProcess(settings.model_copy(update={"data_dir": settings.data_dir.parent / f"w{i}"}),
                      tmp / f"{run}-worker-{i}.log")
        for i in range(workers)
    ]  # fmt: skip
    spy = None
    try:
        await start_all(procs)
        await stable(settings, workers)
        await asyncio.sleep(1.0)  # the producers of the partitions are started on assignment
        pids = [p.proc.pid for p in procs if p.proc]
        groups = {"worker": pids, **_broker(broker_pid)}
        if args.profile:
            spy = profile(pids[0], args.profile_seconds, tmp / f"{run}.pyspy.txt")
        async with CpuSampler(groups) as cpu:
            await publish_batches(bootstrap, settings.topic(CASES.name), steps)
            (main, n), *rest = expect.items()
            got = await drain(bootstrap, settings.topic(main), n, 600)
        for topic, n in rest:
            got += await drain(bootstrap, settings.topic(topic), n, 60)
    finally:
        for proc in procs:
            proc.stop()
        if spy is not None:
            spy.wait(60)
    stamps = sorted(ts for _, ts, _ in got)
    first, last = stamps[0] / 1000, stamps[-1] / 1000
    if spy is not None:
        print(f"   py-spy of worker 0: {tmp / f'{run}.pyspy.txt'}", flush=True)
    return Measured(len(steps) / (last - first), len(steps), cpu.between(first, last))


async def main(args: argparse.Namespace) -> None:
    """Build the backlog, run the raw loop and the case engine with 1 (and 2) workers."""
    tmp = Path(tempfile.mkdtemp(prefix="bus-cases-"))
    matters: Path | None = None
    if args.matter == "five-steps":
        matters = tmp / "matters"
        cases = args.steps // 6
        steps = five_step_backlog(cases, matters)
        expect = {"events.application": cases, "events.task": 5 * cases}
        what = f"{cases} cases of five steps"
    else:
        steps, certificates, tasks = backlog(args.steps, args.penalised)
        expect = {"events.certificate": certificates, "events.task": tasks}
        what = f"{certificates} certificates and {tasks} reviews"
    broker = local_broker(args.engine, data_dir=tmp / "broker")
    broker.start()
    try:
        bootstrap = broker.bootstrap
        print(f"{len(steps)} case steps: {what} to decide ({load()}, logs {tmp})", flush=True)
        raw = await raw_throughput(bootstrap, tmp, encode(len(steps), 1), args.partitions, 1,
                                   broker_pid=broker.pid)  # fmt: skip
        print(f"raw loop, 1 process: {raw.eps:.0f} events/s; CPU per event: "
              f"{raw.cpu_per_event()} ({load()})", flush=True)  # fmt: skip
        runs = [(n, w, b) for n in args.workers for w in args.within for b in args.batch]
        for n, within, batch in runs:
            got = await engine_throughput(bootstrap, tmp, steps, expect, n, within, args,
                                          broker.pid, batch, matters)  # fmt: skip
            per_case = f" ({got.eps / 6:.0f} cases/s)" if matters is not None else ""
            print(
                f"case engine, {n} worker(s), batch {batch}, wait {within * 1000:.0f} ms: "
                f"{got.eps:.0f} steps/s{per_case}, {got.eps / raw.eps:.2f} of the raw loop; "
                f"CPU per step: {per_event(got.cpu, got.events)} ({load()})",
                flush=True,
            )
    finally:
        broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=6_000)
    p.add_argument("--penalised", type=float, default=0.3, help="share of the 1 000 enterprises")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--within", type=float, nargs="+", default=[0.005],
                   help="BUS_CASE_BATCH_WAIT of the workers, s (each measured)")  # fmt: skip
    p.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[500],
        help="BUS_BATCH_SIZE of the workers (each measured); 1: the naive agent",
    )
    p.add_argument("--matter", choices=["certificates", "five-steps"], default="certificates",
                   help="certificate requests and reviews, or a five-step matter")  # fmt: skip
    p.add_argument("--engine", default="kafka", choices=LOCAL_ENGINES)
    p.add_argument("--profile", action="store_true", help="py-spy (pip install py-spy) on worker 0")
    p.add_argument("--profile-seconds", type=float, default=20.0)
    asyncio.run(main(p.parse_args()))
