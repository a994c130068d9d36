"""The case agent: the Faust agent, table and timers that run the engine on Kafka."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from mode import Service

from bus.agents.cases.engine import CaseEngine
from bus.agents.cases.state import ROCKSDB_OPTIONS, TableStore
from bus.agents.cases.steps import tick_step
from bus.agents.cases.writer import COMMIT_S, FENCED, FencedWriter, NotOwned
from bus.agents.gaps import GapCheck
from bus.agents.out import Out
from bus.domain.certificates import Signer
from bus.streaming.topics import (
    CASES,
    CASES_TABLE,
    cases_changelog,
)

if TYPE_CHECKING:
    import faust

    from bus.agents.app import Context

log = logging.getLogger(__name__)


def install(app: faust.App, ctx: Context, signer: Signer) -> CaseEngine:
    """Register the case agent, its table and its deadline timer on ``app``."""
    s = ctx.settings
    engine = CaseEngine(ctx, signer)
    # acks=False: Faust neither tracks nor commits this topic's offsets; the writer commits
    # each partition's, after its steps' outputs and state are written.
    topic = app.topic(
        s.topic(CASES.name),
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        acks=False,
    )  # fmt: skip
    # Keyed by the raw USCC bytes and placed by the producer's partitioner, as the topic is:
    # an enterprise's changelog record lands in its steps' partition number. (Faust's default,
    # "the current event's partition", is a batch's last event inside take().)
    table = app.Table(
        CASES_TABLE, default=None, key_type=bytes, value_type=bytes,  # bytes: "raw", no decoding
        use_partitioner=True, partitions=s.partitions,
        options=ROCKSDB_OPTIONS if s.table_store == "rocksdb" else None,
    )  # fmt: skip
    store = TableStore(table, s.partitions)
    name = topic.get_topic_name()
    assert table.changelog_topic.get_topic_name() == cases_changelog(s)  # read by verdicts

    async def commit_plain(offsets: dict[TopicPartition, int]) -> None:
        # Without transactions (an embedded development broker): the group's own commit.
        from faust.types import TP

        consumer: Any = app.consumer  # ``_commit``: the group commit of offsets given, not acked
        await consumer._commit({TP(tp.topic, tp.partition): o for tp, o in offsets.items()})

    writer = FencedWriter(s, cases_changelog(s), name, commit_plain, ctx.metrics)

    gaps = GapCheck(s, name, s.app_id, on_filled=ctx.metrics.case_steps_refetched.inc)

    @app.agent(topic, name="cases")
    async def cases(stream: Any) -> None:
        async for batch in stream.take_events(s.batch_size, within=s.case_batch_wait):
            delivered: dict[int, dict[int, bytes]] = {}
            for event in batch:
                delivered.setdefault(event.message.partition, {})[event.message.offset] = (
                    event.value
                )
            # Every partition this worker holds is indexed in one pass the first time, with
            # the event loop turning meanwhile (heartbeats, the flow's agents, Faust's own).
            mine = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name}
            await engine.index(mine | delivered.keys(), store)
            outs: dict[int, list[Out]] = {}
            firsts: dict[int, int] = {}  # the first offset decided, by partition
            ends: dict[int, int] = {}  # the next offset to read, by partition
            for p, records in delivered.items():
                steps = await gaps.complete(p, sorted(records.items()))
                if not steps:  # nothing new, or not read in time: the next delivery reads it
                    continue
                firsts[p], ends[p] = steps[0][0], steps[-1][0] + 1
                gaps.advance(p, ends[p])
                for _, value in steps:
                    outs.setdefault(p, []).extend(engine.handle(p, value, store))
            states = store.take()
            # The partitions' transactions run side by side: each is several round trips.
            parts = sorted(ends.keys() | states.keys())
            results = await asyncio.gather(
                *(writer.write(p, outs.get(p, []), states.get(p, {}), ends.get(p)) for p in parts),
                return_exceptions=True,
            )
            for p, result in zip(parts, results, strict=True):
                if isinstance(result, (*FENCED, NotOwned)):
                    # Another worker owns the partition: nothing of this batch is kept here.
                    # Its offsets are not committed, so the owner decides these steps again,
                    # the same way, on committed state.
                    log.warning("cases: partition %s is another worker's now (%s): its steps "
                                "in hand are dropped here", p, type(result).__name__)  # fmt: skip
                    engine.forget([p])
                    gaps.forget([p])
                elif isinstance(result, BaseException):
                    # Nothing of it was kept: its steps are read and decided again.
                    log.error("cases: writing partition %s failed (%r); its steps are read "
                              "again from offset %s", p, result, firsts.get(p))  # fmt: skip
                    engine.forget([p])
                    if p in firsts:  # the next record delivered reads them again from there
                        gaps.rewind(p, firsts[p], ends[p])
                    await asyncio.sleep(1.0)
                else:
                    store.apply(p, states.get(p, {}), result)
            engine.export_task_counts()
            ctx.metrics.case_steps.inc(len(batch))

    @app.timer(s.task_check_interval)
    async def deadlines() -> None:
        at = datetime.fromtimestamp(time.time() + s.clock_skew, UTC)
        mine = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name)
        for p in mine:
            try:
                await app.producer.send(name, None, tick_step(at), p, None, None)
            except Exception as exc:  # a partition lost while ticking: its new owner ticks
                log.info("cases: tick to partition %s skipped: %r", p, exc)

    @app.timer(COMMIT_S)
    async def commit_offsets() -> None:
        await writer.commit()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        got = args[0] if args else kwargs.get("assigned", ())
        # Fence the partitions' previous owners now, before their state is restored: their
        # open transactions are aborted, so the restore does not wait for them.
        mine = [tp.partition for tp in got if tp.topic == name]
        gaps.forget(mine)  # their next offset is the group's committed one
        await writer.claim(mine)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        lost = {tp.partition for tp in (args[0] if args else kwargs.get("revoked", ()))
                if tp.topic == name}  # fmt: skip
        engine.forget(lost)
        gaps.forget(lost)
        if lost:
            # What is done is committed now, or the next owner decides those steps again (the
            # same way, but twice). A zombie's commit is fenced; their owner re-decides them.
            try:  # bounded: a write stuck in retries must not hold the rebalance
                await asyncio.wait_for(writer.commit(lost), timeout=s.session_timeout / 2)
            except Exception as exc:
                log.info("cases: offsets not committed on revocation: %r", exc)
        await writer.release(lost)

    @app.service
    class _Writers(Service):  # stops the producers with the worker
        async def on_stop(self) -> None:
            await writer.stop()
            await gaps.stop()

    return engine
