"""The event envelope: the fields every event carries, whatever its type.

An ``Envelope`` is immutable. Concrete event classes (``events.model_for``) narrow
``payload`` to the type's model, so one ``model_validate`` checks the whole event and an
error names its field with the full path (``payload.amount``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from bus.schemas.types import DepartmentCode, Line, Payload, UtcDatetime

EVENT_TYPE_PATTERN = r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$"

HISTORICAL = "bus.historical"
"""Header (value ``1``) of an event that records the past (an import, a back-fill): it is
kept and folded into the enterprise's record like any other, but starts no matter. It is a
header, not an envelope field, so every released Avro schema still describes the events."""


class Envelope(BaseModel):
    """One event on the bus. ``event_id`` is the idempotency key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str = Field(pattern=EVENT_TYPE_PATTERN, max_length=64)
    schema_version: int = Field(default=1, ge=1)
    source: DepartmentCode
    occurred_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: Line = Field(min_length=1, max_length=64)
    correlation_id: Line = Field(default="", max_length=128)
    causation_id: uuid.UUID | None = None
    payload: Any

    def model_post_init(self, context: Any, /) -> None:
        """An original event starts its own case: correlation defaults to its id."""
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", str(self.event_id))

    @model_validator(mode="after")
    def _payload_fits_occurred_at(self) -> Self:
        if isinstance(self.payload, Payload):
            try:
                self.payload.check_occurred_at(self.occurred_at)
            except PydanticCustomError as exc:  # name the field from the envelope down
                ctx = exc.context or {}
                field = f"payload.{ctx['field']}" if "field" in ctx else "payload"
                raise PydanticCustomError(
                    exc.type, exc.message_template, {**ctx, "field": field}
                ) from None
        return self

    def caused(self, event_type: str, payload: Any, *, source: str, **fields: Any) -> Self:
        """A follow-up event in the same case, caused by this one (same subject)."""
        from bus.schemas.events import model_for

        cls = model_for(event_type, fields.pop("schema_version", None))
        return cls(  # type: ignore[return-value]
            event_type=event_type,
            source=source,
            subject=fields.pop("subject", self.subject),
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
            payload=payload,
            **fields,
        )

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The headers every bus topic carries, so consumers can filter without decoding."""
        return [
            ("event_type", self.event_type.encode()),
            ("event_id", str(self.event_id).encode()),
            ("correlation_id", self.correlation_id.encode()),
            ("source", self.source.encode()),
        ]
