"""The gateway's indexes of issued certificates and credit reports: by serial, only those whose
signature verifies.

It tails the certificate topic once and keeps every ``certificate.issued`` that verifies
against the bus's public keys (``<data_dir>/keys``), so a lookup is a dictionary read, not a
read of the whole topic per request, and a forged ``certificate.issued`` that somehow reached
the topic is never served (it is counted and logged instead).
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiokafka import ConsumerRecord

from bus.domain.certificates import SignedCertificate, Verifier
from bus.domain.reports import SignedReport
from bus.edge.gateway.index import TopicIndex
from bus.errors import BusError
from bus.settings import Settings
from bus.streaming.codec import EventCodec

log = logging.getLogger(__name__)


class CertificateIndex(TopicIndex):
    """Verified certificates by serial; a subclass names another signed document."""

    topic_name = "events.certificate"
    event_type = b"certificate.issued"
    document: type[SignedCertificate] | type[SignedReport] = SignedCertificate
    noun = "certificate"

    def __init__(self, settings: Settings, codec: EventCodec, keys: Path) -> None:
        super().__init__(settings)
        self.codec = codec
        self.keys = keys
        self.refused = 0
        self._verifier: Verifier | None = None
        self._by_serial: dict[str, SignedCertificate | SignedReport] = {}

    async def get(self, serial: str, wait: float = 10.0) -> SignedCertificate | SignedReport | None:
        """The verified document ``serial``, once the index has read what the topic held."""
        await self.ready(wait)
        return self._by_serial.get(serial)

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Index a document that verifies; count and log one that does not."""
        if dict(record.headers or ()).get("event_type") != self.event_type:
            return
        try:
            event = self.codec.decode(record.value or b"")
            doc = self.document.from_payload(event.payload, uscc=event.subject)
            # Against the bus's keys; a key id not seen yet reloads them once (a new key).
            if self._verifier is None or doc.key_id not in self._verifier.key_ids:
                self._verifier = Verifier.from_paths([self.keys])
            self._verifier.check_document(doc.model_dump(mode="json"), self.noun)
        except (BusError, ValueError) as exc:
            self.refused += 1
            log.warning("%s not indexed, it does not verify: %s", self.noun, exc)
            return
        self._by_serial[doc.serial] = doc


class ReportIndex(CertificateIndex):
    """Verified special credit reports by serial."""

    topic_name = "events.report"
    event_type = b"report.issued"
    document = SignedReport
    noun = "report"
