"""The gateway's index of issued credit reports: by serial, only those whose signature verifies.

Like the certificate index: it tails the report topic once and keeps every ``report.issued``
that verifies against the bus's public keys, so a forged one is never served.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiokafka import ConsumerRecord

from bus.domain.certificates import Verifier
from bus.domain.reports import SignedReport
from bus.edge.gateway.index import TopicIndex
from bus.errors import BusError
from bus.settings import Settings
from bus.streaming.codec import EventCodec

log = logging.getLogger(__name__)


class ReportIndex(TopicIndex):
    """Verified credit reports by serial."""

    topic_name = "events.report"

    def __init__(self, settings: Settings, codec: EventCodec, keys: Path) -> None:
        super().__init__(settings)
        self.codec = codec
        self.keys = keys
        self.refused = 0
        self._verifier: Verifier | None = None
        self._by_serial: dict[str, SignedReport] = {}

    async def get(self, serial: str, wait: float = 10.0) -> SignedReport | None:
        """The verified report ``serial``, once the index has read what the topic held."""
        await self.ready(wait)
        return self._by_serial.get(serial)

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Index a ``report.issued`` that verifies; count and log one that does not."""
        if dict(record.headers or ()).get("event_type") != b"report.issued":
            return
        try:
            event = self.codec.decode(record.value or b"")
            report = SignedReport.from_payload(event.payload, uscc=event.subject)
            if self._verifier is None or report.key_id not in self._verifier.key_ids:
                self._verifier = Verifier.from_paths([self.keys])  # a new key: reload once
            self._verifier.check_document(report.model_dump(mode="json"), "report")
        except (BusError, ValueError) as exc:
            self.refused += 1
            log.warning("report not indexed, it does not verify: %s", exc)
            return
        self._by_serial[report.serial] = report
