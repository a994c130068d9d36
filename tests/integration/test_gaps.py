"""The case engine's gap check on Apache Kafka: what a delivery skipped is read again.

Records are written as the flow writes case steps (in transactions, some aborted), and the
check is given deliveries a consumer could have made: consecutive offsets cost no read; below
the end offset the partition had when it was taken on, any skipped offset is read, and a
commit marker or an aborted transaction adds nothing while a committed record, even one
alone, is returned in its place; past it, one skipped offset is a marker and costs no read.
"""

from __future__ import annotations

import asyncio

import pytest

from bus.agents.gaps import GapCheck, Record
from bus.settings import Settings
from bus.streaming.client import kafka_producer
from bus.streaming.topics import TopicSpec, create_topics

pytestmark = pytest.mark.integration


def test_skipped_offsets_are_read_and_only_committed_records_fill_them(settings: Settings) -> None:
    topic = settings.topic("gaps")

    async def go() -> tuple[dict[str, object], dict[bytes, int]]:
        await create_topics(settings, (TopicSpec("gaps", "state", "test", partitions=1),))
        producer = kafka_producer(settings, transactional_id=f"{settings.app_id}.gaps")
        await producer.start()
        at: dict[bytes, int] = {}

        async def txn(values: list[bytes], commit: bool = True) -> None:
            await producer.begin_transaction()
            sent = [await producer.send(topic, v, key=b"k", partition=0) for v in values]
            at.update({v: (await f).offset for v, f in zip(values, sent, strict=True)})
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()

        await txn([b"a"])  # 0, marker 1
        await txn([b"b", b"c"])  # 2, 3, marker 4
        await txn([b"aborted"], commit=False)  # 5, abort marker 6
        await txn([b"d"])  # 7, marker 8
        await txn([b"e"])  # 9, marker 10

        def rec(*values: bytes) -> list[Record]:
            return [(at[v], v) for v in values]

        gaps = GapCheck(settings, topic, f"{settings.app_id}.gaps-group")
        found: dict[str, object] = {}
        try:
            found["a, nothing committed"] = await gaps.complete(0, rec(b"a"))
            gaps.advance(0, at[b"a"] + 1)
            found["reads so far"] = gaps.reads
            found["b, c after a's marker"] = await gaps.complete(0, rec(b"b", b"c"))
            gaps.advance(0, at[b"c"] + 1)
            found["d after marker, aborted, marker"] = await gaps.complete(0, rec(b"d"))
            found["reads then"] = gaps.reads
            gaps.advance(0, at[b"a"] + 1)
            found["b and e, c and d skipped"] = await gaps.complete(0, rec(b"b", b"e"))
            gaps.advance(0, at[b"a"] + 1)
            found["c alone after a lost b"] = await gaps.complete(0, rec(b"c"))
            gaps.advance(0, at[b"d"] + 1)
            found["a and d again, decided already"] = await gaps.complete(0, rec(b"a", b"d"))
            found["filled"] = gaps.filled
            # Written after the partition was taken on: a lone marker is not read.
            await txn([b"f", b"g"])  # 11, 12, marker 13
            await txn([b"h"])  # 14, marker 15
            reads = gaps.reads
            gaps.advance(0, at[b"g"] + 1)
            found["h after g's marker"] = await gaps.complete(0, rec(b"h"))
            found["reads for it"] = gaps.reads - reads
            gaps.rewind(0, at[b"f"], at[b"g"])  # f's write failed
            found["g after a failed write of f"] = await gaps.complete(0, rec(b"g"))
        finally:
            await gaps.stop()
            await producer.stop()
        return found, at

    found, at = asyncio.run(go())

    def rec(*values: bytes) -> list[Record]:
        return [(at[v], v) for v in values]

    assert found == {
        "a, nothing committed": rec(b"a"),  # the topic's first record: no read
        "reads so far": 0,
        "b, c after a's marker": rec(b"b", b"c"),  # read: one offset between, a marker
        "d after marker, aborted, marker": rec(b"d"),  # read: nothing committed between
        "reads then": 2,
        "b and e, c and d skipped": rec(b"b", b"c", b"d", b"e"),
        "c alone after a lost b": rec(b"b", b"c"),  # one offset between, and it is a record
        "a and d again, decided already": [],
        "filled": 3,
        "h after g's marker": rec(b"h"),
        "reads for it": 0,
        "g after a failed write of f": rec(b"f", b"g"),  # read: f is not taken for a marker
    }
