"""The worker's state at city scale: memory, changelog size, fold rate and restart, on Kafka.

    python -m bench.state --enterprises 50000
    python -m bench.state --enterprises 200000
    python -m bench.state --enterprises 1000000 --open-cases 100000 --no-memory
    python -m bench.state --enterprises 200000 --open-cases 20000 --no-memory --takeover --standby 1
    python -m bench.state --enterprises 1000000 --open-cases 100000 --no-memory --store rocksdb

One Apache Kafka node and one worker (the settings of docs/broker.md: session 6 s). The
backlog is ``N`` registrations and ``N/5`` penalties, interleaved so that every tenth of it
has the same mix: a penalty falls on an enterprise registered earlier in the stream. Each
registration opens an "opening-a-business" case with four tasks in the case engine. With
``--open-cases K`` the city is older than the bus: all but the last ``K`` registrations (and
the penalties among them) are imported as history (``bus.historical: 1``), folded into the
records but opening no case, so ``N`` enterprises hold ``K`` open cases.

1. A worker running ingest alone turns the backlog into canonical events, so that the fold
   is timed without ingest sharing its CPU. It is stopped.
2. A worker with every agent starts and folds the backlog. It is done when every consumer
   group has committed every partition up to its end (a transaction's commit marker takes
   an offset no group commits past: one short is done on a transactional topic) and nothing
   moved for a few seconds. The fold's events/s in the first and the last tenth come from
   the de-duplication changelog (a record per batch, its timestamp, 16 bytes an event), with
   the worker's CPU per event over the same spans (``/proc``): on a shared machine the rate
   follows the load, the CPU per event says whether the work per event grew with the state.
   The case engine's rate likewise, from its table's changelog.
3. Then: the worker's RSS (``/proc``); the records of ``state.correlate-records`` and of the
   cases table's changelog (all records, and the keys compaction would keep).
4. kill -9; a clean certificate request for a known enterprise is published; the worker is
   started again; the time from the start to the signed ``certificate.issued``, the RSS once
   it answered and over the 30 s after, the peak RSS during the restore, the restore lines
   of its log and Faust's late-timer warnings (the longest drift is the longest event-loop
   stall it saw).
5. With ``--takeover`` (and ``--standby 1``): two workers on the state, each standby copies
   of the other's case table with ``--standby``; once settled, kill -9 one of them and
   request a clean certificate for an enterprise of every partition: how long until the
   survivor answers for the dead worker's partitions, and the workers' RSS before and after.
6. Where the memory goes: the bench restores the records changelog itself into
   ``EnterpriseRecord`` objects, as the worker does, under ``tracemalloc``, and sizes the
   parts of a sample of records; the cases table's values (JSON bytes, as the worker holds them)
   and the de-duplication ids likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.cpu import CpuSampler
from bench.ingest import Msg, produce
from bench.pipeline import publish_batches
from bench.scaleout import certificate_request, group_settings
from bus.agents.correlate import derived_id
from bus.agents.runtime import key_hash
from bus.agents.stores import PartedStore
from bus.dev.kafka_local import local_broker
from bus.dev.processes import WorkerProcess
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.record import EnterpriseRecord, apply_part, encode_part
from bus.schemas.envelope import HISTORICAL
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from bus.streaming.topics import CORRELATE_RECORDS, CORRELATE_SEEN, cases_changelog, create_topics

PENALTY_SHARE = 5  # one penalty per five registrations
SETTLE_S = 30  # seconds the restarted worker's RSS is followed after its first answer
_RESTORED = re.compile(
    r"(\w+): partitions assigned .*\((\d+) ids restored in ([\d.]+)s(?:; (\d+) kept from before)?\)"
)
_DRIFT = re.compile(r"woke up too late, with a drift of \+?([\d.]+)")
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


# ---- the backlog -------------------------------------------------------------------------


@dataclass
class Backlog:
    """What is published, and which enterprises stay clean (for the certificate request)."""

    msgs: list[Msg]
    registrations: int
    penalties: int
    clean: list[str]


def backlog(n: int, seed: int = 11, live: int | None = None) -> Backlog:
    """``n`` registrations and ``n/5`` penalties on enterprises registered before them.

    ``live``: only the last ``live`` registrations (and penalties) are live; those before
    are history, as a city's import of its existing enterprises would mark them.
    """
    rng = random.Random(seed)
    codec = EventCodec()
    msgs: list[Msg] = []
    firms = []
    fined: set[int] = set()
    pens = 0
    for i in range(n):
        firm = enterprise(rng)
        firms.append(firm)
        events = [registered(firm, rng)]
        if i % PENALTY_SHARE == PENALTY_SHARE - 1:
            j = rng.randrange(i + 1)
            fined.add(j)
            pens += 1
            events.append(penalty(firms[j], rng, n=pens))
        past = live is not None and i < n - live
        for e in events:
            headers = [*e.kafka_headers(), (HISTORICAL, b"1")] if past else e.kafka_headers()
            msgs.append((e.subject.encode(), codec.encode(e), headers, str(e.event_id)))
    clean = [f.uscc for i, f in enumerate(firms) if i not in fined][:100]
    return Backlog(msgs, n, pens, clean)


# ---- watching the broker -----------------------------------------------------------------


async def group_lag(bootstrap: str) -> tuple[dict[str, int], int]:
    """Per consumer group, records not yet committed (a partition one short counts as 0)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        lag: dict[str, int] = {}
        total_end = 0
        for group, *_ in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            ends = await consumer.end_offsets(list(committed))
            total_end += sum(ends.values())
            # One short: a commit marker, or one record; stability over seconds decides.
            lag[group] = sum(max(0, ends[tp] - m.offset - 1) for tp, m in committed.items())
        return lag, total_end
    finally:
        await consumer.stop()
        await admin.close()


