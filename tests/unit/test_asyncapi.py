"""The AsyncAPI document: valid AsyncAPI 3.0, and complete and true about the bus.

Validity is checked against the official AsyncAPI 3.0.0 JSON Schema (``tests/data/asyncapi``,
from the AsyncAPI Initiative's spec-json-schemas, which also checks each embedded Avro schema
against Avro's own JSON Schema), plus what a parser resolves beyond it: every ``$ref``
points somewhere, an operation's messages are its channel's, an address's parameters are
declared. Completeness: every event type and schema version, every catalogue topic. Truth:
the embedded schemas are the shipped ones, and a record the codec writes starts with the
bytes the document says it does.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import httpx
import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from bus.cli import app as cli
from bus.edge.gateway.app import create_app
from bus.errors import ConfigurationError
from bus.schemas.events import EVENT_TYPES, FAMILIES
from bus.schemas.registry import LocalSchemaRegistry
from bus.settings import Settings
from bus.streaming.asyncapi import AVRO_FORMAT, asyncapi_document, render
from bus.streaming.codec import EventCodec
from bus.streaming.metrics import GatewayMetrics
from bus.streaming.topics import full_catalogue
from tests.unit.eventdata import build

SPEC = Path(__file__).parents[1] / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
PREFIX = "city7"


@cache
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text()))


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi_document(Settings(topic_prefix=PREFIX))


def problems(document: dict[str, Any]) -> list[str]:
    """What the official schema finds wrong, one line each with the path."""
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator().iter_errors(document)
    ]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for step in ref[2:].split("/"):
        node = node[step.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert problems(doc) == []
    assert problems(json.loads(render(doc, "json"))) == []
    assert yaml.safe_load(render(doc, "yaml")) == json.loads(render(doc, "json"))


def test_the_validator_is_not_a_rubber_stamp(doc: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(doc))
    broken["operations"]["sendIngress"]["action"] = "publish"
    broken["components"]["messages"]["penalty.imposed.v1"]["payload"]["schema"]["type"] = "rec"
    assert len(problems(broken)) == 2


def test_every_reference_resolves_as_a_parser_would(doc: dict[str, Any]) -> None:
    for ref in refs(doc):
        resolve(doc, ref)
    for op_id, op in doc["operations"].items():
        channel = resolve(doc, op["channel"]["$ref"])
        own = {json.dumps(m) for m in channel.get("messages", {}).values()}
        for m in op["messages"]:
            assert json.dumps(resolve(doc, m["$ref"])) in own, (op_id, m)
    for channel_id, channel in doc["channels"].items():
        named = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert named == set(channel.get("parameters", {})), channel_id


def test_every_event_type_and_version_is_a_message(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    registry = LocalSchemaRegistry.load()
    for event_type, spec in EVENT_TYPES.items():
        for version in spec.versions:
            shipped = registry.get(event_type, version)
            m = messages[f"{event_type}.v{version}"]
            assert m["name"] == event_type
            assert m["payload"] == {"schemaFormat": AVRO_FORMAT, "schema": shipped.schema}
            assert m["x-schema-id"] == shipped.id
            assert f"schema id **{shipped.id}**" in m["description"]
            required = ["event_type", "event_id", "correlation_id", "source"]
            assert m["headers"]["required"] == required
            assert m["headers"]["properties"]["event_type"]["const"] == event_type
            assert m["correlationId"]["location"] == "$message.header#/correlation_id"
            kafka = m["bindings"]["kafka"]
            assert kafka["schemaIdLocation"] == "payload"
            assert kafka["schemaIdPayloadEncoding"] == "confluent"
            for channel in ("ingress", "ingress.department", "inbox.department"):
                assert f"{event_type}.v{version}" in doc["channels"][channel]["messages"]
            family = doc["channels"][f"events.{spec.family}"]["messages"]
            assert f"{event_type}.v{version}" in family
    assert len(messages) == len(registry.all()) + 1  # and the dead letter


def test_the_key_is_the_subject_a_uscc(doc: dict[str, Any]) -> None:
    key = doc["components"]["messages"]["penalty.imposed.v1"]["bindings"]["kafka"]["key"]
    uscc = build("penalty.imposed").subject
    assert re.match(key["pattern"], uscc)
    assert not re.match(key["pattern"], uscc.lower())
    assert all(re.match(key["pattern"], k) for k in key["examples"])


def test_canonical_topics_carry_only_their_family(doc: dict[str, Any]) -> None:
    for family in FAMILIES:
        channel = doc["channels"][f"events.{family}"]
        assert channel["address"] == f"{PREFIX}.events.{family}"
        assert all(m.startswith(f"{family}.") for m in channel["messages"])
        assert f"receiveEvents.{family}" in doc["operations"]


def test_every_catalogue_topic_is_a_channel_with_the_prefix(doc: dict[str, Any]) -> None:
    settings = Settings(topic_prefix=PREFIX)
    patterns = []
    for channel in doc["channels"].values():
        enum = channel.get("parameters", {}).get("department", {}).get("enum")
        regex = re.escape(channel["address"]).replace(re.escape("{department}"), "(.+)")
        patterns.append((re.compile(f"^{regex}$"), enum))
    for spec in full_catalogue(settings):
        topic = settings.topic(spec.name)
        matches = [(m, enum) for p, enum in patterns if (m := p.match(topic))]
        assert matches, f"{topic} is in no channel"
        assert any(enum is None or m[1] in enum for m, enum in matches), topic
    assert doc["channels"]["deadletter"]["address"] == f"{PREFIX}.deadletter"
    assert doc["operations"]["sendDepartmentIngress"]["action"] == "send"
    assert doc["operations"]["receiveInbox"]["action"] == "receive"


def test_every_embedded_avro_schema_parses_with_fastavro(doc: dict[str, Any]) -> None:
    embedded = [
        m["payload"]["schema"]
        for m in doc["components"]["messages"].values()
        if m["payload"].get("schemaFormat") == AVRO_FORMAT
    ]
    assert len(embedded) == len(LocalSchemaRegistry.load().all())
    for schema in embedded:
        fastavro.parse_schema(schema)


def test_a_record_starts_with_the_bytes_the_document_names(doc: dict[str, Any]) -> None:
    event = build("penalty.imposed")
    value = EventCodec().encode(event)
    message = doc["components"]["messages"]["penalty.imposed.v1"]
    prefix = re.search(r"starts with `([0-9a-f ]+)`", message["description"])
    assert prefix is not None
    assert value[:5] == bytes.fromhex(prefix[1])
    body = io.BytesIO(value[5:])
    schema = fastavro.parse_schema(message["payload"]["schema"])
    assert fastavro.schemaless_reader(body, schema, None)["event_id"] == event.event_id
    headers = {k: v.decode() for k, v in event.kafka_headers()}
    assert set(message["headers"]["required"]) <= set(headers)


def test_dead_letters_name_their_reason_headers(doc: dict[str, Any]) -> None:
    letter = doc["components"]["messages"]["deadLetter"]
    for header in ("bus.reason", "bus.error", "bus.stage", "bus.origin", "bus.rejected_at"):
        assert header in letter["headers"]["required"]
    assert "bus.field" in letter["headers"]["properties"]
    assert doc["operations"]["receiveDeadLetters"]["channel"] == {"$ref": "#/channels/deadletter"}


def test_the_server_and_its_login_come_from_the_settings() -> None:
    plain = asyncapi_document(Settings(broker="kafka://k1:9092;kafka://k2:9092"))
    assert plain["servers"]["kafka"]["host"] == "k1:9092,k2:9092"
    assert plain["servers"]["kafka"]["protocol"] == "kafka"
    assert "security" not in plain["servers"]["kafka"]
    sasl = asyncapi_document(
        Settings(sasl_username="ks.tax", sasl_password="s3cret", security_protocol="SASL_SSL"),
        server="kafka.city.example:9093",
    )
    server = sasl["servers"]["kafka"]
    assert server["host"] == "kafka.city.example:9093"
    assert server["protocol"] == "kafka-secure"
    scheme = resolve(sasl, server["security"][0]["$ref"])
    assert scheme["type"] == "scramSha512"
    assert "s3cret" not in json.dumps(sasl)
    assert problems(sasl) == []


def test_the_cli_prints_the_same_document(tmp_path: Path) -> None:
    runner = CliRunner()
    as_json = runner.invoke(cli, ["schemas", "asyncapi", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    expected = json.loads(render(asyncapi_document(Settings()), "json"))
    assert json.loads(as_json.stdout) == expected
    as_yaml = runner.invoke(cli, ["schemas", "asyncapi"])
    assert yaml.safe_load(as_yaml.stdout) == expected
    out = tmp_path / "bus.asyncapi.json"
    written = runner.invoke(cli, ["schemas", "asyncapi", "--out", str(out)])
    assert written.exit_code == 0, written.output
    assert json.loads(out.read_text(encoding="utf-8")) == expected
    wrong = runner.invoke(cli, ["schemas", "asyncapi", "--format", "xml"])
    assert wrong.exit_code == 2


async def test_the_gateway_serves_it_without_a_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, topic_prefix=PREFIX)
    app = create_app(settings, GatewayMetrics())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        r = await http.get("/asyncapi.json")
        assert r.status_code == 200, r.text
        assert r.json() == json.loads(render(asyncapi_document(settings), "json"))
        listed = (await http.get("/openapi.json")).json()["paths"]
        assert "/asyncapi.json" in listed


async def test_the_gateway_answers_a_broken_catalogue_with_the_error_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ConfigurationError("cannot read schema manifest")

    monkeypatch.setattr("bus.streaming.asyncapi.asyncapi_document", broken)
    app = create_app(Settings(data_dir=tmp_path), GatewayMetrics())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        r = await http.get("/asyncapi.json")
    assert r.status_code == 503
    assert r.json() == {
        "error": ConfigurationError.reason,
        "field": None,
        "message": "cannot read schema manifest",
    }
