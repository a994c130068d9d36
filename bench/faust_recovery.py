"""A table recovery seen through the ``faust_`` series: how long it takes, what they show meanwhile.

    python -m bench.faust_recovery                      # 100 000 changelog records, one Kafka node
    python -m bench.faust_recovery --records 300000 --broker 127.0.0.1:9092

The small Faust app of the tests (``tests/integration/faust_app.py``: one agent counting
records per key in one table, observed by ``bus.streaming.faust_metrics``) runs once to write
``--records`` changelog records, then a second process with an empty memory store rebuilds the
table. Its ``/metrics`` is scraped every 50 ms meanwhile: whether recovery showed as in
progress, the largest remaining-offsets value seen, and what the series say at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from bus.dev.brokers import free_port
from bus.dev.processes import terminate

ROOT = Path(__file__).resolve().parents[1]


def scrape(port: int) -> dict[str, float]:
    """Every sample of the ``faust_`` series, summed over labels, or {} if not answering."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except (urllib.error.URLError, ConnectionError):
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name.startswith("faust_"):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def start(bootstrap: str, app_id: str, topic: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
        "FAUST_APP_ID": app_id, "FAUST_APP_BROKER": f"kafka://{bootstrap}",
        "FAUST_APP_TOPIC": topic, "FAUST_APP_METRICS_PORT": str(port),
        "FAUST_APP_DATADIR": str(log.with_suffix(".data")),
    }  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.faust_app", "worker", "-l", "warn",
             "--without-web"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def wait(port: int, proc: subprocess.Popen[bytes], ok: str, n: float, within: float) -> None:
    """Until the summed series ``ok`` is at least ``n`` with no rebalance going on."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Faust app exited with {proc.returncode}")
        s = scrape(port)
        if s.get(ok, 0) >= n and s.get("faust_rebalance_in_progress", 1) == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{ok} did not reach {n} in {within} s")


async def prepare(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def send(bootstrap: str, topic: str, records: int, keys: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(records):
            await producer.send(topic, b"x", key=f"k{i % keys}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def run(bootstrap: str, records: int, keys: int, tmp: Path) -> None:
    app_id = f"rb{uuid.uuid4().hex[:8]}"
    topic = f"{app_id}.words"
    asyncio.run(prepare(bootstrap, topic))
    port = free_port()
    first = start(bootstrap, app_id, topic, port, tmp / "first.log")
    try:
        wait(port, first, "faust_rebalances_total", 1, 120)
        asyncio.run(send(bootstrap, topic, records, keys))
        wait(port, first, "faust_messages_sent_total", records, 600)
    finally:
        terminate(first, 30)
    port = free_port()
    second = start(bootstrap, app_id, topic, port, tmp / "second.log")
    began = time.monotonic()
    seen_in_progress, most_remaining, samples = 0, 0.0, 0
    try:
        while True:
            if second.poll() is not None:
                raise RuntimeError(f"the Faust app exited with {second.returncode}")
            s = scrape(port)
            if s:
                samples += 1
                seen_in_progress += int(s.get("faust_table_recovery_in_progress", 0) == 1)
                most_remaining = max(
                    most_remaining, s.get("faust_table_recovery_remaining_offsets", 0)
                )
                if s.get("faust_table_recovered_records_total", 0) >= records and (
                    s.get("faust_rebalance_in_progress", 1) == 0
                ):
                    break
            if time.monotonic() - began > 600:
                raise TimeoutError("recovery not over in 600 s")
            time.sleep(0.05)
        end = scrape(port)
    finally:
        terminate(second, 30)
    print(f"{records} changelog records over {keys} keys, 3 partitions; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    print(f"  start to serving again (scraped):  {time.monotonic() - began:6.1f} s")
    print(f"  faust_table_recovery_last_seconds: {end['faust_table_recovery_last_seconds']:6.2f} s")
    print(f"  faust_rebalance_seconds (sum):     {end['faust_rebalance_seconds_sum']:6.2f} s")
    print(f"  faust_table_recovered_records:     {end['faust_table_recovered_records_total']:8.0f}")
    print(f"  scrapes showing recovery in progress: {seen_in_progress} of {samples}; "
          f"most offsets remaining seen: {most_remaining:.0f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--broker", help="host:port of a running Kafka (default: start one node)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-faust-recovery-"))
    print(f"logs in {tmp}", flush=True)
    if args.broker:
        run(args.broker, args.records, args.keys, tmp)
        return
    from bus.dev.kafka_local import KafkaCluster

    with KafkaCluster(1, data_dir=tmp / "kafka") as cluster:
        run(cluster.bootstrap, args.records, args.keys, tmp)


if __name__ == "__main__":
    main()