async def settled(bootstrap: str, groups: Iterable[str], quiet: float, within: float) -> None:
    """Until ``groups`` have committed and no group lagged for ``quiet`` s.

    End offsets alone do not settle: the case engine's deadline ticks keep them moving.
    """
    deadline = time.monotonic() + within
    lag: dict[str, int] = {}
    since = time.monotonic()
    while time.monotonic() < deadline:
        lag, _ = await group_lag(bootstrap)
        if any(lag.values()) or not set(groups) <= set(lag):
            since = time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(1.0)
    raise RuntimeError(f"not settled in {within} s: {lag}")


async def read_topic(
    bootstrap: str, topic: str, each: Callable[[Any], None], *, committed: bool = False
) -> int:
    """Every record of ``topic`` from its start to its current end; returns the count."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
        isolation_level="read_committed" if committed else "read_uncommitted",
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
        left = {tp for tp in tps if ends[tp] > 0}
        n = 0
        while left:
            for tp, records in (await consumer.getmany(*left, timeout_ms=500)).items():
                for r in records:
                    each(r)
                    n += 1
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return n
    finally:
        await consumer.stop()


@dataclass
class Changelog:
    """A changelog's records: all of them, and the keys compaction keeps (last not null)."""

    records: int = 0
    bytes: int = 0
    last: dict[bytes, bytes | None] = field(default_factory=dict)

    def add(self, r: Any) -> None:
        """One record."""
        self.records += 1
        self.bytes += len(r.value or b"") + len(r.key or b"")
        self.last[r.key] = r.value

    @property
    def live(self) -> int:
        """Keys whose last record is not a tombstone."""
        return sum(v is not None for v in self.last.values())

    @property
    def live_bytes(self) -> int:
        """Key and value bytes of what compaction keeps."""
        return sum(len(k) + len(v) for k, v in self.last.items() if v is not None)


async def changelog(bootstrap: str, topic: str) -> Changelog:
    """Read a compacted changelog whole."""
    c = Changelog()
    await read_topic(bootstrap, topic, c.add)
    return c


