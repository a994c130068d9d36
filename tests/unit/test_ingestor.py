"""The ingest checks, without Kafka: what the front door accepts (Avro forwarded byte for
byte, JSON converted to Avro) and the reason code each hostile record is dead-lettered with,
plus the dead-letter headers that explain a rejection.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from bus.agents.app import Context
from bus.agents.ingest import Ingestor
from bus.agents.out import deadletter_headers
from bus.domain.departments import Directory
from bus.errors import BusError, DecodeError, ValidationFailed
from bus.schemas.events import EVENT_TYPES
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from tests.unit.eventdata import build


def make_ingestor(**settings: Any) -> Ingestor:
    return Ingestor(Context(Settings(**settings), EventCodec(), Directory.load()))


@pytest.fixture(scope="module")
def ingestor() -> Ingestor:
    return make_ingestor()


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return EventCodec()


def json_bytes(codec: EventCodec, of: str = "penalty.imposed", **changes: Any) -> bytes:
    """A realistic event of type ``of`` as JSON, with top-level fields changed."""
    obj = json.loads(codec.to_json(build(of)))
    obj.update(changes)
    return json.dumps(obj, ensure_ascii=False).encode()


def reason_of(ingestor: Ingestor, value: bytes | None) -> BusError:
    with pytest.raises(BusError) as info:
        ingestor.check(value)
    return info.value


# --- accepted -------------------------------------------------------------------------------


def test_avro_is_accepted_and_forwarded_unchanged(ingestor: Ingestor, codec: EventCodec) -> None:
    event = build("penalty.imposed")
    data = codec.encode(event)
    accepted = ingestor.check(data)
    assert accepted.value == data
    assert accepted.event.model_dump() == event.model_dump()


def test_json_is_accepted_and_converted_to_avro(ingestor: Ingestor, codec: EventCodec) -> None:
    event = build("enterprise.registered")
    accepted = ingestor.check(codec.to_json(event).encode())
    assert accepted.value[:5] == b"\x00\x00\x00\x00\x01"  # Confluent header, schema id 1
    assert accepted.value == codec.encode(accepted.event)
    assert codec.decode(accepted.value).model_dump() == event.model_dump()


def test_every_owner_gets_through_but_the_bus_itself(ingestor: Ingestor, codec: EventCodec) -> None:
    for event_type in EVENT_TYPES:
        event = build(event_type)
        if event.source == "ks.bus":  # the bus writes its decisions to the canonical topics
            exc = reason_of(ingestor, codec.encode(event))
            assert (exc.reason, getattr(exc, "field", None)) == ("auth.reserved_source", "source")
        else:
            assert ingestor.check(codec.encode(event)).event.event_type == event_type


def test_event_of_exactly_the_limit_is_accepted(codec: EventCodec) -> None:
    small = make_ingestor(max_event_bytes=1024)
    data = json_bytes(codec, "penalty.revoked")
    padded = data + b" " * (1024 - len(data))
    assert len(padded) == 1024
    assert small.check(padded).event.event_type == "penalty.revoked"


# --- rejected, with the reason code -----------------------------------------------------------


@pytest.mark.parametrize("value", [b"", None])
def test_empty(ingestor: Ingestor, value: bytes | None) -> None:
    exc = reason_of(ingestor, value)
    assert isinstance(exc, DecodeError)
    assert exc.reason == "schema.empty"


def test_oversized(codec: EventCodec) -> None:
    small = make_ingestor(max_event_bytes=1024)
    data = json_bytes(codec, "penalty.imposed", padding="x" * 2000)
    exc = reason_of(small, data)
    assert exc.reason == "size.too_large"
    assert f"event is {len(data)} bytes; the limit is 1024" in str(exc)


def test_oversized_is_checked_before_decoding() -> None:
    exc = reason_of(make_ingestor(max_event_bytes=1024), b"\x00" * 1025)
    assert exc.reason == "size.too_large"


@pytest.mark.parametrize("value", [b"{not json", b"\xff\xfe\xfd", b"GET / HTTP/1.1\r\n"])
def test_not_json(ingestor: Ingestor, value: bytes) -> None:
    assert reason_of(ingestor, value).reason == "schema.decode"


def test_bad_framing(ingestor: Ingestor, codec: EventCodec) -> None:
    data = codec.encode(build("penalty.imposed"))
    assert reason_of(ingestor, data[:-2]).reason == "schema.decode"
    assert reason_of(ingestor, data[:1] + b"\x00\x00\x03\xe7" + data[5:]).reason == (
        "schema.unknown_id"
    )


def test_bad_uscc(ingestor: Ingestor, codec: EventCodec) -> None:
    exc = reason_of(ingestor, json_bytes(codec, subject="91330100799655058C"))
    assert isinstance(exc, ValidationFailed)
    assert exc.reason == "schema.uscc"
    assert exc.field == "subject"


def test_missing_field(ingestor: Ingestor, codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    del obj["payload"]["case_number"]
    exc = reason_of(ingestor, json.dumps(obj).encode())
    assert isinstance(exc, ValidationFailed)
    assert exc.reason == "schema.validation"
    assert exc.field == "payload.case_number"


def test_missing_source(ingestor: Ingestor, codec: EventCodec) -> None:
    obj = json.loads(codec.to_json(build("penalty.imposed")))
    del obj["source"]
    exc = reason_of(ingestor, json.dumps(obj).encode())
    assert exc.reason == "schema.validation"
    assert getattr(exc, "field", None) == "source"


def test_unknown_type(ingestor: Ingestor, codec: EventCodec) -> None:
    exc = reason_of(ingestor, json_bytes(codec, event_type="penalty.forgiven"))
    assert exc.reason == "schema.unknown_type"


def test_unknown_version(ingestor: Ingestor, codec: EventCodec) -> None:
    exc = reason_of(ingestor, json_bytes(codec, schema_version=9))
    assert exc.reason == "schema.unknown_version"


def test_unauthorised_source(ingestor: Ingestor, codec: EventCodec) -> None:
    # The Financial Office may not impose penalties: it has no domain of its own to enforce.
    exc = reason_of(ingestor, codec.encode(build("penalty.imposed", source="ks.finance")))
    assert exc.reason == "auth.event_type"
    exc = reason_of(ingestor, json_bytes(codec, source="ks.finance"))
    assert exc.reason == "auth.event_type"


def test_unknown_source(ingestor: Ingestor, codec: EventCodec) -> None:
    exc = reason_of(ingestor, json_bytes(codec, source="ks.enforcement.shanghai"))
    assert exc.reason == "auth.unknown_source"


def test_on_a_departments_own_ingress_the_source_is_that_department(
    ingestor: Ingestor, codec: EventCodec
) -> None:
    h, z = "ks.enforcement.huaqiao", "ks.enforcement.zhoushi"
    own = build("penalty.imposed")  # by H
    assert own.source == h
    assert ingestor.check(codec.encode(own), publisher=h).event.source == h
    with pytest.raises(BusError) as info:  # Z's principal wrote it, claiming to be H
        ingestor.check(codec.encode(own), publisher=z)
    exc = info.value
    assert (exc.reason, getattr(exc, "field", None)) == ("auth.source_mismatch", "source")
    assert f"source {h} on the ingress of {z}" in str(exc)
    with pytest.raises(BusError) as info:  # checked before the directory: the claim is the lie
        ingestor.check(json_bytes(codec, source="ks.enforcement.shanghai"), publisher=z)
    assert info.value.reason == "auth.source_mismatch"


# --- hostile records: a precise reason, never ingest.crash ----------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"event_type": "penalty.imposed", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_deep_nesting_is_too_deep_not_a_crash(ingestor: Ingestor, value: bytes) -> None:
    exc = reason_of(ingestor, value)
    assert exc.reason == "schema.too_deep"
    assert "32 levels" in str(exc)


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"occurred_at": "9999-12-31T23:59:59-01:00"}, "schema.date_range", "occurred_at"),
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "schema.date_range", "occurred_at"),
        ({"occurred_at": "2999-01-01T00:00:00Z"}, "schema.date_range", "occurred_at"),
        ({"correlation_id": "case-1\u202e"}, "schema.text", "correlation_id"),
        ({"correlation_id": "case-1\r\nbus.reason: forged"}, "schema.text", "correlation_id"),
    ],
)
def test_hostile_envelope_fields(
    ingestor: Ingestor, codec: EventCodec, changes: dict[str, Any], reason: str, field: str
) -> None:
    exc = reason_of(ingestor, json_bytes(codec, **changes))
    assert (exc.reason, getattr(exc, "field", None)) == (reason, field)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"case_number": "昆花综执罚决字〔2026〕\u202e号3210第"}, "schema.text"),
        ({"case_number": "昆花综执罚决字\x00〔2026〕"}, "schema.text"),
        # At either end too: stripping would hide it from the bus, not from other readers
        ({"case_number": "昆花综执罚决字〔2026〕第0123号\x85"}, "schema.text"),
        ({"violation": "\u2028施工工地未采取扬尘防治措施"}, "schema.text"),
        ({"decided_on": date(1, 1, 1)}, "schema.date_range"),
        ({"decided_on": date(9999, 12, 31)}, "schema.date_range"),
        ({"decided_on": date(2026, 3, 9)}, "schema.date_order"),  # occurred 2026-03-02
    ],
)
def test_avro_written_straight_to_kafka_is_checked_like_json(
    ingestor: Ingestor, codec: EventCodec, change: dict[str, Any], reason: str
) -> None:
    event = build("penalty.imposed")
    forged = event.model_copy(update={"payload": event.payload.model_copy(update=change)})
    exc = reason_of(ingestor, codec.encode(forged))  # model_copy skips validation
    assert exc.reason == reason
    assert getattr(exc, "field", None) == "payload." + next(iter(change))


# --- dead-letter headers --------------------------------------------------------------------


def consumer_record(value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="bus.ingress",
        partition=3,
        offset=1207,
        timestamp=1_772_400_000_000,
        timestamp_type=0,
        key=b"91330100799655058C",
        value=value,
        checksum=None,
        serialized_key_size=18,
        serialized_value_size=len(value),
        headers=headers,
    )


def test_deadletter_headers_explain_the_rejection(ingestor: Ingestor, codec: EventCodec) -> None:
    value = json_bytes(codec, subject="91330100799655058C")
    record = consumer_record(
        value,
        [("traceparent", b"00-abc-def-01"), ("bus.reason", b"forged"), ("origin", b"gateway")],
    )
    with pytest.raises(BusError) as info:
        ingestor.check(value)
    headers = deadletter_headers(info.value, record)
    by_key = dict(headers)

    assert by_key["bus.reason"] == b"schema.uscc"
    assert by_key["bus.field"] == b"subject"
    assert by_key["bus.origin"] == b"bus.ingress/3/1207"
    assert by_key["bus.stage"] == b"ingest"
    assert "not a valid unified social credit code" in by_key["bus.error"].decode()
    assert int(by_key["bus.rejected_at"]) > 1_700_000_000_000
    # The publisher's own headers are kept, in order; its bus.* headers cannot forge ours.
    assert headers[:2] == [("traceparent", b"00-abc-def-01"), ("origin", b"gateway")]
    assert [k for k, _ in headers].count("bus.reason") == 1


def test_deadletter_headers_without_field_or_headers() -> None:
    record = consumer_record(b"", [])
    headers = dict(deadletter_headers(DecodeError("empty", reason="schema.empty"), record))
    assert headers["bus.reason"] == b"schema.empty"
    assert headers["bus.error"] == b"empty"
    assert "bus.field" not in headers


def test_deadletter_headers_for_an_unexpected_crash() -> None:
    record = consumer_record(b"{}", [])
    headers = dict(deadletter_headers(KeyError("payload"), record, stage="ingest"))
    assert headers["bus.reason"] == b"ingest.crash"
    assert headers["bus.error"] == b"KeyError: 'payload'"


def test_deadletter_error_text_is_bounded() -> None:
    record = consumer_record(b"x", [])
    headers = dict(deadletter_headers(DecodeError("x" * 10_000), record))
    assert len(headers["bus.error"]) == 2000
