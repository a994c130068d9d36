"""The batch runtime's own pieces that need no broker."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from bus.agents.runtime import key_hash
from bus.schemas.uscc import make_uscc


def test_keyed_records_go_to_the_partition_any_kafka_producer_would_choose() -> None:
    # The runtime builds record batches itself; a record keyed by USCC must land where the
    # gateway's, a connector's or a Java producer's copy would (murmur2, Kafka's default).
    rng = random.Random(5)
    default = DefaultPartitioner()
    for _ in range(500):
        key = make_uscc(rng=rng).encode()
        for n in (1, 3, 6, 12):
            parts = list(range(n))
            assert parts[key_hash(key) % n] == default(key, parts, parts)
    assert key_hash(b"\xff" * 40) >= 0