@dataclass
class Rates:
    """Records (weighted) on a topic: how many; the spans of the whole and of each tenth."""

    total: int
    spans: dict[str, tuple[tuple[float, int], tuple[float, int]]]  # (time, count) at each end

    def per_second(self, span: str) -> float:
        """Records a second over ``span`` ("whole", "first", "last", "tenth 1" ... "tenth 10")."""
        (t0, c0), (t1, c1) = self.spans[span]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan")

    def cpu_us(self, cpu: CpuSampler, span: str, group: str = "worker") -> float:
        """CPU µs a record of ``group`` over ``span``: what other load does not change."""
        (t0, c0), (t1, c1) = self.spans[span]
        return cpu.between(t0, t1)[group] / max(c1 - c0, 1) * 1e6


async def rates(bootstrap: str, topic: str, weight: Callable[[Any], int] = lambda r: 1) -> Rates:
    """Records on ``topic`` by their timestamps, and the records nearest each tenth's boundary."""
    points: list[tuple[float, int]] = []
    await read_topic(bootstrap, topic, lambda r: points.append((r.timestamp / 1000, weight(r))))
    points.sort()
    cum, total = [], 0
    for ts, k in points:
        total += k
        cum.append((ts, total))

    def at(count: float) -> tuple[float, int]:
        return next(p for p in cum if p[1] >= count)

    first, last = cum[0], cum[-1]
    spans = {"whole": (first, last), "first": (first, at(total * 0.1)),
             "last": (at(total * 0.9), last)}  # fmt: skip
    bounds = [first, *(at(total * i / 10) for i in range(1, 10)), last]
    spans |= {f"tenth {i + 1}": (bounds[i], bounds[i + 1]) for i in range(10)}
    return Rates(total, spans)


