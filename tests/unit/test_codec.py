"""The codec: Avro in the Confluent wire format and JSON, both ways, for every event type.

The wire bytes are checked independently of the codec (header by hand, body with plain
fastavro and the shipped ``.avsc``), so a codec that agreed only with itself would fail.
Every malformed input is refused with a ``BusError`` carrying a reason code.
"""

from __future__ import annotations

import io
import json
import struct
import time
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import pytest

from bus.errors import DecodeError, UnknownEventType, ValidationFailed
from bus.schemas.envelope import Envelope
from bus.schemas.events import EVENT_TYPES
from bus.schemas.jsontext import MAX_JSON_DEPTH, check_json_depth, load_json
from bus.schemas.registry import LocalSchemaRegistry
from bus.streaming.codec import MAX_CLOCK_SKEW, EventCodec
from tests.unit.eventdata import build, fields

AVRO_DIR = Path(str(resources.files("bus.schemas") / "avro"))
TYPES = sorted(EVENT_TYPES)


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return EventCodec()


def shipped_ids() -> dict[str, int]:
    """Each event type's schema id for the version the bus writes (its latest)."""
    manifest = json.loads((AVRO_DIR / "registry.json").read_text())
    return {e["subject"]: e["id"] for e in manifest["schemas"]
            if e["version"] == EVENT_TYPES[e["subject"]].latest}  # fmt: skip


def shipped_schema(event_type: str) -> Any:
    latest = EVENT_TYPES[event_type].latest
    return fastavro.parse_schema(
        json.loads((AVRO_DIR / f"{event_type}.v{latest}.avsc").read_text())
    )


# --- Avro ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", TYPES)
def test_avro_round_trip(codec: EventCodec, event_type: str) -> None:
    event = build(event_type, correlation_id="case-0001")
    back = codec.decode(codec.encode(event))
    assert back.model_dump() == event.model_dump()
    assert back.event_type == event_type
    assert back.payload == event.payload


def test_avro_round_trip_keeps_causation_and_optional_fields(codec: EventCodec) -> None:
    request = build("certificate.requested")
    payload = fields("certificate.issued")["payload"]
    issued = request.caused("certificate.issued", payload, source="ks.bus")
    back = codec.decode(codec.encode(issued))
    assert back.causation_id == request.event_id
    assert back.correlation_id == str(request.event_id)
    changed = build("enterprise.changed")
    assert changed.payload.name is None
    assert codec.decode(codec.encode(changed)).payload.name is None


def test_decoded_event_equals_the_original(codec: EventCodec) -> None:
    """Same fields, same type and version: the decoded event is equal to what was sent."""
    event = build("penalty.imposed")
    assert codec.decode(codec.encode(event)) == event


@pytest.mark.parametrize("event_type", TYPES)
def test_confluent_framing(codec: EventCodec, event_type: str) -> None:
    data = codec.encode(build(event_type))
    assert data[0] == 0x00
    schema_id = int.from_bytes(data[1:5], "big")
    assert schema_id == shipped_ids()[event_type]
    assert schema_id == codec.registry.get(event_type, EVENT_TYPES[event_type].latest).id


def test_framing_id_is_big_endian() -> None:
    # With id 258 the two orders differ: a little-endian writer would put 0x02 0x01 first.
    event = build("penalty.imposed")
    base = LocalSchemaRegistry.load().get("penalty.imposed", 1)
    registry = LocalSchemaRegistry([type(base)(258, base.subject, 1, base.schema, base.parsed)])
    data = EventCodec(registry).encode(event)
    assert data[:5] == b"\x00\x00\x00\x01\x02"
    assert EventCodec(registry).decode(data).model_dump() == event.model_dump()


@pytest.mark.parametrize("event_type", TYPES)
def test_body_is_readable_by_plain_fastavro_with_the_shipped_schema(
    codec: EventCodec, event_type: str
) -> None:
    event = build(event_type)
    data = codec.encode(event)
    body = io.BytesIO(data[5:])
    record = fastavro.schemaless_reader(body, shipped_schema(event_type), None)
    assert body.tell() == len(data) - 5  # the whole body, nothing else
    assert record == event.model_dump()


