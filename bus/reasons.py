"""Every reason code the bus gives, in one catalogue: what it means and where it shows.

A reason is the stable, dotted code of a refusal or failure (``BusError.reason``): in a dead
letter's ``bus.reason`` header, a gateway error's ``error``, a CLI error and metric labels,
so operators filter and count by it. ``Reason`` lists them; ``MEANING`` says what each
means; docs/reasons.md is made from both (``python -m bus.reasons``), and a test checks that
every code the source gives is here. Codes are compared as strings, so existing literals
and ``Reason`` members are interchangeable.
"""

from __future__ import annotations

import sys
from enum import StrEnum


class Reason(StrEnum):
    """A reason code; the part before the first dot is its family."""

    AUTH_BOUND_FIELD = "auth.bound_field"
    AUTH_EVENT_TYPE = "auth.event_type"
    AUTH_KEY = "auth.key"
    AUTH_NOT_OWNER = "auth.not_owner"
    AUTH_RESERVED_SOURCE = "auth.reserved_source"
    AUTH_SOURCE_MISMATCH = "auth.source_mismatch"
    AUTH_UNKNOWN_DECISION = "auth.unknown_decision"
    AUTH_UNKNOWN_SOURCE = "auth.unknown_source"
    BATCH_INVALID = "batch.invalid"
    BROKER_ADVERTISED_LISTENER = "broker.advertised_listener"
    BROKER_ERROR = "broker.error"
    BROKER_EXITED = "broker.exited"
    BROKER_FETCH = "broker.fetch"
    BROKER_FORMAT = "broker.format"
    BROKER_PORT_IN_USE = "broker.port_in_use"
    BROKER_STATE = "broker.state"
    BROKER_TIMEOUT = "broker.timeout"
    BROKER_TOOL = "broker.tool"
    BROKER_UNAVAILABLE = "broker.unavailable"
    BROKER_UNREACHABLE = "broker.unreachable"
    BUS_ERROR = "bus.error"
    CASE_NOT_FOUND = "case.not_found"
    CASES_CRASH = "cases.crash"
    CASES_NOT_OWNED = "cases.not_owned"
    CERTIFICATE_BAD_SIGNATURE = "certificate.bad_signature"
    CERTIFICATE_MALFORMED = "certificate.malformed"
    CERTIFICATE_NOT_FOUND = "certificate.not_found"
    CERTIFICATE_UNKNOWN_KEY = "certificate.unknown_key"
    CERTIFICATE_UNREADABLE = "certificate.unreadable"
    CONFIG_ACLS = "config.acls"
    CONFIG_BROKER_ADDRESS = "config.broker_address"
    CONFIG_BROKER_ENGINE = "config.broker_engine"
    CONFIG_BROKER_HOST = "config.broker_host"
    CONFIG_BROKER_NODES = "config.broker_nodes"
    CONFIG_BROKER_PORT = "config.broker_port"
    CONFIG_BROKER_SASL = "config.broker_sasl"
    CONFIG_INVALID = "config.invalid"
    CONFIG_PUBLIC_KEY = "config.public_key"
    CONFIG_SIGNING_KEY = "config.signing_key"
    CONFIG_WORKERS_RUNNING = "config.workers_running"
    CONNECTOR_COMMIT_REFUSED = "connector.commit_refused"
    CONNECTOR_ERROR = "connector.error"
    CONNECTOR_OUTBOX_COLUMNS = "connector.outbox.columns"
    CONNECTOR_OUTBOX_DATABASE = "connector.outbox.database"
    CONNECTOR_OUTBOX_MISSING_TABLE = "connector.outbox.missing_table"
    CONNECTOR_OUTBOX_PRIVILEGE = "connector.outbox.privilege"
    CONNECTOR_RETRIES_EXHAUSTED = "connector.retries_exhausted"
    CONNECTOR_STATE = "connector.state"
    COOKIE_INVALID = "cookie.invalid"
    CORRELATE_CRASH = "correlate.crash"
    DECISION_BAD_SIGNATURE = "decision.bad_signature"
    DECISION_MALFORMED = "decision.malformed"
    DECISION_UNKNOWN_KEY = "decision.unknown_key"
    DUPLICATE_EVENT_ID = "duplicate.event_id"
    HEADER_INVALID = "header.invalid"
    IMPORT_ENCODING = "import.encoding"
    IMPORT_ID_FIELD = "import.id_field"
    IMPORT_REJECTED = "import.rejected"
    IMPORT_SOURCE_MISMATCH = "import.source_mismatch"
    INBOX_UNAVAILABLE = "inbox.unavailable"
    INGEST_CRASH = "ingest.crash"
    PATH_INVALID = "path.invalid"
    QUERY_INVALID = "query.invalid"
    REPLAY_NO_PRODUCER_ID = "replay.no_producer_id"
    REPLAY_NOT_AUTHORISED = "replay.not_authorised"
    REPORT_BAD_SIGNATURE = "report.bad_signature"
    REPORT_MALFORMED = "report.malformed"
    REPORT_NOT_FOUND = "report.not_found"
    REPORT_UNKNOWN_KEY = "report.unknown_key"
    REPORT_UNREADABLE = "report.unreadable"
    REQUEST_INVALID = "request.invalid"
    ROUTE_METHOD = "route.method"
    ROUTE_UNKNOWN = "route.unknown"
    SCHEMA_DATE_ORDER = "schema.date_order"
    SCHEMA_DATE_RANGE = "schema.date_range"
    SCHEMA_DECODE = "schema.decode"
    SCHEMA_EMPTY = "schema.empty"
    SCHEMA_INCOMPATIBLE = "schema.incompatible"
    SCHEMA_INVALID = "schema.invalid"
    SCHEMA_TEXT = "schema.text"
    SCHEMA_TOO_DEEP = "schema.too_deep"
    SCHEMA_UNKNOWN_ID = "schema.unknown_id"
    SCHEMA_UNKNOWN_TYPE = "schema.unknown_type"
    SCHEMA_UNKNOWN_VERSION = "schema.unknown_version"
    SCHEMA_USCC = "schema.uscc"
    SCHEMA_VALIDATION = "schema.validation"
    SIZE_TOO_LARGE = "size.too_large"
    TASK_CLOSED = "task.closed"
    TASK_NOT_ASSIGNEE = "task.not_assignee"
    TASK_UNKNOWN = "task.unknown"
    WEBHOOK_BAD_SIGNATURE = "webhook.bad_signature"
    WEBHOOK_MALFORMED = "webhook.malformed"
    WEBHOOK_STALE = "webhook.stale"
    WEBHOOK_UNKNOWN_KEY = "webhook.unknown_key"
    WEBHOOK_UNSIGNED = "webhook.unsigned"
    WEBHOOK_WRONG_DEPARTMENT = "webhook.wrong_department"


