"""Signed decisions: an approval or an application decided by a matter, verifiable offline.

A matter whose outcome says ``issue: decision`` has the event it emits (``approval.decided``,
``application.decided``) signed. The signature covers the *decision document*: the event's
type, id, subject and time, the issuing authority and the payload as decided (without
``key_id`` and ``signature``), in the canonical form and with the keys certificates use
(``bus.domain.certificates``), tagged ``gov.ks.bus.decision/1`` so that it never passes for
a certificate or a report. The document is rebuilt from the event (``from_event``), so a
department holding the event as delivered (its inbox, a webhook) can verify it too.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from bus.domain.certificates import (
    KeyId,
    Signature,
    Signer,
    Verifier,
    canonical_bytes,
    read_document,
    validate_document,
)
from bus.errors import ValidationFailed
from bus.schemas.envelope import Envelope
from bus.schemas.types import DepartmentCode, Line, Uscc, UtcDatetime

FORMAT: Final = "gov.ks.bus.decision/1"
"""The ``format`` tag of this document layout; a new layout gets a new tag."""

REASON_DECISION_MALFORMED = "decision.malformed"
REASON_DECISION_BAD_SIGNATURE = "decision.bad_signature"
REASON_DECISION_UNKNOWN_KEY = "decision.unknown_key"

SIGNED = ("key_id", "signature")
_UNSIGNED = base64.b64encode(bytes(64)).decode("ascii")  # stands in while the body is built


class SignedDecision(BaseModel):
    """What a decision's signature covers, and the signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["gov.ks.bus.decision/1"] = FORMAT
    event_type: Literal["approval.decided", "application.decided"]
    event_id: Line
    uscc: Uscc
    issued_at: UtcDatetime
    issuing_authority: DepartmentCode
    decision: dict[str, Any] = Field(description="the event's payload, without the signature")
    key_id: KeyId
    signature: Signature

    @classmethod
    def from_event(cls, event: Envelope) -> SignedDecision:
        """The document behind a signed ``approval.decided`` / ``application.decided``."""
        payload = event.payload.model_dump(mode="json")
        return validate_document(cls, _document(event, payload) | {
            "key_id": payload.get("key_id"), "signature": payload.get("signature"),
        }, "decision")  # fmt: skip

    def to_json_bytes(self, *, indent: int | None = 2) -> bytes:
        """The file form (layout does not affect the signature)."""
        text = json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=indent)
        return text.encode("utf-8") + b"\n"


def _document(event: Envelope, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "event_type": event.event_type,
        "event_id": str(event.event_id),
        "uscc": event.subject,
        "issued_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "issuing_authority": event.source,
        "decision": {k: v for k, v in payload.items() if k not in SIGNED},
    }


def sign_decision(signer: Signer, event: Envelope) -> Envelope:
    """``event`` with ``key_id`` and ``signature`` in its payload, over its document."""
    payload = event.payload.model_dump(mode="json")
    unsigned = SignedDecision.model_validate(
        _document(event, payload) | {"key_id": signer.key_id, "signature": _UNSIGNED}
    )
    body = unsigned.model_dump(mode="json", exclude={"signature"})  # as a verifier reads it
    signature = base64.b64encode(signer.sign_bytes(canonical_bytes(body))).decode("ascii")
    signed = event.payload.model_copy(update={"key_id": signer.key_id, "signature": signature})
    return event.model_copy(update={"payload": signed})


def verify_decision_bytes(verifier: Verifier, data: bytes) -> SignedDecision:
    """Check a decision: its document, or the event as delivered (an inbox item's ``event``).

    Raises ``ValidationFailed`` (``decision.malformed``, ``field`` names the member), then
    ``BusError`` (``decision.unknown_key``, ``decision.bad_signature``).
    """
    raw = read_document(data, "decision")
    if "format" not in raw and isinstance(raw.get("payload"), dict):
        payload = dict(raw["payload"])
        raw = {
            "format": FORMAT,
            "event_type": raw.get("event_type"),
            "event_id": raw.get("event_id"),
            "uscc": raw.get("subject"),
            "issued_at": raw.get("occurred_at"),
            "issuing_authority": raw.get("source"),
            "decision": {k: v for k, v in payload.items() if k not in SIGNED},
            "key_id": payload.get("key_id"),
            "signature": payload.get("signature"),
        }
        if raw["signature"] is None:
            raise ValidationFailed(
                "decision is malformed: the event carries no signature (its matter does "
                "not sign its decisions)",
                field="payload.signature",
                reason=REASON_DECISION_MALFORMED,
            )
    decision = validate_document(SignedDecision, raw, "decision")
    verifier.check_document(decision.model_dump(mode="json"), "decision")
    return decision


__all__ = ["FORMAT", "SignedDecision", "sign_decision", "verify_decision_bytes"]
