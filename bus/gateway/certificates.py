"""The gateway's index of issued certificates: by serial, only those whose signature verifies.

Started on the first lookup, it tails the certificate topic once and keeps every
``certificate.issued`` that verifies against the bus's public keys (``<data_dir>/keys``), so a
lookup is a dictionary read, not a read of the whole topic per request, and a forged
``certificate.issued`` that somehow reached the topic is never served (it is counted and
logged instead).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.certificates import SignedCertificate, Verifier
from bus.client import topic_partitions
from bus.codec import EventCodec
from bus.errors import BusError
from bus.settings import Settings

log = logging.getLogger(__name__)


class CertificateIndex:
    """Verified certificates by serial; an async context manager for its reader's lifetime."""

    def __init__(self, settings: Settings, codec: EventCodec, keys: Path) -> None:
        self.settings = settings
        self.codec = codec
        self.keys = keys
        self.refused = 0
        self._verifier: Verifier | None = None
        self._by_serial: dict[str, SignedCertificate] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._caught_up = asyncio.Event()

    async def __aenter__(self) -> CertificateIndex:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def get(self, serial: str, wait: float = 10.0) -> SignedCertificate | None:
        """The verified certificate ``serial``, once the index has read what the topic held."""
        async with self._starting:
            if self._consumer is None:
                await self._start()
        async with asyncio.timeout(wait):
            await self._caught_up.wait()
        return self._by_serial.get(serial)

    async def _start(self) -> None:
        topic = self.settings.topic("events.certificate")
        consumer = AIOKafkaConsumer(
            **self.settings.kafka(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=200,
        )  # fmt: skip
        await consumer.start()
        self._consumer = consumer
        known = await topic_partitions(consumer, [topic])  # a missing topic: nothing to index
        tps = [TopicPartition(topic, p) for p in known.get(topic, ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._tail({tp: n for tp, n in ends.items() if n}))

    async def _tail(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        while True:
            if not self._caught_up.is_set():
                positions = [await self._consumer.position(tp) for tp in ends]
                if all(p >= n for p, n in zip(positions, ends.values(), strict=True)):
                    self._caught_up.set()
            try:
                fetched = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            except Exception:  # the broker went away: keep trying; lookups time out meanwhile
                log.exception("gateway certificate index: fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for records in fetched.values():
                for r in records:
                    if dict(r.headers or ()).get("event_type") == b"certificate.issued":
                        self._add(r.value or b"")

    def _add(self, value: bytes) -> None:
        try:
            event = self.codec.decode(value)
            cert = SignedCertificate.from_payload(event.payload, uscc=event.subject)
            self._verify(cert)
        except (BusError, ValueError) as exc:
            self.refused += 1
            log.warning("certificate not indexed, it does not verify: %s", exc)
            return
        self._by_serial[cert.serial] = cert

    def _verify(self, cert: SignedCertificate) -> None:
        """Against the bus's keys; a key id not seen yet reloads them once (a new key)."""
        if self._verifier is None or cert.key_id not in self._verifier.key_ids:
            self._verifier = Verifier.from_paths([self.keys])
        self._verifier.verify(cert)
