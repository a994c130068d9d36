"""The AsyncAPI document of the bus's Kafka side: topics, event types and their Avro schemas.

The gateway's ``/openapi.json`` tells an HTTP integrator what to send; a system that speaks
Kafka needs the same about topics. This document is generated, never written by hand, from
what the bus itself runs on — the topic catalogue (``bus.streaming.topics``), the event catalogue
(``bus.schemas.events``), the shipped Avro schemas and their ids (``registry.json``) and the
department directory — so it cannot drift from the bus. ``bus schemas asyncapi`` and the
gateway's ``GET /asyncapi.json`` both call :func:`asyncapi_document`.

AsyncAPI 3.0: every channel is a topic (its address is the full name, with the prefix), every
message one event type and schema version, with the Avro schema as shipped.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from bus.schemas.events import EVENT_TYPES, FAMILIES
from bus.schemas.registry import LocalSchemaRegistry, RegisteredSchema
from bus.settings import Settings
from bus.streaming.topics import (
    CATALOGUE,
    DEADLETTER,
    INGRESS,
    TopicSpec,
    canonical,
    department_ingress,
    inbox,
    publishing_departments,
)

if TYPE_CHECKING:
    from bus.domain.departments import Directory

ASYNCAPI_VERSION = "3.0.0"
AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
AVRO_CONTENT_TYPE = "avro/binary"
"""Avro's own media type for its binary encoding; the Confluent framing is in the descriptions."""
KAFKA_BINDING = "0.5.0"
USCC_PATTERN = r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$"

Format = Literal["json", "yaml"]
FORMATS: dict[str, Format] = {"json": "json", "yaml": "yaml"}

# Channel ids of the parameterised families; the rest use the catalogue name.
DEPARTMENT_INGRESS = "ingress.department"
INBOX = "inbox.department"
SECURITY_SCHEME = "departmentLogin"

_MECHANISMS = {"SCRAM-SHA-512": "scramSha512", "SCRAM-SHA-256": "scramSha256", "PLAIN": "plain"}

DESCRIPTION = """\
The Kafka side of the collaboration bus: the topics a department system may publish to or read
from, and the events on them. The HTTP gateway (`/openapi.json`) is the way in for systems that
cannot speak Kafka; this document is for those that can.

**Topics.** Every name starts with the configured prefix (`{prefix}.`). Publishers write the
shared **ingress** (the bus's own edges) or their own `{prefix}.ingress.<department>` (a
department's Kafka principal); the ingest agent checks each event (schema, USCC, who may
publish what, duplicates) and forwards it to the **canonical** topic of its family
(`{prefix}.events.<family>`, kept forever: the evidence log) or to the **dead letters** with
the reason in headers. Each department reads its own **inbox** (`{prefix}.inbox.<department>`,
one partition, one order): the events it subscribed to and everything addressed to it (its
tasks, decisions it asked for). Topics tagged `internal` are the bus's own state: neither read
nor write them.

**Records.** Key: the event's `subject` (an enterprise's USCC), UTF-8, so every event about one
enterprise lands on the same partition, in order. Value: Avro in the **Confluent wire format**
— byte `0x00`, the schema id as 4 bytes big-endian, then the Avro binary body written with
that schema. The ids are fixed in the bus's shipped `registry.json` and named in each message
below; any Confluent-compatible deserializer reads the records once those schemas are loaded
into its registry under the same ids. Ingress also accepts the JSON form of an event (the
gateway's request body) and converts it once; every other topic carries Avro. Headers (UTF-8
strings): `event_type`, `event_id`, `correlation_id`, `source`, and `bus.*` headers where the
bus adds them.

**Login.** On a production cluster each department logs in over SASL as its own principal
(`User:<department code>`); ACLs let it write its own ingress and read its own inbox, nothing
else.
"""


