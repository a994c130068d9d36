"""Ingest agent vs the raw-client limit, side by side on the same broker, in one run.

Both pipelines run as their own process (``bench/raw_loop.py`` and ``bus worker``), read the
same Avro penalty events from a topic with 3 partitions, and write them to another.

* throughput: N events are waiting before the pipeline starts; events/s is measured from
  the first to the last output record's timestamp (start-up excluded, the same for both);
* latency: with the pipeline idle, events are published at a fixed rate; p50/p99 is from
  publish to arrival at a consumer of the output topic.

    python bench/ingest.py --events 50000 --repeat 3 # embedded noida broker, median of 3
    python bench/ingest.py --engine tansu            # embedded tansu broker
    python bench/ingest.py --broker 127.0.0.1:9092   # any Kafka
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.dev.kafka_local import LOCAL_ENGINES, local_broker
from bus.dev.processes import WorkerProcess, terminate
from bus.dev.samples import penalties
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics

Msg = tuple[bytes, bytes, list[tuple[str, bytes]], str]  # key, value, headers, event_id
ROOT = Path(__file__).resolve().parent.parent


def encode(count: int, seed: int) -> list[Msg]:
    """Avro-encoded penalty events with their keys and headers."""
    codec = EventCodec()
    return [
        (e.subject.encode(), codec.encode(e), e.kafka_headers(), str(e.event_id))
        for e in penalties(count, seed=seed)
    ]


async def produce(bootstrap: str, topic: str, msgs: list[Msg], rate: float = 0) -> dict[str, float]:
    """Publish ``msgs``; at ``rate`` per second if given. Returns event_id -> send time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1 if rate else 5)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        start = time.perf_counter()
        futures = []
        for i, (key, value, headers, event_id) in enumerate(msgs):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent[event_id] = time.time()
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def drain(
    bootstrap: str,
    topic: str,
    n: int,
    max_seconds: float,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    isolation_level: str = "read_uncommitted",
) -> list[tuple[str, int, float]]:
    """Read ``n`` records from the start: (event_id, record timestamp ms, arrival time).

    ``isolation_level="read_committed"`` is what a department reading a transactional
    writer's topic sees: a record arrives when its transaction has committed.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
        fetch_max_wait_ms=5, max_poll_records=5000, isolation_level=isolation_level,
    )  # fmt: skip
    await consumer.start()
    out: list[tuple[str, int, float]] = []
    try:
        deadline = time.monotonic() + max_seconds
        while len(out) < n and time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the pipeline exited with {proc.returncode}; see its log")
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time()
                for r in records:
                    eid = dict(r.headers).get("event_id", b"").decode()
                    out.append((eid, r.timestamp, now))
    finally:
        await consumer.stop()
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} of {n} events arrived on {topic} in {max_seconds}s")
    return out


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``latencies`` (ms), as every latency figure of the benches gives them."""
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[max(int(len(ordered) * 0.99) - 1, 0)],
        "max_ms": ordered[-1],
    }


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a pipeline process with its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


async def measure(
    name: str,
    bootstrap: str,
    source: str,
    sink: str,
    start: Callable[[], subprocess.Popen[bytes] | None],
    backlog: list[Msg],
    paced: list[Msg],
    rate: float,
) -> dict[str, float]:
    """Throughput over a backlog, then latency at a fixed rate, for one pipeline."""
    await produce(bootstrap, source, backlog)
    proc = start()
    assert proc is not None
    try:
        got = await drain(bootstrap, sink, len(backlog), 600, proc)
        stamps = sorted(ts for _, ts, _ in got)
        span = (stamps[-1] - stamps[0]) / 1000
        eps = (len(stamps) - 1) / span if span > 0 else float("inf")
        lat = [float("nan")]
        if paced:
            arriving = asyncio.create_task(
                drain(bootstrap, sink, len(backlog) + len(paced), 120, proc)
            )
            sent = await produce(bootstrap, source, paced, rate)
            arrived = await arriving
            lat = sorted(
                (now - sent[eid]) * 1000 for eid, _, now in arrived[len(backlog) :] if eid in sent
            )
    finally:
        terminate(proc, 15)
    result = {"events_per_s": eps, **percentiles(lat)}
    print(f"{name:>8}: {eps:9.0f} events/s   p50 {result['p50_ms']:6.1f} ms   "
          f"p99 {result['p99_ms']:6.1f} ms", flush=True)  # fmt: skip
    return result


async def one_round(
    args: argparse.Namespace, bootstrap: str, tmp: Path, backlog: list[Msg], paced: list[Msg]
) -> tuple[dict[str, float], dict[str, float]]:
    """Raw loop, then ingest agent, each on fresh topics; the same events for both."""
    run = f"b{time.time_ns()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(f"{run}.raw.{t}", args.partitions, 1) for t in ("in", "out")]
    )
    await admin.close()
    raw = await measure(
        "raw", bootstrap, f"{run}.raw.in", f"{run}.raw.out",
        lambda: spawn(
            [sys.executable, str(ROOT / "bench" / "raw_loop.py"), bootstrap,
             f"{run}.raw.in", f"{run}.raw.out", f"{run}-raw"],
            tmp / "raw.log",
        ),
        backlog, paced, args.rate,
    )  # fmt: skip
    settings = Settings(
        broker=bootstrap, app_id=f"{run}-bus", topic_prefix=run, partitions=args.partitions,
        data_dir=tmp / "var", web_port=0, metrics_port=0, agents=["ingest"],
    )  # fmt: skip
    await create_topics(settings)
    bus = await measure(
        "ingest", bootstrap, settings.topic("ingress"), settings.topic("events.penalty"),
        lambda: WorkerProcess(settings, tmp / "worker.log").start(wait=False).proc,
        backlog, paced, args.rate,
    )  # fmt: skip
    return raw, bus


async def main(args: argparse.Namespace) -> None:
    """Run both pipelines and print the ratio."""
    tmp = Path(tempfile.mkdtemp(prefix="bus-bench-"))
    broker = None
    bootstrap = args.broker
    if bootstrap is None:
        broker = local_broker(args.engine, data_dir=tmp / "broker")
        broker.start()
        bootstrap = broker.bootstrap
    try:
        print(f"encoding {args.events} + {args.paced} events ...", flush=True)
        backlog, paced = encode(args.events, 1), encode(args.paced, 2)
        ratios = []
        for rep in range(1, args.repeat + 1):
            print(f"run {rep} of {args.repeat}", flush=True)
            (tmp / f"run{rep}").mkdir()
            raw, bus = await one_round(args, bootstrap, tmp / f"run{rep}", backlog, paced)
            ratios.append(bus["events_per_s"] / raw["events_per_s"])
            print(f"   ratio: ingest / raw = {ratios[-1]:.2f}", flush=True)
        print(f"median ratio {statistics.median(ratios):.2f} over {args.repeat} runs "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}); {args.events} events, "
              f"{args.partitions} partitions, {args.engine if broker else bootstrap}; "
              f"logs in {tmp}")  # fmt: skip
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=50_000, help="backlog for throughput")
    p.add_argument("--paced", type=int, default=3_000, help="events for the latency run")
    p.add_argument("--rate", type=float, default=1_000, help="events/s in the latency run")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="rounds; the median ratio is reported")
    p.add_argument("--broker", help="bootstrap host:port; default: an embedded broker")
    p.add_argument("--engine", default="kafka", choices=LOCAL_ENGINES, help="local broker")
    asyncio.run(main(p.parse_args()))
