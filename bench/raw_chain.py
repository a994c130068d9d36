"""The raw-client limit for a certificate's latency: three plain aiokafka hops in a chain.

A certificate crosses three hops before a department reads it (ingest, the fold, the case
engine). This is the same chain with nothing in it: each hop fetches (``getmany``, and once
more when that was answered from aiokafka's buffer, as the bus's agents do), sends every record
on to the next topic and, exactly once, puts the fetch's outputs and offsets in one Kafka
transaction (reading committed records only), as aiokafka's own consume-process-produce
example does. At least once, it awaits the sends and commits offsets every 100 ms. The three
hops run in one process, as the bus's agents do, with the bus's producer settings (acks all,
5 ms linger, 20 ms retry back-off for transactional producers). ``exactly_once`` runs one
transactional producer a hop; ``exactly_once/partition`` one a partition, a transaction each
per fetch, as the bus's batch agents must to fence a zombie (aiokafka has no KIP-447).

    python -m bench.raw_chain relay BOOTSTRAP PREFIX GUARANTEE    # the relay process

``bench.pipeline --latency-only`` runs it beside the bus in the same run (``chain_latency``).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.ingest import Msg, drain, encode, percentiles, produce, spawn
from bus.agents.runtime import BUFFERED_S, and_since
from bus.dev.processes import terminate
from bus.streaming.client import TXN_RETRY_BACKOFF_MS

HOPS = 3
PARTITIONS = 3
Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


def topics(prefix: str) -> list[str]:
    """The chain's topics: what the first hop reads, ..., what a reader of the last reads."""
    return [f"{prefix}.t{i}" for i in range(HOPS + 1)]


async def hop(bootstrap: str, source: str, sink: str, group: str, guarantee: str) -> None:
    """Relay ``source`` to ``sink`` until cancelled.

    ``exactly_once/partition``: one transactional producer and transaction per input
    partition, committed side by side, as the bus's batch agents must to fence a zombie.
    """
    eos = guarantee != "at_least_once"
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=not eos, auto_commit_interval_ms=100, fetch_max_wait_ms=50,
        isolation_level="read_committed" if eos else "read_uncommitted",
    )  # fmt: skip
    if guarantee.endswith("/partition"):
        ids: list[str | None] = [f"{group}.{p}" for p in range(PARTITIONS)]
    else:
        ids = [f"{group}.txn" if eos else None]
    producers = [
        AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, transactional_id=i,
                         retry_backoff_ms=TXN_RETRY_BACKOFF_MS if eos else 100)
        for i in ids
    ]  # fmt: skip
    for producer in producers:
        await producer.start()
    await consumer.start()

    async def relay_in_txn(producer: AIOKafkaProducer, fetched: Fetched) -> None:
        async with producer.transaction():
            for records in fetched.values():
                for r in records:
                    await producer.send(sink, r.value, key=r.key, headers=list(r.headers))
            offsets = {tp: rs[-1].offset + 1 for tp, rs in fetched.items()}
            await producer.send_offsets_to_transaction(offsets, group)

    try:
        while True:
            asked = time.monotonic()
            fetched = await consumer.getmany(timeout_ms=50, max_records=5000)
            if not fetched:
                continue
            if time.monotonic() - asked < BUFFERED_S:  # as the bus's agents fetch
                fetched = await and_since(consumer, fetched, 5000)
            if len(producers) > 1:
                await asyncio.gather(*(relay_in_txn(producers[tp.partition], {tp: rs})
                                       for tp, rs in fetched.items()))  # fmt: skip
            elif eos:
                await relay_in_txn(producers[0], fetched)
            else:
                futures = [
                    await producers[0].send(sink, r.value, key=r.key, headers=list(r.headers))
                    for records in fetched.values()
                    for r in records
                ]
                await asyncio.gather(*futures)
    finally:
        await consumer.stop()
        for producer in producers:
            await producer.stop()


async def relay(bootstrap: str, prefix: str, guarantee: str) -> None:
    """Run the chain's hops until SIGTERM."""
    names = topics(prefix)
    tasks = [
        asyncio.create_task(hop(bootstrap, a, b, f"{prefix}-hop{i}", guarantee))
        for i, (a, b) in enumerate(itertools.pairwise(names))
    ]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    waiting = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [waiting, *tasks]:
        task.cancel()
    await asyncio.gather(waiting, *tasks, return_exceptions=True)
    for task in done:
        if task is not waiting and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]


async def chain_latency(
    bootstrap: str, tmp: Path, guarantee: str, requests: int, rate: float, load: float
) -> dict[str, float]:
    """p50/p99 through the chain of ``requests`` records at ``rate``/s while ``load`` flow.

    The load starts 2 s before the measured records, as ``bench.pipeline``'s does; the reader
    of the last topic reads committed records only under exactly once.
    """
    prefix = f"chain{time.time_ns()}"
    names = topics(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in names])
    finally:
        await admin.close()
    proc = spawn([sys.executable, "-m", "bench.raw_chain", "relay", bootstrap, prefix, guarantee],
                 tmp / f"{prefix}.log")  # fmt: skip
    isolation = "read_uncommitted" if guarantee == "at_least_once" else "read_committed"
    try:
        warm = encode(30, 7)  # every hop has joined its group once these are through
        await produce(bootstrap, names[0], warm)
        await drain(bootstrap, names[-1], len(warm), 120, proc, isolation_level=isolation)
        marked: list[Msg] = encode(requests, 11)
        other = encode(int(load * (requests / rate + 2)), 13) if load else []
        arriving = asyncio.create_task(
            drain(bootstrap, names[-1], len(warm) + len(marked) + len(other), 180, proc,
                  isolation_level=isolation)
        )  # fmt: skip
        flowing = asyncio.create_task(produce(bootstrap, names[0], other, load)) if load else None
        if flowing is not None:
            await asyncio.sleep(2.0)
        sent = await produce(bootstrap, names[0], marked, rate)
        if flowing is not None:
            await flowing
        arrived = {eid: now for eid, _, now in await arriving}
    finally:
        terminate(proc, 15)
    return percentiles([(arrived[eid] - t) * 1000 for eid, t in sent.items()])


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    asyncio.run(relay(*sys.argv[2:5]))