def asyncapi_document(
    settings: Settings,
    *,
    directory: Directory | None = None,
    registry: LocalSchemaRegistry | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus configured by ``settings``.

    ``directory`` and ``registry`` default to the ones the settings name (the shipped ones);
    ``server`` (``host:port``, several comma-separated) replaces the settings' brokers, for a
    document handed to integrators who reach Kafka through another listener.
    """
    from bus.domain.departments import Directory

    directory = directory or Directory.load(settings.departments_file, settings.policy_file)
    registry = registry or LocalSchemaRegistry.load()
    schemas = registry.all()
    messages = {_message_id(s): _message(s) for s in schemas}
    every = list(messages)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def add(
        channel_id: str, spec: TopicSpec, ids: list[str], tags: list[str], **extra: Any
    ) -> None:
        channels[channel_id] = _channel(settings, spec, ids, tags, **extra)

    def operation(
        op_id: str, action: str, channel_id: str, summary: str, desc: str, **extra: Any
    ) -> None:
        ids = list(channels[channel_id].get("messages", {}))
        operations[op_id] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{_pointer(channel_id)}"},
            "summary": summary,
            "description": desc,
            "messages": [
                {"$ref": f"#/channels/{_pointer(channel_id)}/messages/{_pointer(m)}"} for m in ids
            ],
            **extra,
        }

    add("ingress", INGRESS, every, ["ingress"])
    publishers = list(publishing_departments(directory))
    add(
        DEPARTMENT_INGRESS,
        department_ingress("{department}"),
        every,
        ["ingress"],
        parameters={
            "department": {
                "description": "The publishing department's code: its Kafka principal is "
                "`User:<department>`, and every event's `source` must be this code "
                "(else dead letter `auth.source_mismatch`). What each department may publish "
                "is in the department directory (`publishes`).",
                "enum": publishers,
                "examples": publishers[:1],
            }
        },
        description=(
            "What one department publishes as its own Kafka principal. The ACLs let only "
            "`User:<department>` write this topic, so the topic, not the record, says who "
            "published. Subject keyed, with the shared partition count."
        ),
    )
    for family in FAMILIES:
        ids = [m for m, s in zip(messages, schemas, strict=True) if _family(s) == family]
        add(f"events.{family}", canonical(family), ids, ["canonical"])
    add(
        "deadletter",
        DEADLETTER,
        ["deadLetter"],
        ["deadletter"],
        messages={"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
    )
    departments = list(directory.departments)
    add(
        INBOX,
        inbox("{department}"),
        every,
        ["inbox"],
        parameters={
            "department": {
                "description": "The receiving department's code; its principal may read "
                "only its own inbox.",
                "enum": departments,
                "examples": departments[:1],
            }
        },
        description=(
            "What one department receives, in one order (a single partition; a cursor is "
            "an offset): the events its subscriptions match and everything addressed to it "
            "(its tasks, escalations it supervises, decisions it asked for). Each record is "
            "the event's own bytes; header `bus.route` says why it came."
        ),
    )
    for spec in CATALOGUE:
        if spec.role in ("state", "cases"):  # the bus's own, not for departments
            add(spec.name, spec, [], ["internal"])

    operation(
        "sendIngress",
        "send",
        "ingress",
        "Publish events through the bus's shared ingress",
        "For the bus's own edges (gateway, connectors, file import), which bind `source` to "
        "the publisher they authenticated. A department publishing as its own Kafka "
        "principal uses its own ingress instead.",
    )
    operation(
        "sendDepartmentIngress",
        "send",
        DEPARTMENT_INGRESS,
        "Publish your department's events as its Kafka principal",
        "Key: the event's subject. Value: Confluent-framed Avro (or the event's JSON). The "
        "bus answers on the canonical topic, or with a dead letter naming the reason.",
    )
    operation(
        "receiveInbox",
        "receive",
        INBOX,
        "Read your department's inbox",
        "Events routed to you and your tasks, oldest first; resume from the next offset.",
        bindings={
            "kafka": {
                "groupId": {
                    "type": "string",
                    "description": "A consumer group of your own: the ACLs allow names that "
                    "start with your department code and a dot.",
                    "examples": ["ks.tax.inbox"],
                },
                "bindingVersion": KAFKA_BINDING,
            }
        },
    )
    for family in FAMILIES:
        operation(
            f"receiveEvents.{family}",
            "receive",
            f"events.{family}",
            f"Read every accepted {family}.* event",
            "Validated, authorised and de-duplicated events: the evidence log, for audit and "
            "analytics principals the ACLs allow.",
        )
    operation(
        "receiveDeadLetters",
        "receive",
        "deadletter",
        "Read what the bus refused",
        "For operators: the original bytes with the reason in headers; `bus deadletters` "
        "lists and replays them.",
    )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Collaboration bus: Kafka topics and events",
            "version": _version(),
            "description": DESCRIPTION.format(prefix=settings.topic_prefix),
            "tags": [
                {"name": "ingress", "description": "what publishers write; untrusted"},
                {"name": "canonical", "description": "validated events, one topic per family"},
                {"name": "inbox", "description": "what one department receives"},
                {"name": "deadletter", "description": "everything refused, with the reason"},
                {"name": "internal", "description": "the bus's own state; not for integrators"},
            ],
        },
        "defaultContentType": AVRO_CONTENT_TYPE,
        "servers": {"kafka": _server(settings, server)},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {**messages, "deadLetter": _dead_letter()},
            "securitySchemes": {SECURITY_SCHEME: _security(settings)},
        },
    }


def render(document: dict[str, Any], fmt: Format = "yaml") -> str:
    """The document as YAML (for people and most tools) or JSON, non-ASCII kept as written."""
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    import yaml

    class Dumper(yaml.SafeDumper):
        """Multi-line text as literal blocks, so descriptions read as written."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(document, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


def _version() -> str:
    try:
        return version("collaboration-bus")
    except PackageNotFoundError:  # a source tree never installed
        return "0"


def _pointer(key: str) -> str:
    """``key`` as one JSON Pointer step (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _family(schema: RegisteredSchema) -> str:
    return schema.subject.split(".", 1)[0]


def _message_id(schema: RegisteredSchema) -> str:
    return f"{schema.subject}.v{schema.version}"


def _server(settings: Settings, server: str | None) -> dict[str, Any]:
    options = settings.kafka_security()
    protocol = options["security_protocol"]
    host = server or ",".join(settings.bootstrap_servers)
    out: dict[str, Any] = {
        "host": host,
        "protocol": "kafka-secure" if protocol.endswith("SSL") else "kafka",
        "title": "Kafka",
        "description": f"Bootstrap servers (Kafka's `bootstrap.servers`): `{host}`; "
        f"security protocol `{protocol}`.",
        "bindings": {
            "kafka": {"schemaRegistryVendor": "confluent", "bindingVersion": KAFKA_BINDING}
        },
    }
    if protocol.startswith("SASL"):
        out["security"] = [{"$ref": f"#/components/securitySchemes/{SECURITY_SCHEME}"}]
    return out


def _security(settings: Settings) -> dict[str, Any]:
    return {
        "type": _MECHANISMS[settings.sasl_mechanism],
        "description": f"SASL {settings.sasl_mechanism}. Each department logs in as its own "
        "principal, `User:<department code>`, with the password its operator gave it "
        "(`bus topics acls` prints the SCRAM users and ACLs). The ACLs allow writing "
        "`<prefix>.ingress.<department>` and reading `<prefix>.inbox.<department>` with "
        "consumer groups named `<department>.…`; nothing else.",
    }


def _channel(
    settings: Settings,
    spec: TopicSpec,
    ids: list[str],
    tags: list[str],
    *,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    messages: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {"retention.ms": spec.retention_ms}
    config["cleanup.policy"] = ["compact"] if spec.compacted else ["delete"]
    out: dict[str, Any] = {
        "address": settings.topic(spec.name),
        "title": spec.name,
        "description": description or _sentence(spec.description),
    }
    if messages is not None:
        out["messages"] = messages
    elif ids:
        out["messages"] = {m: {"$ref": f"#/components/messages/{_pointer(m)}"} for m in ids}
    if parameters:
        out["parameters"] = parameters
    out["tags"] = [{"name": t} for t in tags]
    out["bindings"] = {
        "kafka": {
            "partitions": spec.partitions or settings.partitions,
            "replicas": settings.replication_factor,
            "topicConfiguration": config,
            "bindingVersion": KAFKA_BINDING,
        }
    }
    return out


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _key_schema(subject_kind: str) -> dict[str, Any]:
    if subject_kind == "uscc":
        return {
            "type": "string",
            "description": "The event's subject: the enterprise's unified social credit code "
            "(USCC, 18 characters, check character included), UTF-8.",
            "pattern": USCC_PATTERN,
            "examples": ["91350100M000100Y43"],
        }
    return {"type": "string", "description": "The event's subject, UTF-8.", "minLength": 1}


def _headers(event_type: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Kafka record headers, UTF-8 strings: consumers can filter on them "
        "without decoding the value.",
        "required": ["event_type", "event_id", "correlation_id", "source"],
        "properties": {
            "event_type": {"type": "string", "const": event_type},
            "event_id": {
                "type": "string",
                "format": "uuid",
                "description": "The idempotency key: the same id never has a second effect.",
            },
            "correlation_id": {"type": "string", "description": "The case the event belongs to."},
            "source": {
                "type": "string",
                "description": "The publishing department's code.",
                "examples": ["ks.enforcement.huaqiao"],
            },
            "bus.historical": {
                "type": "string",
                "const": "1",
                "description": "On an event that records the past (an import, a back-fill): "
                "kept in the enterprise's record, starts no matter.",
            },
            "bus.route": {
                "type": "string",
                "description": "Inboxes only: the subscription that delivered the record, or "
                "`notify` for a task or decision addressed to the department.",
            },
            "bus.notify": {
                "type": "string",
                "description": "On the bus's own decisions on a canonical topic: the "
                "departments that must receive it, comma-separated.",
            },
            "bus.replay_of": {
                "type": "string",
                "description": "On a record re-submitted from a dead letter: that letter's "
                "origin (`topic/partition/offset`).",
            },
            "bus.replay_first": {
                "type": "string",
                "description": "On a replayed record: the origin of the event's first dead letter.",
            },
            "bus.replay_count": {
                "type": "string",
                "description": "On a replayed record: how many times the event was replayed.",
            },
        },
    }


def _message(schema: RegisteredSchema) -> dict[str, Any]:
    spec = EVENT_TYPES[schema.subject]
    prefix = f"00 {schema.id:08x}"
    prefix = f"{prefix[:2]} {prefix[3:5]} {prefix[5:7]} {prefix[7:9]} {prefix[9:11]}"
    latest = " (the latest)" if schema.version == spec.latest else ""
    return {
        "name": schema.subject,
        "title": f"{schema.subject} v{schema.version}",
        "summary": spec.description,
        "description": (
            f"`{schema.subject}`, schema version {schema.version}{latest}, schema id "
            f"**{schema.id}**.\n\n"
            "Value in the Confluent wire format: magic byte `0x00`, the schema id as 4 bytes "
            f"big-endian (so every record of this version starts with `{prefix}`), then the "
            "Avro binary body written with the schema below. Key: the subject, UTF-8."
        ),
        "contentType": AVRO_CONTENT_TYPE,
        "headers": _headers(schema.subject),
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": schema.schema},
        "correlationId": {
            "description": "The case (matter) this event belongs to.",
            "location": "$message.header#/correlation_id",
        },
        "tags": [{"name": _family(schema)}],
        "bindings": {
            "kafka": {
                "key": _key_schema(spec.subject),
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "x-schema-id": schema.id,
        "x-schema-version": schema.version,
    }


def _dead_letter() -> dict[str, Any]:
    return {
        "name": "deadLetter",
        "title": "A refused record",
        "summary": "Everything the bus refused, kept with its original key, bytes and headers.",
        "description": (
            "The value is the refused record's value byte for byte: usually Confluent-framed "
            "Avro of one of the event messages (read its schema id), the JSON an edge "
            "published, or bytes that could not be decoded. The key is the original key. "
            "The original headers are kept (their `bus.*` ones replaced, except `bus.route` "
            "and `bus.replay_*`) and the reason is added. Reason codes are stable: "
            "`schema.validation`, `schema.uscc`, `auth.event_type`, `auth.source_mismatch`, "
            "`duplicate.event_id`, `connector.retries_exhausted`, ... (docs/architecture.md)."
        ),
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "required": ["bus.reason", "bus.error", "bus.stage", "bus.origin", "bus.rejected_at"],
            "properties": {
                "bus.reason": {
                    "type": "string",
                    "description": "Stable reason code, the same as the gateway's `error`.",
                    "examples": ["schema.validation", "auth.source_mismatch"],
                },
                "bus.error": {"type": "string", "description": "A sentence for people."},
                "bus.field": {
                    "type": "string",
                    "description": "Dotted path of the field at fault, when there is one.",
                    "examples": ["payload.amount"],
                },
                "bus.stage": {
                    "type": "string",
                    "description": "Where it was refused: `ingest`, `correlate`, "
                    "`connector.<name>`.",
                },
                "bus.origin": {
                    "type": "string",
                    "description": "Where the refused record was: `topic/partition/offset`.",
                },
                "bus.rejected_at": {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": "When, in milliseconds since the epoch.",
                },
                "event_type": {"type": "string"},
                "event_id": {"type": "string"},
                "correlation_id": {"type": "string"},
                "source": {"type": "string"},
                "bus.route": {"type": "string"},
                "bus.replay_of": {"type": "string"},
                "bus.replay_first": {"type": "string"},
                "bus.replay_count": {"type": "string"},
            },
        },
        "payload": {"description": "The refused record's value, unchanged."},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "The refused record's key."},
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


__all__ = ["ASYNCAPI_VERSION", "AVRO_FORMAT", "FORMATS", "Format", "asyncapi_document", "render"]