async def fold_rates(bootstrap: str, settings: Settings) -> Rates:
    """Events the fold made durable, by the de-duplication changelog.

    One record per batch and partition, 16 bytes an event, stamped when written.
    """
    topic = settings.topic(CORRELATE_SEEN.name)
    return await rates(bootstrap, topic, lambda r: len(r.value or b"") // 16)


# ---- the worker --------------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def answered(bootstrap: str, topic: str, event_id: str, within: float) -> float:
    """When (wall clock) ``event_id`` appears on ``topic``, committed; read from its end."""
    return (await all_answered(bootstrap, topic, {event_id}, within))[event_id]


async def all_answered(
    bootstrap: str, topic: str, event_ids: set[str], within: float
) -> dict[str, float]:
    """When (wall clock) each of ``event_ids`` appears on ``topic``, committed."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
        isolation_level="read_committed", fetch_max_wait_ms=50,
    )  # fmt: skip
    await consumer.start()
    seen: dict[str, float] = {}
    try:
        await consumer.getmany(timeout_ms=100)  # positions taken: nothing earlier is missed
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and len(seen) < len(event_ids):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for r in records:
                    eid = dict(r.headers or ()).get("event_id", b"").decode()
                    if eid in event_ids:
                        seen.setdefault(eid, time.time())
    finally:
        await consumer.stop()
    if len(seen) < len(event_ids):
        raise RuntimeError(f"{len(event_ids) - len(seen)} not on {topic} in {within} s")
    return seen


async def takeover(bootstrap: str, s: Settings, clean: list[str], tmp: Path, standby: int) -> None:
    """Two workers (``standby`` standby copies of the cases table); kill -9 one of them.

    A clean certificate is requested for an enterprise of every partition just after the
    kill: the last answer is when the survivor decides for the dead worker's partitions too.
    """
    both = s.model_copy(update={"standby_replicas": standby})
    pair = [
        WorkerProcess(both.model_copy(update={"data_dir": s.data_dir / f"t{i}"}), tmp / f"t{i}.log")
        for i in (1, 2)
    ]
    for w in pair:
        w.start(wait=False)
    try:
        await _kill_one(bootstrap, s, clean, pair, standby)
    finally:
        for w in pair:
            w.stop()


async def _kill_one(
    bootstrap: str, s: Settings, clean: list[str], pair: list[WorkerProcess], standby: int
) -> None:
    for w in pair:
        w.wait_ready(900)
    await settled(bootstrap, [f"{s.app_id}.correlate", s.app_id], 10, 1200)
    before = [rss(w.proc.pid) for w in pair if w.proc is not None]
    by_partition: dict[int, str] = {}
    for uscc in clean:
        by_partition.setdefault(key_hash(uscc.encode()) % s.partitions, uscc)
    codec = EventCodec()
    requests = [certificate_request(u) for u in by_partition.values()]
    expect = {str(derived_id("certificate", str(r.event_id))): r for r in requests}
    waiting = asyncio.create_task(
        all_answered(bootstrap, s.topic("events.certificate"), set(expect), 900)
    )
    await asyncio.sleep(2)  # the reader has its positions
    pair[0].kill()
    killed = time.time()
    await produce(bootstrap, s.topic("ingress"), [
        (r.subject.encode(), codec.encode(r), r.kafka_headers(), eid) for eid, r in expect.items()
    ])  # fmt: skip
    times = sorted(t - killed for t in (await waiting).values())
    survivor = pair[1]
    assert survivor.proc is not None
    print(f"take-over, two workers, {standby} standby: RSS before the kill {mb(before[0])} and "
          f"{mb(before[1])}; after kill -9 of one, clean certificates for {len(times)} "
          f"partitions' enterprises answered {times[0]:.1f}–{times[-1]:.1f} s after it (the "
          f"last: the dead worker's partitions); the survivor's RSS then "
          f"{mb(rss(survivor.proc.pid))}", flush=True)  # fmt: skip
    for line in restore_lines(survivor.log())[0]:
        print(f"  restored: {line}")


def restore_lines(log: str) -> tuple[list[str], float]:
    """The restore lines of a worker's log, and the longest late-timer drift in it (s).

    Faust's table recovery is timed from "Restoring state from changelog topics" to "Done
    reading from changelog topics"; the flow's agents log their own restore times.
    """
    lines = [
        f"{m[1]} {m[2]} ids in {m[3]} s" + (f", {m[4]} partitions kept" if m[4] else "")
        for m in _RESTORED.finditer(log)
    ]
    drift = 0.0
    began: datetime | None = None
    for line in log.splitlines():
        m = _DRIFT.search(line)
        if m:
            drift = max(drift, float(m.group(1)))
        stamp = _STAMP.match(line)
        if stamp and "Restoring state from changelog topics" in line:
            began = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f")
        elif stamp and began and "Done reading from changelog topics" in line:
            took = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f") - began
            lines.append(f"cases table (Faust recovery) in {took.total_seconds():.2f} s")
            began = None
    return lines, drift


# ---- where the memory goes ---------------------------------------------------------------


def deep(obj: object, seen: set[int]) -> int:
    """Bytes of ``obj`` and everything it holds, each object counted once."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep(k, seen) + deep(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep(x, seen) for x in obj)
    elif hasattr(obj, "__dict__"):
        size += deep(obj.__dict__, seen)
        for slot in ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
            v = getattr(obj, slot, None)
            if v is not None:
                size += deep(v, seen)
    return size


def parts_of(record: EnterpriseRecord) -> dict[str, int]:
    """Deep bytes of each part of one record (shared objects counted in the first part)."""
    seen: set[int] = set()
    out = {"record object": sys.getsizeof(record) + sys.getsizeof(record.__dict__)}
    seen.update({id(record), id(record.__dict__)})
    out["fields set"] = sys.getsizeof(record.__pydantic_fields_set__)  # names are interned
    out["uscc"] = deep(record.uscc, seen)
    out["profile (dict of JSON values)"] = deep(record.profile, seen)
    out["penalties (PenaltyEntry models)"] = deep(record.penalties, seen)
    out["licences, waiting, unrouted"] = deep(
        [record.licences, record.waiting, record.unrouted], seen
    )
    return out


def traced(build: Callable[[], object]) -> tuple[object, int]:
    """What ``build`` returns and the bytes it left allocated (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return obj, after - before


def memory(records: Changelog, cases: Changelog, seen_ids: list[bytes], n: int) -> list[str]:
    """Lines on where the memory goes, per enterprise."""
    out = []

    def restore() -> dict[str, EnterpriseRecord]:
        data: dict[str, EnterpriseRecord] = {}
        for key, value in records.last.items():
            uscc, _, part = key.decode().partition(PartedStore.SEP)
            rec = data.get(uscc)
            if rec is None:
                rec = data[uscc] = EnterpriseRecord(uscc=uscc)
            apply_part(rec, part, value)
        return data

    def held() -> PartedStore[EnterpriseRecord]:
        store: PartedStore[EnterpriseRecord] = PartedStore(
            "records", lambda uscc: EnterpriseRecord(uscc=uscc), encode_part, apply_part
        )
        for key, value in records.last.items():
            store.file(0, key, bytes(bytearray(value)) if value is not None else None)
        return store

    _, held_bytes = traced(held)
    out.append(f"records as the worker holds them (their parts' changelog bytes): "
               f"{held_bytes / 1e6:.0f} MB traced, "
               f"{held_bytes / n:.0f} B per enterprise")  # fmt: skip
    restored, rec_bytes = traced(restore)
    assert isinstance(restored, dict)
    out.append(f"records decoded: {len(restored)}, {rec_bytes / 1e6:.0f} MB traced, "
               f"{rec_bytes / n:.0f} B per enterprise")  # fmt: skip
    sample = list(restored.values())[:: max(1, len(restored) // 2000)]
    totals: dict[str, int] = {}
    for r in sample:
        for k, v in parts_of(r).items():
            totals[k] = totals.get(k, 0) + v
    whole = sum(totals.values())
    if sample:
        out.append(f"  deep size of {len(sample)} sampled records: {whole / len(sample):.0f} B")
        for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
            out.append(f"    {k}: {v / len(sample):.0f} B ({v / whole:.0%})")
    fined = [r for r in restored.values() if r.penalties]
    if fined:
        pe = [p for r in fined[:2000] for p in r.penalties.values()]
        each = sum(deep(p, set()) for p in pe) / len(pe)
        out.append(f"  one PenaltyEntry: {each:.0f} B deep; JSON in the changelog "
                   f"{sum(len(p.model_dump_json()) for p in pe) / len(pe):.0f} B")  # fmt: skip
    prof = [r.profile for r in sample if r.profile]
    if prof:
        js = sum(len(json.dumps(p, ensure_ascii=False).encode()) for p in prof) / len(prof)
        out.append(f"  one profile: {sum(deep(p, set()) for p in prof) / len(prof):.0f} B deep "
                   f"({len(prof[0])} keys); as UTF-8 JSON {js:.0f} B")  # fmt: skip
    del restored, sample, fined

    # As the worker holds them: each value its changelog record's JSON bytes.
    held, case_bytes = traced(lambda: {k: bytes(v) for k, v in cases.last.items() if v is not None})
    assert isinstance(held, dict)
    table = {k: json.loads(v) for k, v in held.items()}
    tasks = sum(len(v.get("tasks", {})) for v in table.values())
    open_cases = sum(len(v.get("reviews", {})) for v in table.values())
    out.append(f"cases table: {len(table)} values, {open_cases} open cases, {tasks} tasks, "
               f"{case_bytes / 1e6:.0f} MB traced as JSON bytes, "
               f"{case_bytes / max(open_cases, 1):.0f} B per open case")  # fmt: skip
    values = list(table.values())[:: max(1, len(table) // 2000)]
    if values:
        share: dict[str, int] = {}
        for v in values:
            seen: set[int] = {id(v)}
            share["value dict"] = share.get("value dict", 0) + sys.getsizeof(v)
            requests = [c.get("request") for c in v.get("reviews", {}).values()]
            share["reviews: the request event, copied"] = share.get(
                "reviews: the request event, copied", 0
            ) + deep(requests, seen)
            for k in ("reviews", "tasks", "done", "closed_tasks"):
                name = "reviews: the rest" if k == "reviews" else k
                share[name] = share.get(name, 0) + deep(v.get(k), seen)
        whole = sum(share.values())
        out.append(f"  deep size of {len(values)} sampled values: {whole / len(values):.0f} B each")
        for k, b in sorted(share.items(), key=lambda kv: -kv[1]):
            out.append(f"    {k}: {b / len(values):.0f} B ({b / whole:.0%})")
    del table, values
    ids, id_bytes = traced(lambda: set(seen_ids))
    out.append(f"de-duplication ids (correlate): {len(seen_ids)} ids, {id_bytes / 1e6:.0f} MB "
               f"traced as a set of bytes, {id_bytes / n:.0f} B per enterprise")  # fmt: skip
    del ids
    return out


# ---- the run -----------------------------------------------------------------------------


def mb(b: float) -> str:
    """Megabytes, for the output."""
    return f"{b / 1e6:.0f} MB"


async def run(args: argparse.Namespace) -> None:
    """Everything in order; prints one block of figures."""
    n = args.enterprises
    tmp = Path(tempfile.mkdtemp(prefix="bus-state-"))
    print(f"{n} enterprises, case table in {args.store}; logs in {tmp}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    t = time.monotonic()
    bl = backlog(n, live=args.open_cases)
    open_cases = n if args.open_cases is None else args.open_cases
    print(f"backlog: {bl.registrations} registrations ({n - open_cases} as history), "
          f"{bl.penalties} penalties, {len(bl.msgs)} records, made in "
          f"{time.monotonic() - t:.0f} s", flush=True)  # fmt: skip
    broker = local_broker("kafka", data_dir=tmp / "broker")
    broker.start()
    bootstrap = broker.bootstrap
    try:
        s = group_settings(bootstrap, tmp, f"st{time.time_ns()}", partitions=args.partitions)
        s = s.model_copy(update={"table_store": args.store})
        await create_topics(s)
        await publish_batches(bootstrap, s.topic("ingress"), bl.msgs)
        t = time.monotonic()
        ingest = WorkerProcess(
            s.model_copy(update={"agents": ["ingest"], "data_dir": s.data_dir / "ingest"}),
            tmp / "ingest.log",
        )
        with ingest.start(timeout=120):
            await settled(bootstrap, [f"{s.app_id}.ingest"], 3, 1800)
        print(f"ingest alone: {time.monotonic() - t:.0f} s", flush=True)

        worker = WorkerProcess(s.model_copy(update={"data_dir": s.data_dir / "w"}), tmp / "w.log")
        t = time.monotonic()
        worker.start(timeout=300)
        assert worker.proc is not None
        async with CpuSampler({"worker": [worker.proc.pid]}, interval=0.5) as cpu:
            await settled(bootstrap, [f"{s.app_id}.correlate", s.app_id], 5, 3600)
        folded_s = time.monotonic() - t
        rss_folded = rss(worker.proc.pid)
        fold = await fold_rates(bootstrap, s)
        print(f"folded in {folded_s:.0f} s (from start): {fold.total} events made durable by "
              f"correlate; {fold.per_second('whole'):.0f} events/s overall, first tenth "
              f"{fold.per_second('first'):.0f} ({fold.cpu_us(cpu, 'first'):.0f} µs of worker "
              f"CPU an event), last tenth {fold.per_second('last'):.0f} "
              f"({fold.cpu_us(cpu, 'last'):.0f} µs); RSS {mb(rss_folded)} = "
              f"{rss_folded / n / 1e3:.1f} KB per enterprise; load {os.getloadavg()[0]:.1f}",
              flush=True)  # fmt: skip
        print("correlate by tenth, events/s (µs of worker CPU an event): " + ", ".join(
            f"{fold.per_second(f'tenth {i}'):.0f} ({fold.cpu_us(cpu, f'tenth {i}'):.0f})"
            for i in range(1, 11)
        ), flush=True)  # fmt: skip
        steps = await rates(bootstrap, cases_changelog(s))
        print(f"case engine: {steps.total} table writes; {steps.per_second('whole'):.0f}/s "
              f"overall, first tenth {steps.per_second('first'):.0f}, last tenth "
              f"{steps.per_second('last'):.0f}", flush=True)  # fmt: skip
        records = await changelog(bootstrap, s.topic(CORRELATE_RECORDS.name))
        cases = await changelog(bootstrap, cases_changelog(s))
        print(f"state.correlate-records: {records.records} records "
              f"({records.records / n:.2f} per enterprise, {mb(records.bytes)}), "
              f"{records.live} kept by compaction ({records.live / n:.2f} per enterprise, "
              f"{mb(records.live_bytes)})")  # fmt: skip
        print(f"cases changelog: {cases.records} records ({cases.records / n:.2f} per "
              f"enterprise, {mb(cases.bytes)}), {cases.live} kept by compaction "
              f"({mb(cases.live_bytes)})", flush=True)  # fmt: skip

        # kill -9, a request waits, restart: time to the answer
        worker.kill()
        uscc = bl.clean[0]
        request = certificate_request(uscc)
        expect = str(derived_id("certificate", str(request.event_id)))
        codec = EventCodec()
        waiting = asyncio.create_task(
            answered(bootstrap, s.topic("events.certificate"), expect, 900)
        )
        await asyncio.sleep(2)  # the reader has its positions
        await produce(bootstrap, s.topic("ingress"), [
            (uscc.encode(), codec.encode(request), request.kafka_headers(), expect)
        ])  # fmt: skip
        began = time.time()
        worker.start(wait=False)
        peak = 0
        while not waiting.done():
            if worker.running:
                peak = max(peak, rss(worker.proc.pid))
            elif worker.proc.returncode is not None:
                raise RuntimeError(f"worker exited:\n{worker.log()[-3000:]}")
            await asyncio.sleep(0.2)
        decided = (await waiting) - began
        rss_after = rss(worker.proc.pid)
        later = []  # the restore's last readers finish after the first answer
        for _ in range(SETTLE_S):
            await asyncio.sleep(1)
            later.append(rss(worker.proc.pid))
        rss_later = later[-1]
        lines, drift = restore_lines(worker.log())
        print(f"after kill -9: decided again {decided:.1f} s after the restart; RSS when "
              f"answered {mb(rss_after)}, {SETTLE_S} s later {mb(rss_later)} "
              f"({rss_later / n / 1e3:.1f} KB per enterprise), peak during restore "
              f"{mb(peak)}, peak in the {SETTLE_S} s after {mb(max(later))}; longest "
              f"late-timer drift {drift:.2f} s", flush=True)  # fmt: skip
        for line in lines:
            print(f"  restored: {line}")
        worker.stop()
        if args.takeover:
            await takeover(bootstrap, s, bl.clean, tmp, args.standby)

        if not args.no_memory:
            seen_ids: list[bytes] = []
            await read_topic(
                bootstrap,
                s.topic(CORRELATE_SEEN.name),
                lambda r: seen_ids.extend(
                    r.value[i : i + 16] for i in range(0, len(r.value or b""), 16)
                ),
            )
            for line in memory(records, cases, seen_ids, n):
                print(line, flush=True)
    finally:
        broker.stop(timeout=5)
    print(f"load {os.getloadavg()[0]:.1f}; logs in {tmp}")


def main(argv: Iterable[str] | None = None) -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--enterprises", type=int, default=50_000)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--no-memory", action="store_true", help="skip where the memory goes")
    p.add_argument(
        "--takeover",
        action="store_true",
        help="then two workers on the state; kill -9 one; time until the other decides",
    )
    p.add_argument("--standby", type=int, default=0, help="--takeover: BUS_STANDBY_REPLICAS")
    p.add_argument(
        "--store",
        choices=("memory", "rocksdb"),
        default="memory",
        help="BUS_TABLE_STORE: where the case engine's table lives",
    )
    p.add_argument(
        "--open-cases",
        type=int,
        help="only the last K registrations open a case; those before are history",
    )
    asyncio.run(run(p.parse_args(list(argv) if argv is not None else None)))


if __name__ == "__main__":
    main()
