"""``FencedWriter``: a partition's decisions, state and offsets written once, by its owner.

One transactional producer per partition of ``cases`` fences a zombie worker; why the
changelog records follow the transaction instead of riding in it: the class docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
)

from bus.agents.cases.steps import STAGE
from bus.agents.out import Out
from bus.errors import BusError
from bus.settings import Settings
from bus.streaming.client import NO_TRANSACTIONS, kafka_producer, start_or_close

if TYPE_CHECKING:
    from bus.streaming.metrics import AgentMetrics

log = logging.getLogger(__name__)

FENCED = (ProducerFenced, InvalidProducerEpoch)
"""Another worker took the partition over: this one is a zombie and must not write."""


class NotOwned(BusError):
    """A partition was given away while its batch was in hand: its writes are dropped."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} of cases is not this worker's now",
                         reason="cases.not_owned")  # fmt: skip


TXN_TIMEOUT_MS = 30_000
"""How long the broker keeps a dead worker's open transaction before aborting it."""
TXN_END_S = TXN_TIMEOUT_MS / 1000
"""Longest wait for a transaction of ``cases`` to end. aiokafka's commit waits for good when
its producer is stopped under it; one not ended by then is tried again with a new producer."""
RELEASE_WAIT_S = 3.0
"""How long a revocation waits for the writes in hand of the partitions it gives away."""
WRITE_RETRY_MAX_S = 5.0
"""Longest wait between tries of a partition's write. A retriable error is tried again until
the write succeeds or the partition is another worker's."""
COMMIT_S = 1.0
"""How often the offsets of steps decided and saved are committed when no transaction of the
partition carries them sooner. A crash re-runs at most this much, deciding the same."""