HTTP_PREFIX = "http."
"""``http.<status>``: any other HTTP error the gateway's framework raised, by its status."""

MEANING: dict[Reason, str] = {
    Reason.AUTH_BOUND_FIELD: "a department named inside the payload is not the publisher",
    Reason.AUTH_EVENT_TYPE: "the department may not publish this event type",
    Reason.AUTH_KEY: "gateway: missing or invalid API key",
    Reason.AUTH_NOT_OWNER: "revoking, correcting or repairing a decision another department "
    "made, and no policy delegates it",
    Reason.AUTH_RESERVED_SOURCE: "the bus's own identity used as a source",
    Reason.AUTH_SOURCE_MISMATCH: "the source is not the department of the key or ingress topic",
    Reason.AUTH_UNKNOWN_DECISION: "the decision acted on is not known to the bus",
    Reason.AUTH_UNKNOWN_SOURCE: "the source is not in the department directory",
    Reason.BATCH_INVALID: "gateway: a batch that is not 1 to 500 events, or holds a bad one",
    Reason.BROKER_ADVERTISED_LISTENER: "a broker advertises an address clients cannot reach",
    Reason.BROKER_ERROR: "the broker failed in a way not named otherwise",
    Reason.BROKER_EXITED: "a local broker process exited",
    Reason.BROKER_FETCH: "the Kafka jars could not be fetched (Maven)",
    Reason.BROKER_FORMAT: "a local Kafka node's storage could not be formatted",
    Reason.BROKER_PORT_IN_USE: "a local broker's port is taken",
    Reason.BROKER_STATE: "a local broker asked for something its state does not allow",
    Reason.BROKER_TIMEOUT: "the broker did not answer in time",
    Reason.BROKER_TOOL: "one of Kafka's tools failed",
    Reason.BROKER_UNAVAILABLE: "gateway: the bus could not be reached or read in time; retry",
    Reason.BROKER_UNREACHABLE: "nothing answers at the broker's address",
    Reason.BUS_ERROR: "an error of the bus without a more precise reason",
    Reason.CASE_NOT_FOUND: "gateway: no such case, or not one the department takes part in",
    Reason.CASES_CRASH: (
        "case engine: a step failed unexpectedly (a fault of the bus); its case is as it was, "
        "the step and the error are kept here"
    ),
    Reason.CASES_NOT_OWNED: "case engine: a partition given away while its batch was in hand",
    Reason.CERTIFICATE_BAD_SIGNATURE: "the certificate's signature does not verify",
    Reason.CERTIFICATE_MALFORMED: "not a signed certificate document",
    Reason.CERTIFICATE_NOT_FOUND: "gateway: no certificate with that serial",
    Reason.CERTIFICATE_UNKNOWN_KEY: "signed with a key the verifier does not hold",
    Reason.CERTIFICATE_UNREADABLE: "the certificate file could not be read",
    Reason.CONFIG_ACLS: "ACLs cannot be made for the directory as it is",
    Reason.CONFIG_BROKER_ADDRESS: "BUS_BROKER is not a usable address",
    Reason.CONFIG_BROKER_ENGINE: "an unknown or unavailable broker engine",
    Reason.CONFIG_BROKER_HOST: "an embedded broker's host that is not loopback",
    Reason.CONFIG_BROKER_NODES: "several nodes asked of an engine that runs one",
    Reason.CONFIG_BROKER_PORT: "a broker port out of range or taken",
    Reason.CONFIG_BROKER_SASL: "SASL settings that do not fit together",
    Reason.CONFIG_INVALID: "settings, catalogue, directory or matter files are wrong",
    Reason.CONFIG_PUBLIC_KEY: "a public key file is missing or wrong",
    Reason.CONFIG_SIGNING_KEY: "the signing key is missing or wrong",
    Reason.CONFIG_WORKERS_RUNNING: "a migration refused while workers run",
    Reason.CONNECTOR_COMMIT_REFUSED: (
        "a sink's group refused its offsets after a rebalance: the next owner delivers again"
    ),
    Reason.CONNECTOR_ERROR: "a connector failed",
    Reason.CONNECTOR_OUTBOX_COLUMNS: "the outbox table lacks a column the connector needs",
    Reason.CONNECTOR_OUTBOX_DATABASE: "the outbox database could not be reached or read",
    Reason.CONNECTOR_OUTBOX_MISSING_TABLE: "the outbox table does not exist",
    Reason.CONNECTOR_OUTBOX_PRIVILEGE: "the outbox's database user lacks a privilege",
    Reason.CONNECTOR_RETRIES_EXHAUSTED: "a delivery gave up after its retries",
    Reason.CONNECTOR_STATE: "a connector used before it was started",
    Reason.COOKIE_INVALID: "gateway: a cookie parameter is wrong",
    Reason.CORRELATE_CRASH: (
        "correlate: a record failed unexpectedly (a fault of the bus); kept here with the error"
    ),
    Reason.DECISION_BAD_SIGNATURE: "the decision's signature does not verify",
    Reason.DECISION_MALFORMED: "not a signed decision (or an event without a signature)",
    Reason.DECISION_UNKNOWN_KEY: "the decision is signed with a key the verifier does not hold",
    Reason.DUPLICATE_EVENT_ID: "an event_id seen before: its effect exists already",
    Reason.HEADER_INVALID: "gateway: a header parameter is wrong",
    Reason.IMPORT_ENCODING: "an import file in an encoding that cannot be read",
    Reason.IMPORT_ID_FIELD: "an import's id column is missing or wrong",
    Reason.IMPORT_REJECTED: "an import line was refused (its own reason beside it)",
    Reason.IMPORT_SOURCE_MISMATCH: "an import line names another department as its source",
    Reason.INBOX_UNAVAILABLE: "gateway: no inbox for the department here",
    Reason.INGEST_CRASH: (
        "ingest: a record failed unexpectedly (a fault of the bus); kept here with the error"
    ),
    Reason.PATH_INVALID: "gateway: a path parameter is wrong",
    Reason.QUERY_INVALID: "gateway: a query parameter is wrong (field names it)",
    Reason.REPLAY_NO_PRODUCER_ID: "a replay's transactional producer could not start",
    Reason.REPLAY_NOT_AUTHORISED: "the operator's principal may not replay",
    Reason.REPORT_BAD_SIGNATURE: "the credit report's signature does not verify",
    Reason.REPORT_MALFORMED: "not a signed credit report document",
    Reason.REPORT_NOT_FOUND: "gateway: no credit report with that serial",
    Reason.REPORT_UNKNOWN_KEY: "the credit report is signed with a key the verifier does not hold",
    Reason.REPORT_UNREADABLE: "the credit report file could not be read",
    Reason.REQUEST_INVALID: "gateway: the request does not fit the route",
    Reason.ROUTE_METHOD: "gateway: method not allowed on this route",
    Reason.ROUTE_UNKNOWN: "gateway: no such route (or task action)",
    Reason.SCHEMA_DATE_ORDER: "a period that ends before it starts",
    Reason.SCHEMA_DATE_RANGE: "a date outside the years the bus accepts",
    Reason.SCHEMA_DECODE: "not JSON, not Avro, bad framing",
    Reason.SCHEMA_EMPTY: "a record with no event in it",
    Reason.SCHEMA_INCOMPATIBLE: "a schema change that would break existing readers",
    Reason.SCHEMA_INVALID: "an event that does not fit its schema",
    Reason.SCHEMA_TEXT: "text with a character the bus refuses (e.g. a control character)",
    Reason.SCHEMA_TOO_DEEP: "JSON nested deeper than the bus reads",
    Reason.SCHEMA_UNKNOWN_ID: "an Avro schema id the bus does not know",
    Reason.SCHEMA_UNKNOWN_TYPE: "no schema for the event_type",
    Reason.SCHEMA_UNKNOWN_VERSION: "a schema_version the bus does not know",
    Reason.SCHEMA_USCC: "a USCC whose check character is wrong",
    Reason.SCHEMA_VALIDATION: "a field is wrong (field names it)",
    Reason.SIZE_TOO_LARGE: "an event or body over the size limit",
    Reason.TASK_CLOSED: "an answer to a task already closed",
    Reason.TASK_NOT_ASSIGNEE: "an answer from a department the task is not assigned to",
    Reason.TASK_UNKNOWN: "an answer to a task the bus does not know",
    Reason.WEBHOOK_BAD_SIGNATURE: "a webhook delivery whose signature does not verify",
    Reason.WEBHOOK_MALFORMED: "a webhook delivery's signature headers are malformed",
    Reason.WEBHOOK_STALE: "a webhook delivery too old (replay protection)",
    Reason.WEBHOOK_UNKNOWN_KEY: "a webhook delivery signed with an unknown key",
    Reason.WEBHOOK_UNSIGNED: "a webhook delivery without a signature",
    Reason.WEBHOOK_WRONG_DEPARTMENT: "a webhook delivery meant for another department",
}


def markdown() -> str:
    """docs/reasons.md: the catalogue as a table per family."""
    lines = [
        "# Reason codes",
        "",
        "Every refusal or failure the bus reports carries one of these codes: a dead letter's",
        "`bus.reason` header, a gateway error's `error`, a CLI error. Made from `bus/reasons.py`",
        "(`python -m bus.reasons > docs/reasons.md`); a test keeps the two equal. Besides these,",
        f"the gateway answers `{HTTP_PREFIX}<status>` for any other HTTP error.",
    ]
    family = ""
    for reason in Reason:
        head = reason.value.split(".")[0]
        if head != family:
            family = head
            lines += ["", f"## {family}", "", "| code | meaning |", "|---|---|"]
        lines.append(f"| `{reason.value}` | {MEANING[reason]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())


__all__ = ["HTTP_PREFIX", "MEANING", "Reason", "markdown"]
