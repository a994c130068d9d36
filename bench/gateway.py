"""Gateway publish throughput and latency, next to a Kafka client publishing directly.

A real ``bus gateway run`` process on an embedded broker; ``--concurrency`` HTTP clients
(one httpx connection pool, keep-alive) each POST one event at a time to ``/v1/events`` and
wait for the 202 before the next, the way a department system publishes. The baseline in
the same run: the same number of concurrent publishers on one aiokafka producer, each
awaiting the broker's acknowledgement of its event before sending the next (what
``BusClient.publish`` does). Then the batch route, 100 events per request.

    python -m bench.gateway                          # noida, 5000 events, concurrency 16
    python -m bench.gateway --engine tansu --concurrency 64 --events 10000

The load generator runs on the same machine as the gateway and the broker: on 2 cores the
three compete, so read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bus.dev.brokers import free_port
from bus.dev.kafka_local import LOCAL_ENGINES, local_broker
from bus.dev.processes import settings_env, terminate
from bus.dev.samples import penalties
from bus.edge.gateway.keys import issue_key, keys_path
from bus.settings import Settings
from bus.streaming.client import BusClient
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics


def _quantiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def _run(concurrency: int, items: list[Any], send: Any) -> dict[str, float]:
    """Send every item with ``concurrency`` workers; rate and latency quantiles."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            t0 = time.perf_counter()
            await send(item)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - start
    return {"per_s": len(items) / took, **_quantiles(latencies)}


async def raw(settings: Settings, events: list[Any], concurrency: int) -> dict[str, float]:
    """Concurrent publishers on one Kafka producer, each waiting for its acknowledgement."""
    async with BusClient(settings) as client:
        return await _run(concurrency, events, client.publish)


async def gateway(
    url: str, key: str, bodies: list[Any], concurrency: int, path: str = "/v1/events"
) -> dict[str, float]:
    """Concurrent HTTP clients posting to the gateway, each waiting for its 202."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def send(body: bytes) -> None:
            r = await http.post(path, content=body, headers=headers)
            if r.status_code != 202:
                raise RuntimeError(f"{r.status_code}: {r.text}")

        return await _run(concurrency, bodies, send)


def start_gateway(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``bus gateway run`` as a child process; returns it once /healthz answers."""
    port = free_port()
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli.gateway", "run", "--port", str(port),
             "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    terminate(proc)
    raise SystemExit(f"gateway did not start:\n{log.read_text()[-2000:]}")


async def main(args: argparse.Namespace) -> None:
    codec = EventCodec()
    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        bootstrap = args.broker
        if bootstrap is None:
            broker = local_broker(args.engine, data_dir=Path(tmp) / "broker")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            run = f"gw{int(time.time())}"
            settings = Settings(broker=bootstrap, topic_prefix=run, app_id=run, partitions=3,
                                data_dir=Path(tmp) / "var", web_port=0, metrics_port=0)  # fmt: skip
            await create_topics(settings)
            # Three sets of distinct events: the gateway refuses an event id twice (409).
            n = args.events
            events = penalties(2 * n + 200, seed=5)
            source = events[0].source
            same = [  # one bureau's decisions, in its own name (the policy's bound fields)
                e.model_copy(update={
                    "source": source, "payload": e.payload.model_copy(update={"agency": source}),
                })
                for e in events
            ]  # fmt: skip
            key = issue_key(keys_path(settings.data_dir), source)
            bodies = [codec.to_json(e).encode() for e in same]
            warmup, singles, rest = bodies[:200], bodies[200 : 200 + n], same[200 + n :]
            batches = [
                ("[" + ",".join(codec.to_json(e) for e in rest[i : i + 100]) + "]").encode()
                for i in range(0, len(rest), 100)
            ]
            proc, url = start_gateway(settings, Path(tmp) / "gateway.log")
            try:
                await gateway(url, key, warmup, args.concurrency)  # warm up
                results = {
                    "raw": await raw(settings, same[200 : 200 + n], args.concurrency),
                    "gateway": await gateway(url, key, singles, args.concurrency),
                    "gateway_batch": await gateway(
                        url, key, batches, max(1, args.concurrency // 4), "/v1/events:batch"
                    ),
                }
            finally:
                terminate(proc)
        finally:
            if broker is not None:
                broker.stop()
    results["gateway_batch"]["events_per_s"] = results["gateway_batch"]["per_s"] * 100
    base = results["raw"]["per_s"]
    print(f"broker {args.broker or args.engine}, {args.events} events, "
          f"concurrency {args.concurrency}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, r in results.items():
        rate = r.get("events_per_s", r["per_s"])
        print(f"  {name:14} {r['per_s']:8.0f} req/s  {rate:8.0f} events/s  "
              f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
              f"events/s vs raw {rate / base:.2f}")  # fmt: skip
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=LOCAL_ENGINES, default="kafka")
    parser.add_argument("--broker", help="a running Kafka instead of an embedded broker")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    asyncio.run(main(parser.parse_args()))
