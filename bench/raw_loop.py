"""The raw-client limit: a plain aiokafka consume -> decode -> produce loop.

No framework, no validation, no state: fetch up to 5 000 records, decode each Avro body with
fastavro (schema parsed once), send it on, gather the send futures once per fetch. Whatever
the bus's agents do costs time on top of this; benchmarks report the bus as a share of it.

    python bench/raw_loop.py BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP [PARTITIONS]

With PARTITIONS (comma-separated), the loop reads those partitions of IN_TOPIC, assigned
rather than through the group: several copies then split a topic without rebalancing.
"""

from __future__ import annotations

import asyncio
import io
import signal
import struct
import sys

import fastavro
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bus.schemas.registry import LocalSchemaRegistry


async def run(bootstrap: str, source: str, sink: str, group: str, partitions: str = "") -> None:
    """Loop until SIGTERM."""
    registry = LocalSchemaRegistry.load()
    consumer = AIOKafkaConsumer(
        *([] if partitions else [source]),
        bootstrap_servers=bootstrap,
        group_id=None if partitions else group,
        auto_offset_reset="earliest",
        max_poll_records=5000,
        fetch_max_wait_ms=5,
    )
    if partitions:
        consumer.assign([TopicPartition(source, int(p)) for p in partitions.split(",")])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=65536)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            futures = []
            for records in batches.values():
                for r in records:
                    (schema_id,) = struct.unpack_from(">I", r.value, 1)
                    fastavro.schemaless_reader(
                        io.BytesIO(r.value[5:]), registry.by_id(schema_id).parsed, None
                    )
                    futures.append(
                        await producer.send(sink, r.value, key=r.key, headers=list(r.headers))
                    )
            if futures:
                await asyncio.gather(*futures)
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(run(*sys.argv[1:6]))
