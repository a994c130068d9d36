"""The bus's errors: one root, a few families, each with a machine-readable reason.

    BusError
    ├── ConfigurationError          settings, catalogue, directory or matter files are wrong
    ├── SchemaError                 an event cannot be decoded or does not fit its schema
    │   ├── DecodeError             not JSON / not Avro / bad framing / unknown schema id
    │   ├── ValidationFailed        decoded, but a field is wrong (names the field)
    │   ├── UnknownEventType        no schema is registered for ``event_type``
    │   └── IncompatibleSchema      a schema change would break existing readers
    ├── AuthorisationError          the source may not publish this, or act on that object
    ├── DuplicateEvent              the ``event_id`` was seen before (not an error for callers)
    ├── BrokerError                 the Kafka-protocol broker is unreachable or misbehaves
    ├── ConnectorError              a connector failed (``retriable`` says whether to try again)
    └── GatewayError                an HTTP answer: status beside the reason
                                    (bus.edge.gateway.errors)

``reason`` is a stable, dotted code (``schema.validation``, ``auth.event_type`` ...) that ends
up in dead-letter headers and metric labels, so operators can filter and count by it; every
code is in ``bus.reasons`` (docs/reasons.md); ``str()`` is the human sentence.
``retriable`` follows aiokafka's convention: ``True`` means trying the same thing again later
may succeed.
"""

from __future__ import annotations

from typing import NamedTuple


class BusError(Exception):
    """Root of every error the bus raises on purpose."""

    reason: str = "bus.error"
    retriable: bool = False

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        """The human sentence, without the reason code."""
        return str(self.args[0]) if self.args else ""


class ConfigurationError(BusError):
    """Settings, catalogue or data files are wrong; the process should not start."""

    reason = "config.invalid"


class SchemaError(BusError):
    """An event cannot be decoded or does not fit its schema."""

    reason = "schema.invalid"


class DecodeError(SchemaError):
    """The bytes are not what they claim to be (JSON, Avro, Confluent framing)."""

    reason = "schema.decode"


class Problem(NamedTuple):
    """One wrong field of an event: its dotted path, reason code and what is wrong with it."""

    field: str | None
    reason: str
    message: str


class ValidationFailed(SchemaError):
    """A field of a decoded event is wrong; ``field`` names it (dotted path).

    The reason and field are the first problem's (what a dead letter carries); ``problems``
    lists every wrong field with its own reason, for reports that name each one (imports).
    """

    reason = "schema.validation"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        problems: list[Problem] | None = None,
    ):
        super().__init__(message, reason=reason)
        self.field = field
        self.problems: list[Problem] = problems or [Problem(field, self.reason, message)]


class UnknownEventType(SchemaError):
    """No schema is registered for the event type (or that version of it)."""

    reason = "schema.unknown_type"


class IncompatibleSchema(SchemaError):
    """A new schema version cannot read data written with an older one."""

    reason = "schema.incompatible"


class AuthorisationError(BusError):
    """The source may not publish this event type, or not act on this object (``field``)."""

    reason = "auth.event_type"

    def __init__(self, message: str, *, reason: str | None = None, field: str | None = None):
        super().__init__(message, reason=reason)
        self.field = field


class DuplicateEvent(BusError):
    """The event id was already accepted; re-publishing has no second effect."""

    reason = "duplicate.event_id"


class BrokerError(BusError):
    """The broker is unreachable or answered wrongly."""

    reason = "broker.error"
    retriable = True


class ConnectorError(BusError):
    """A connector failed; ``retriable`` says whether back-off and retry may help."""

    reason = "connector.error"

    def __init__(self, message: str, *, retriable: bool = False, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.retriable = retriable


def first_problem(exc: Exception) -> str:
    """``"<dotted.path>: <message>"`` of a pydantic ``ValidationError``'s first error.

    Configuration files (subscriptions, connectors) name the entry and field at fault this
    way; taking any exception keeps this module free of imports.
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors) or not errors():
        return str(exc)
    first = errors()[0]
    return ".".join(str(p) for p in first["loc"]) + f": {first['msg']}"


__all__ = [
    "AuthorisationError",
    "BrokerError",
    "BusError",
    "ConfigurationError",
    "ConnectorError",
    "DecodeError",
    "DuplicateEvent",
    "IncompatibleSchema",
    "Problem",
    "SchemaError",
    "UnknownEventType",
    "ValidationFailed",
    "first_problem",
]