class FencedWriter:
    """Writes a batch's decisions for one partition in one Kafka transaction, then its state.

    One transactional producer per partition of ``cases`` (``<app_id>.cases.<p>``): the
    worker that takes a partition over starts its producer and so fences the one before it,
    whose open transaction is aborted and whose later commits fail. A zombie (a worker
    frozen past its session and woken) therefore cannot commit a decision, and writes no
    state either: the table's changelog records follow only a committed transaction. They
    are written outside it because Faust's recovery waits for a changelog's last offset,
    which a transaction's commit marker never delivers; a crash between the two re-runs the
    steps, which decide the same. On a broker without transactions (an embedded development
    broker) plain producers, and a warning.
    """

    def __init__(
        self,
        settings: Settings,
        changelog: str,
        topic: str | None = None,
        commit_plain: Callable[[dict[TopicPartition, int]], Awaitable[Any]] | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics  # its transactions, as the batch agents count theirs
        self.changelog = changelog
        self.topic = topic  # the input whose offsets are committed, under group ``app_id``
        self.commit_plain = commit_plain  # how offsets are committed without transactions
        # Offsets whose steps' outputs and state are written, not yet committed, by partition.
        self.done: dict[int, int] = {}
        self._writing: dict[int, asyncio.Lock] = {}  # one transaction at a time per producer
        self.producers: dict[int, AIOKafkaProducer] = {}
        self.state: AIOKafkaProducer | None = None  # changelog records, after a commit
        self.owned: set[int] = set()  # claimed on assignment, released on revocation
        self.transactions: bool | None = None  # unknown until the first producer starts
        self._starting = asyncio.Lock()
        # One start at a time per partition: the claim and a first write may both start one,
        # and the later of two producers with one transactional id fences the earlier.
        self._claiming: dict[int, asyncio.Lock] = {}

    def transactional_id(self, partition: int) -> str:
        """The transactional id of a partition's producer: the same on every worker."""
        return f"{self.settings.app_id}.cases.{partition}"

    async def claim(self, partitions: Iterable[int]) -> None:
        """Start the producers of partitions just assigned, fencing their previous owners.

        All are owned at once: a producer that cannot start now starts on its first write.
        """
        claimed = sorted(partitions)
        self.owned.update(claimed)
        for p in claimed:
            try:
                await self._producer(p)
            except KafkaError as exc:
                log.warning("cases: partition %s's producer did not start (%r); its first "
                            "write starts it", p, exc)  # fmt: skip

    async def release(self, partitions: Iterable[int]) -> None:
        """Stop the producers of partitions given away, each once its write in hand is done.

        Waits ``RELEASE_WAIT_S`` at most, in all: a producer stopped under a commit leaves
        that commit waiting (aiokafka) until ``TXN_END_S`` ends it.
        """
        deadline = asyncio.get_running_loop().time() + RELEASE_WAIT_S
        given = sorted(set(partitions))
        self.owned.difference_update(given)  # nothing new starts on them
        for p in given:
            lock = self._writing.setdefault(p, asyncio.Lock())
            try:
                async with asyncio.timeout_at(deadline):
                    await lock.acquire()
            except TimeoutError:
                await self._give_up(p)
                continue
            try:
                await self._give_up(p)
            finally:
                lock.release()

    async def _give_up(self, partition: int) -> None:
        self.owned.discard(partition)
        self.done.pop(partition, None)
        await self._renew(partition)

    async def stop(self) -> None:
        """Commit what is done and stop every producer (the worker is stopping)."""
        try:
            await self.commit()
        except Exception as exc:  # the next owner re-runs those steps, deciding the same
            log.info("cases: offsets not committed on stop: %r", exc)
        await self.release(list(self.producers))
        if self.state is not None:
            await self.state.stop()
            self.state = None

    async def _producer(self, partition: int) -> AIOKafkaProducer:
        if partition not in self.owned:
            # Starting one would fence the partition's new owner.
            raise NotOwned(partition)
        producer = self.producers.get(partition)
        if producer is not None:
            return producer
        async with self._claiming.setdefault(partition, asyncio.Lock()):
            producer = self.producers.get(partition)  # started while this one waited
            if producer is not None:
                return producer
            if partition not in self.owned:
                raise NotOwned(partition)
            producer = await self._start(partition)
            if partition not in self.owned:  # given away while it started
                await producer.stop()
                raise NotOwned(partition)
            self.producers[partition] = producer
            return producer

    async def _start(self, partition: int) -> AIOKafkaProducer:
        producer: AIOKafkaProducer | None = None
        if self.transactions is not False:
            producer = kafka_producer(
                self.settings,
                transactional_id=self.transactional_id(partition),
                transaction_timeout_ms=TXN_TIMEOUT_MS,
            )
            try:
                await start_or_close(producer)
                self.transactions = True
            except NO_TRANSACTIONS as exc:
                log.warning("cases: the broker refused transactions (%s): decisions are "
                            "written at least once, and a zombie worker is not fenced",
                            type(exc).__name__)  # fmt: skip
                self.transactions = False
        if not self.transactions:
            producer = kafka_producer(self.settings)
            await start_or_close(producer)
        assert producer is not None
        return producer

    async def write(
        self,
        partition: int,
        outs: list[Out],
        encoded: dict[str, bytes],
        offset: int | None = None,
    ) -> dict[str, int]:
        """Outputs and changelog records of one partition, committed together or not at all.

        ``offset`` (the next step to read) is committed once both are written: in the
        partition's next transaction, or by ``commit`` within ``COMMIT_S``. Raises ``FENCED``
        when another worker took the partition over, ``NotOwned`` when it was given away
        meanwhile, a Kafka error that is not retriable as it is; retriable ones are tried
        again, for as long as it takes (the same records: the transaction before was aborted).
        Returns the changelog offset of each state written.
        """
        async with self._writing.setdefault(partition, asyncio.Lock()):
            saved = await self._write(partition, outs, encoded)
            if offset is not None and self.topic is not None:
                self.done[partition] = max(offset, self.done.get(partition, 0))
            return saved

    async def _write(
        self, partition: int, outs: list[Out], encoded: dict[str, bytes]
    ) -> dict[str, int]:
        attempt = 0
        while True:
            attempt += 1
            producer = await self._producer(partition)
            try:
                if not encoded:
                    # Nothing of the state changed, so these outputs come from their steps
                    # alone (a clean certificate): any worker makes the same bytes, nothing
                    # to fence, and a transaction's round trips would only add latency.
                    if outs:
                        await asyncio.gather(*await self._send(await self._plain(), outs))
                elif self.transactions:
                    with self._counted():
                        async with asyncio.timeout(TXN_END_S), producer.transaction():
                            await self._send(producer, outs)
                            committed = await self._offsets(producer, partition)
                    self._committed(partition, committed)
                else:
                    await asyncio.gather(*await self._send(producer, outs))
                return await self._save(partition, encoded) if encoded else {}
            except FENCED:
                await self._give_up(partition)
                raise
            except (KafkaError, TimeoutError) as exc:
                if partition not in self.owned:
                    raise NotOwned(partition) from exc
                if isinstance(exc, KafkaError) and not (
                    exc.retriable or isinstance(exc, KafkaTimeoutError)
                ):
                    raise
                log.warning("cases: writing partition %s failed (%r); try %s",
                            partition, exc, attempt + 1)  # fmt: skip
                await self._renew(partition)  # a new producer: the old one may be stuck
                await asyncio.sleep(min(0.5 * attempt, WRITE_RETRY_MAX_S))

    async def commit(self, partitions: Iterable[int] | None = None) -> None:
        """Commit the offsets of steps decided and saved, partition by partition.

        Each is committed by the partition's transactional producer, so a zombie cannot
        commit; a partition given away meanwhile is skipped (its owner re-runs those steps).
        """
        for partition in sorted(self.done if partitions is None else set(partitions)):
            if partition not in self.owned:
                self.done.pop(partition, None)
                continue
            async with self._writing.setdefault(partition, asyncio.Lock()):
                if partition not in self.done:
                    continue
                try:
                    producer = await self._producer(partition)
                except NotOwned:
                    continue
                if self.transactions:
                    try:
                        with self._counted():
                            async with asyncio.timeout(TXN_END_S), producer.transaction():
                                committed = await self._offsets(producer, partition)
                    except FENCED:
                        await self._give_up(partition)
                        continue
                    except TimeoutError:  # the next commit, with a new producer
                        log.warning("cases: committing partition %s did not end in %.0f s",
                                    partition, TXN_END_S)  # fmt: skip
                        await self._renew(partition)
                        continue
                    self._committed(partition, committed)
                elif self.commit_plain is not None and self.topic is not None:
                    offset = self.done[partition]
                    await self.commit_plain({TopicPartition(self.topic, partition): offset})
                    self._committed(partition, offset)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Count the transaction run inside by outcome, and time it when it commits."""
        began = time.monotonic()
        try:
            yield
        except FENCED:
            self._outcome("fenced")
            raise
        except (KafkaError, TimeoutError):
            self._outcome("aborted")
            raise
        self._outcome("committed")
        if self.metrics is not None:
            self.metrics.transaction_seconds.labels(STAGE).observe(time.monotonic() - began)

    def _outcome(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.transactions.labels(STAGE, outcome).inc()

    async def _offsets(self, producer: AIOKafkaProducer, partition: int) -> int | None:
        """Add the partition's finished offset to the transaction open on ``producer``."""
        offset = self.done.get(partition)
        if offset is None or self.topic is None:
            return None
        tp = TopicPartition(self.topic, partition)
        await producer.send_offsets_to_transaction({tp: offset}, self.settings.app_id)
        return offset

    def _committed(self, partition: int, offset: int | None) -> None:
        if offset is not None and self.done.get(partition) == offset:
            del self.done[partition]

    async def _renew(self, partition: int) -> None:
        """Drop a partition's producer but keep the partition: the next try starts another.

        (``release`` would also give the partition up, and every later batch of it would be
        dropped as another worker's until the next rebalance.)
        """
        producer = self.producers.pop(partition, None)
        if producer is not None:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, outs: list[Out]) -> list[asyncio.Future[Any]]:
        return [
            await producer.send(o.topic, o.value, key=o.key, partition=o.partition,
                                headers=o.headers)
            for o in outs
        ]  # fmt: skip

    async def _plain(self) -> AIOKafkaProducer:
        """The worker's one non-transactional producer: state, and stateless decisions."""
        async with self._starting:  # partitions are written side by side: start one producer
            if self.state is None:
                producer = kafka_producer(self.settings, enable_idempotence=True)
                await start_or_close(producer)
                self.state = producer
        return self.state

    async def _save(self, partition: int, states: dict[str, bytes]) -> dict[str, int]:
        """Write the changelog records; returns each one's offset."""
        producer = await self._plain()
        sent = [
            await producer.send(self.changelog, value, key=uscc.encode(), partition=partition)
            for uscc, value in states.items()
        ]
        written = await asyncio.gather(*sent)
        return {uscc: meta.offset for uscc, meta in zip(states, written, strict=True)}
