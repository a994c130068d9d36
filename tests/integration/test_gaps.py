"""The case engine's gap check on Apache Kafka: a hole is told from markers and aborts.

Records are written as the flow writes case steps (in transactions, some aborted), and the
check is asked about ranges a consumer could have skipped: one commit marker is no hole
(and costs no fetch), an aborted transaction is no hole, a committed record is.
"""

from __future__ import annotations

import asyncio

import pytest

from bus.agents.gaps import GapCheck
from bus.settings import Settings
from bus.streaming.client import kafka_producer
from bus.streaming.topics import TopicSpec, create_topics

pytestmark = pytest.mark.integration


def test_a_hole_is_told_from_commit_markers_and_aborted_transactions(settings: Settings) -> None:
    topic = settings.topic("gaps")

    async def go() -> dict[str, object]:
        await create_topics(settings, (TopicSpec("gaps", "state", "test", partitions=1),))
        producer = kafka_producer(settings, transactional_id=f"{settings.app_id}.gaps")
        await producer.start()
        offsets: list[int] = []

        async def txn(values: list[bytes], commit: bool = True) -> None:
            await producer.begin_transaction()
            sent = [await producer.send(topic, v, key=b"k", partition=0) for v in values]
            offsets.extend([(await f).offset for f in sent])
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()

        try:
            await txn([b"a"])  # 0, marker 1
            await txn([b"b", b"c"])  # 2, 3, marker 4
            await txn([b"aborted"], commit=False)  # 5, abort marker 6
            await txn([b"d"])  # 7, marker 8
        finally:
            await producer.stop()
        a, b, c, _, d = offsets
        gaps = GapCheck(settings, topic, f"{settings.app_id}.gaps-group")
        found: dict[str, object] = {}
        try:
            found["first, nothing committed"] = await gaps.missing(0, a)
            gaps.advance(0, a + 1)
            found["b after a and its marker"] = await gaps.missing(0, b)
            gaps.advance(0, c + 1)
            found["d after c: marker, aborted, marker"] = await gaps.missing(0, d)
            found["fetches so far"] = gaps.checks
            gaps.advance(0, a + 1)
            found["d after a: b and c skipped"] = await gaps.missing(0, d)
            found["d again, while b is read again"] = await gaps.missing(0, d)
            found["b, read again"] = await gaps.missing(0, b)
        finally:
            await gaps.stop()
        return {**found, "b": b}

    found = asyncio.run(go())
    b = found.pop("b")
    assert found == {
        "first, nothing committed": None,  # the topic's first record
        "b after a and its marker": None,  # one offset between: a commit marker, no fetch
        "d after c: marker, aborted, marker": None,  # fetched: nothing committed between
        "fetches so far": 1,
        "d after a: b and c skipped": b,  # a hole: read again from b
        "d again, while b is read again": b,  # records after the hole wait for it
        "b, read again": None,
    }