def test_plain_fastavro_bytes_decode_with_the_codec(codec: EventCodec) -> None:
    """The other direction: a foreign Confluent producer's bytes are read by the bus."""
    event = build("licence.granted")
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", shipped_ids()["licence.granted"]))
    fastavro.schemaless_writer(buf, shipped_schema("licence.granted"), event.model_dump())
    assert codec.decode(buf.getvalue()).model_dump() == event.model_dump()


# --- Avro decode errors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def avro(codec: EventCodec) -> bytes:
    return codec.encode(build("penalty.imposed"))


def test_decode_empty(codec: EventCodec) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(b"")
    assert info.value.reason == "schema.decode"


@pytest.mark.parametrize("first", [b"\x01", b"{", b"\xff"])
def test_decode_missing_magic_byte(codec: EventCodec, avro: bytes, first: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(first + avro[1:])
    assert info.value.reason == "schema.decode"
    assert "missing magic byte 0x00" in str(info.value)


def test_decode_shorter_than_the_header(codec: EventCodec, avro: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(avro[:4])
    assert info.value.reason == "schema.decode"


@pytest.mark.parametrize("schema_id", [0, 28, 99, 2**32 - 1])
def test_decode_unknown_schema_id(codec: EventCodec, avro: bytes, schema_id: int) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(b"\x00" + struct.pack(">I", schema_id) + avro[5:])
    assert info.value.reason == "schema.unknown_id"
    assert f"unknown schema id {schema_id}" in str(info.value)


def test_decode_every_truncation_of_the_body(codec: EventCodec, avro: bytes) -> None:
    for end in range(5, len(avro)):
        with pytest.raises(DecodeError) as info:
            codec.decode(avro[:end])
        assert info.value.reason == "schema.decode", end


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", b"\x00" * 100])
def test_decode_trailing_bytes(codec: EventCodec, avro: bytes, extra: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(avro + extra)
    assert info.value.reason == "schema.decode"
    assert f"{len(extra)} trailing bytes" in str(info.value)


def test_decode_event_type_not_matching_the_schema_id(codec: EventCodec) -> None:
    """Bytes written with penalty.revoked's schema but claiming to be penalty.imposed."""
    record = build("penalty.revoked").model_dump() | {"event_type": "penalty.imposed"}
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", shipped_ids()["penalty.revoked"]))
    fastavro.schemaless_writer(buf, shipped_schema("penalty.revoked"), record)
    with pytest.raises(ValidationFailed) as info:
        codec.decode(buf.getvalue())
    assert info.value.field == "event_type"
    assert "'penalty.imposed' does not match schema id 5 (penalty.revoked)" in str(info.value)


def test_decode_revalidates_the_model(codec: EventCodec) -> None:
    """Avro checks types, not rules: a bad USCC in well-formed Avro is still refused."""
    record = build("penalty.imposed").model_dump() | {"subject": "91330100799655058C"}
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", shipped_ids()["penalty.imposed"]))
    fastavro.schemaless_writer(buf, shipped_schema("penalty.imposed"), record)
    with pytest.raises(ValidationFailed) as info:
        codec.decode(buf.getvalue())
    assert info.value.reason == "schema.uscc"
    assert info.value.field == "subject"


# --- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", TYPES)
def test_json_round_trip(codec: EventCodec, event_type: str) -> None:
    event = build(event_type)
    text = codec.to_json(event)
    assert json.loads(text)["event_type"] == event_type
    assert codec.from_json(text).model_dump() == event.model_dump()
    assert codec.from_json(text.encode()).model_dump() == event.model_dump()
    assert codec.from_json(json.loads(text)).model_dump() == event.model_dump()


def test_from_json_defaults_schema_version_to_1(codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    del obj["schema_version"]
    assert codec.from_json(obj).schema_version == 1


@pytest.mark.parametrize("text", [b"{", b"penalty", b"", b"\xff\xfe\x00"])
def test_from_json_not_json(codec: EventCodec, text: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.from_json(text)
    assert info.value.reason == "schema.decode"
    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ('"x"', "str"), ("7", "int")])
def test_from_json_not_an_object(codec: EventCodec, text: str, kind: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.from_json(text)
    assert str(info.value) == f"an event must be a JSON object, got {kind}"


@pytest.mark.parametrize("event_type", [None, 7, ["penalty.imposed"]])
def test_from_json_missing_or_non_string_event_type(codec: EventCodec, event_type: Any) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    if event_type is None:
        del obj["event_type"]
    else:
        obj["event_type"] = event_type
    with pytest.raises(ValidationFailed) as info:
        codec.from_json(obj)
    assert info.value.field == "event_type"
    assert info.value.reason == "schema.validation"


@pytest.mark.parametrize("version", ["1", 1.0, True, None])
def test_from_json_schema_version_not_int(codec: EventCodec, version: Any) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    obj["schema_version"] = version
    with pytest.raises(ValidationFailed) as info:
        codec.from_json(obj)
    assert info.value.field == "schema_version"


def test_from_json_unknown_type_and_version(codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    with pytest.raises(UnknownEventType) as info:
        codec.from_json({**obj, "event_type": "penalty.forgiven"})
    assert info.value.reason == "schema.unknown_type"
    with pytest.raises(UnknownEventType) as info:
        codec.from_json({**obj, "schema_version": 3})
    assert info.value.reason == "schema.unknown_version"


def test_from_json_names_the_payload_field(codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    obj["payload"]["amount"] = "lots"
    with pytest.raises(ValidationFailed) as info:
        codec.from_json(obj)
    assert info.value.field == "payload.amount"
    assert info.value.reason == "schema.validation"
    assert str(info.value).startswith("payload.amount: ")


def test_from_json_counts_errors_beyond_three(codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    obj["payload"] = {}
    with pytest.raises(ValidationFailed) as info:
        codec.from_json(obj)
    assert str(info.value).endswith("(+4 more)")  # 7 required payload fields missing
    assert str(info.value).count("Field required") == 3


# --- hostile JSON ----------------------------------------------------------------------------


def nested(depth: int, inside: str = "1") -> str:
    """``depth`` levels of arrays and objects, alternating, around ``inside``."""
    opens = "".join('{"a":' if i % 2 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opens + inside + closes


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 200_000])
def test_json_nested_too_deep_is_refused_before_parsing(codec: EventCodec, depth: int) -> None:
    """Python's parser recurses: 1000 levels used to raise RecursionError, not a BusError."""
    text = nested(depth)
    for data in (text, text.encode()):
        with pytest.raises(DecodeError) as info:
            codec.from_json(data)
        assert info.value.reason == "schema.too_deep"
        assert str(MAX_JSON_DEPTH) in str(info.value)


def test_json_nested_too_deep_inside_an_event_is_refused(codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    obj["payload"]["case_number"] = "@deep@"
    text = json.dumps(obj).replace('"@deep@"', nested(5000))
    with pytest.raises(DecodeError) as info:
        codec.from_json(text.encode())
    assert info.value.reason == "schema.too_deep"


def test_json_at_the_depth_limit_is_parsed() -> None:
    assert load_json(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(DecodeError):
        load_json(nested(MAX_JSON_DEPTH + 1))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"note": "[" * 5000 + '\\"{' * 100, "x": [["]]]]"]]})
    assert load_json(text)["x"] == [["]]]]"]]
    check_json_depth(text.encode())


def test_huge_integers_are_a_decode_error_not_a_crash(codec: EventCodec) -> None:
    text = '{"event_type": "penalty.imposed", "schema_version": ' + "9" * 5000 + "}"
    with pytest.raises(DecodeError) as info:
        codec.from_json(text)
    assert info.value.reason == "schema.decode"


@pytest.mark.parametrize(
    ("occurred_at", "reason"),
    [
        ("9999-12-31T23:59:59-01:00", "schema.date_range"),
        ("0001-01-01T00:00:00+14:00", "schema.date_range"),
        ("1900-01-01T00:00:00+08:00", "schema.date_range"),
    ],
)
def test_extreme_instants_get_a_reason_not_an_overflow(
    codec: EventCodec, occurred_at: str, reason: str
) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    with pytest.raises(ValidationFailed) as info:
        codec.from_json({**obj, "occurred_at": occurred_at})
    assert (info.value.reason, info.value.field) == (reason, "occurred_at")


def test_an_event_from_the_future_is_refused_at_the_edge(codec: EventCodec) -> None:
    """Decoding from a canonical topic does not look at the clock; the edges do."""
    ahead = datetime.now(UTC) + MAX_CLOCK_SKEW + timedelta(minutes=1)
    event = build("penalty.revoked", occurred_at=ahead)
    with pytest.raises(ValidationFailed) as info:
        codec.from_json(codec.to_json(event))
    assert (info.value.reason, info.value.field) == ("schema.date_range", "occurred_at")
    with pytest.raises(ValidationFailed):
        codec.decode_any(codec.encode(event))
    assert codec.decode(codec.encode(event)) == event
    within = build("penalty.revoked", occurred_at=datetime.now(UTC) + timedelta(minutes=1))
    assert codec.from_json(codec.to_json(within)) == within


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("case_number", "昆花综执罚决字\u202e〔2026〕", "schema.text"),
        ("case_number", "昆花综执罚决字\x00〔2026〕", "schema.text"),
        ("decided_on", "9999-12-31", "schema.date_range"),
        ("decided_on", "2026-03-05", "schema.date_order"),  # occurred 2026-03-02
        ("publicity_until", "2026-01-01", "schema.date_order"),
    ],
)
def test_hostile_payload_values_get_precise_reasons(
    codec: EventCodec, field: str, value: str, reason: str
) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    obj["payload"][field] = value
    with pytest.raises(ValidationFailed) as info:
        codec.from_json(obj)
    assert (info.value.reason, info.value.field) == (reason, f"payload.{field}")
    assert str(info.value).startswith(f"payload.{field}: ")


def test_avro_written_straight_is_held_to_the_same_rules(codec: EventCodec) -> None:
    """A producer on Kafka can write any Avro the schema allows: year 1, NUL, U+202E."""
    event = build("penalty.imposed")
    schema = codec.registry.get("penalty.imposed", 1)
    for change, reason in [
        ({"decided_on": date(1, 1, 1)}, "schema.date_range"),
        ({"case_number": "AB\u202eCD-0123"}, "schema.text"),
        ({"violation": "\x1b[2J"}, "schema.text"),
    ]:
        record = event.model_dump()
        record["payload"].update(change)
        buf = io.BytesIO()
        buf.write(struct.pack(">bI", 0, schema.id))
        fastavro.schemaless_writer(buf, schema.parsed, record)
        with pytest.raises(ValidationFailed) as info:
            codec.decode(buf.getvalue())
        assert info.value.reason == reason, change


# --- decode_any ------------------------------------------------------------------------------


def test_decode_any_reads_avro_and_json(codec: EventCodec) -> None:
    event = build("penalty.imposed")
    from_avro = codec.decode_any(codec.encode(event))
    from_json = codec.decode_any(codec.to_json(event).encode())
    assert from_avro.model_dump() == from_json.model_dump() == event.model_dump()


def test_decode_any_takes_a_leading_zero_byte_as_avro(codec: EventCodec) -> None:
    # JSON behind a 0x00 is read as a Confluent header: bytes 1-4 '{"ev' as a schema id.
    with pytest.raises(DecodeError) as info:
        codec.decode_any(b"\x00" + codec.to_json(build("penalty.imposed")).encode())
    assert info.value.reason == "schema.unknown_id"


def test_decode_any_takes_anything_else_as_json(codec: EventCodec, avro: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode_any(b"\x01" + avro[1:])
    assert "not valid JSON" in str(info.value)
    event = codec.decode_any(b"  \n" + codec.to_json(build("penalty.imposed")).encode())
    assert isinstance(event, Envelope)


def test_recent_gives_each_kept_event_once_keeping_the_oldest_until_they_age() -> None:
    from bus.dev.samples import penalties
    from bus.streaming.codec import EventCodec, Recent

    codec = EventCodec()
    events = penalties(4, seed=3)
    data = [codec.encode(e) for e in events]
    recent = Recent(2, max_age=0.2)
    for value, event in zip(data[:3], events[:3], strict=True):
        recent.keep(value, event)
    assert len(recent) == 2
    assert recent.take(data[2]) is None  # full and nothing old: the newest was not kept
    assert recent.take(bytes(data[0])) is events[0]  # equal bytes, not the same object
    assert recent.take(data[0]) is None  # taken once
    time.sleep(0.25)  # past max_age: the ageing under test (a busy machine only adds to it)
    recent.keep(data[3], events[3])  # room left: kept without dropping anything
    assert len(recent) == 2
    recent.keep(data[2], events[2])  # full again: data[1] is older than max_age and goes
    assert recent.take(data[1]) is None
    assert recent.take(data[2]) == codec.decode(data[2])  # what decoding would give
    off = Recent(0)
    off.keep(data[0], events[0])
    assert len(off) == 0
    assert off.take(data[0]) is None
