"""Outbox connector throughput, next to a Kafka client publishing the same events directly.

N rows wait in a fresh outbox table (real PostgreSQL); the connector publishes them all
(broker acknowledged, rows marked published). The baseline in the same run:
``BusClient.publish_many`` of the same events in batches of the same size, i.e. the
publishing the connector does, without reading and marking rows.

    python -m bench.outbox                       # 20 000 rows, batch sizes 100 and 500, noida
    python -m bench.outbox --rows 50000 --batch 20 100 500 --engine tansu

Needs PostgreSQL at BUS_DEMO_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test);
each round creates and drops its own schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from bus.dev.kafka_local import LOCAL_ENGINES, local_broker
from bus.dev.samples import penalties
from bus.settings import Settings
from bus.streaming.client import BusClient
from bus.streaming.codec import EventCodec
from bus.streaming.topics import create_topics
from connectors.outbox import OutboxOptions, OutboxSource, create_outbox

DSN = os.environ.get("BUS_DEMO_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


async def fill(schema: str, events: list[Any]) -> None:
    """A fresh outbox with every event waiting (COPY, as a busy case system would have)."""
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await create_outbox(conn, schema)
        columns = "event_id, aggregate_id, event_type, payload, occurred_at"
        async with (
            conn.cursor() as cur,
            cur.copy(f"COPY {schema}.bus_outbox ({columns}) FROM STDIN".encode()) as copy,
        ):
            for e in events:
                payload = json.dumps(json.loads(EventCodec.to_json(e))["payload"])
                await copy.write_row((e.event_id, e.subject, e.event_type, payload, e.occurred_at))
        await conn.execute(f"ANALYZE {schema}.bus_outbox".encode())


async def drop(schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())


async def outbox_round(settings: Settings, events: list[Any], batch: int) -> float:
    """Rows per second from the first publication to the last row marked."""
    schema = f"outbox_bench_{uuid.uuid4().hex[:6]}"
    await fill(schema, events)
    try:
        options = OutboxOptions.model_validate({
            "dsn": DSN, "schema": schema, "department": events[0].source,
            "batch_size": batch, "poll_interval": 0.2,
        })  # fmt: skip
        source = OutboxSource(settings, options)
        task = asyncio.create_task(source.serve())
        while not source.active:  # noqa: ASYNC110  (the connector exposes a flag, not an event)
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        while source.published < len(events):
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        source.stop()
        await task
        return len(events) / took
    finally:
        await drop(schema)


async def raw_round(settings: Settings, events: list[Any], batch: int) -> float:
    """The same events published in batches of ``batch``, each batch acknowledged."""
    async with BusClient(settings) as client:
        t0 = time.perf_counter()
        for i in range(0, len(events), batch):
            await client.publish_many(events[i : i + batch])
        return len(events) / (time.perf_counter() - t0)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = local_broker(args.engine, data_dir=Path(tmp) / "broker")
        broker.start()
        try:
            settings = Settings(broker=broker.url, app_id="bench", topic_prefix="bench",
                                partitions=3, data_dir=Path(tmp) / "var")  # fmt: skip
            await create_topics(settings)
            source = "ks.enforcement.huaqiao"
            events = [e.model_copy(update={"source": source})
                      for e in penalties(args.rows, seed=11)]  # fmt: skip
            print(f"{args.engine}, {args.rows} rows, load average {os.getloadavg()[0]:.2f}")
            for batch in args.batch:
                raw = await raw_round(settings, events, batch)
                outbox = await outbox_round(settings, events, batch)
                print(f"  batch {batch:5d}: raw {raw:8.0f} events/s, outbox {outbox:8.0f} rows/s,"
                      f" ratio {outbox / raw:.2f}")  # fmt: skip
        finally:
            broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--engine", choices=LOCAL_ENGINES, default="kafka")
    asyncio.run(main(parser.parse_args()))
