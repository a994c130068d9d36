"""BACKWARD compatibility check: each resolution rule both ways, cross-checked with fastavro."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from bus.errors import IncompatibleSchema, SchemaError
from bus.schemas.compat import (
    Schema,
    backward_problems,
    check_backward,
    check_backward_transitive,
)


def rec(fields: list[dict[str, Any]], name: str = "Event", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": fields, **extra}


def fld(name: str, type_: Schema, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(symbols: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Status", "symbols": symbols, **extra}


def fixed(size: int, name: str = "Hash") -> dict[str, Any]:
    return {"type": "fixed", "name": name, "size": size}


def dec(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


def payload(fields: list[dict[str, Any]]) -> dict[str, Any]:
    """An envelope with a nested ``payload`` record, as bus events have."""
    return rec([fld("event_id", "string"), fld("payload", rec(fields, name="Payload"))])


MONEY = rec([fld("amount", dec(10, 2)), fld("currency", "string")], name="Money")
MONEY_V2 = rec(
    [fld("amount", dec(10, 2)), fld("currency", "string"), fld("note", "string", default="")],
    name="Money",
)
NODE = rec([fld("value", "int"), fld("next", ["null", "Node"], default=None)], name="Node")
NODE_V2 = rec(
    [
        fld("value", "long"),
        fld("next", ["null", "Node"], default=None),
        fld("label", "string", default=""),
    ],
    name="Node",
)

# (reader, writer, datum written with the writer): all must be compatible.
COMPATIBLE: dict[str, tuple[Schema, Schema, Any]] = {
    "identical": (rec([fld("a", "int")]), rec([fld("a", "int")]), {"a": 1}),
    "field added with default": (
        rec([fld("a", "int"), fld("b", ["null", "string"], default=None)]),
        rec([fld("a", "int")]),
        {"a": 1},
    ),
    "field removed": (
        rec([fld("a", "int")]),
        rec([fld("a", "int"), fld("b", "string")]),
        {
            "a": 1,
            "b": "x",
        },
    ),
    "field renamed with reader alias": (
        rec([fld("amount", "int", aliases=["amt"])]),
        rec([fld("amt", "int")]),
        {"amt": 5},
    ),
    "int to long": ("long", "int", 1),
    "int to float": ("float", "int", 1),
    "int to double": ("double", "int", 1),
    "long to float": ("float", "long", 2**40),
    "long to double": ("double", "long", 2**40),
    "float to double": ("double", "float", 1.5),
    "string to bytes": ("bytes", "string", "abc"),
    "bytes to string": ("string", "bytes", b"abc"),
    "enum symbol added": (enum(["OPEN", "CLOSED", "HELD"]), enum(["OPEN", "CLOSED"]), "CLOSED"),
    "enum symbol removed with reader default": (
        enum(["OPEN", "CLOSED"], default="OPEN"),
        enum(["OPEN", "CLOSED", "HELD"]),
        "HELD",
    ),
    "array items promoted": (
        {"type": "array", "items": "long"},
        {"type": "array", "items": "int"},
        [1, 2],
    ),
    "map values promoted": (
        {"type": "map", "values": "double"},
        {"type": "map", "values": "float"},
        {"k": 1.5},
    ),
    "fixed unchanged": (fixed(4), fixed(4), b"abcd"),
    "writer union widened in reader": (["null", "string", "int"], ["null", "string"], "x"),
    "non-union writer into reader union": (["null", "long"], "int", 7),
    "writer union into non-union reader": ("double", ["int", "float"], 3),
    "record renamed with reader alias": (
        rec([fld("a", "int")], name="Ticket", namespace="city.v2", aliases=["city.v1.Request"]),
        rec([fld("a", "int")], name="Request", namespace="city.v1"),
        {"a": 1},
    ),
    "nested field added with default": (
        payload([fld("amount", "long"), fld("reason", "string", default="n/a")]),
        payload([fld("amount", "int")]),
        {"event_id": "e1", "payload": {"amount": 3}},
    ),
    "named type reused by reference": (
        rec([fld("fee", MONEY_V2), fld("fine", "Money")]),
        rec([fld("fee", MONEY), fld("fine", "Money")]),
        {
            "fee": {"amount": Decimal("1.50"), "currency": "EUR"},
            "fine": {"amount": Decimal("20.00"), "currency": "EUR"},
        },
    ),
    "namespace-relative and full-name references": (
        rec([fld("fee", MONEY_V2), fld("fine", "city.fin.Money")], namespace="city.fin"),
        rec([fld("fee", MONEY), fld("fine", "Money")], namespace="city.fin"),
        {
            "fee": {"amount": Decimal("1.50"), "currency": "EUR"},
            "fine": {"amount": Decimal("2.00"), "currency": "EUR"},
        },
    ),
    "recursive record": (NODE_V2, NODE, {"value": 1, "next": {"value": 2, "next": None}}),
    "logical type read as underlying": (
        {"type": "long", "logicalType": "timestamp-millis"},
        "long",
        1_700_000_000_000,
    ),
    "decimal unchanged, made nullable": (
        rec([fld("amount", ["null", dec(10, 2)])]),
        rec([fld("amount", dec(10, 2))]),
        {"amount": Decimal("12.34")},
    ),
    "error type read as record": (
        rec([fld("code", "long")], name="Failure"),
        {"type": "error", "name": "Failure", "fields": [fld("code", "int")]},
        {"code": 4},
    ),
}

# (reader, writer, expected problem): all must be reported as breaks.
INCOMPATIBLE: dict[str, tuple[Schema, Schema, str]] = {
    "field added without default": (
        rec([fld("a", "int"), fld("b", "string")]),
        rec([fld("a", "int")]),
        "field 'b' added without a default",
    ),
    "type changed": (rec([fld("a", "string")]), rec([fld("a", "int")]), "a: type changed from int"),
    "long narrowed to int": ("int", "long", "<root>: type changed from long to int"),
    "double narrowed to float": ("float", "double", "type changed from double to float"),
    "int to string is no promotion": ("string", "int", "type changed from int to string"),
    "enum symbol removed": (
        enum(["OPEN"]),
        enum(["OPEN", "HELD"]),
        "<root>: enum symbol 'HELD' removed",
    ),
    "enum renamed": (
        {"type": "enum", "name": "State", "symbols": ["OPEN"]},
        enum(["OPEN"]),
        "enum renamed from Status to State",
    ),
    "fixed size changed": (fixed(8), fixed(4), "fixed size changed from 4 to 8"),
    "fixed renamed": (fixed(4, "Digest"), fixed(4), "fixed renamed from Hash to Digest"),
    "record renamed": (
        rec([fld("a", "int")], name="Ticket"),
        rec([fld("a", "int")], name="Request"),
        "record renamed from Request to Ticket",
    ),
    "array items changed": (
        {"type": "array", "items": "string"},
        {"type": "array", "items": "int"},
        "<root>[]: type changed from int to string",
    ),
    "map values changed": (
        {"type": "map", "values": "int"},
        {"type": "map", "values": "string"},
        "<root>{}: type changed from string to int",
    ),
    "writer union branch dropped": (
        ["null", "string"],
        ["null", "string", "int"],
        "<root>: type int not in reader union[null, string]",
    ),
    "non-union writer missing from reader union": (
        ["null", "int"],
        "string",
        "type string not in reader union[null, int]",
    ),
    "nullable writer into non-null reader": ("string", ["null", "string"], "from null to string"),
}


def _roundtrip(reader: Schema, writer: Schema, datum: Any) -> Any:
    """Write with the writer schema and read with the reader, as a consumer would."""
    parsed_writer = fastavro.parse_schema(writer)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_writer, datum)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, parsed_writer, fastavro.parse_schema(reader))


@pytest.mark.parametrize(("reader", "writer", "datum"), COMPATIBLE.values(), ids=COMPATIBLE)
def test_compatible(reader: Schema, writer: Schema, datum: Any) -> None:
    assert backward_problems(reader, writer) == []
    check_backward(reader, writer, subject="s")


@pytest.mark.parametrize(("reader", "writer", "datum"), COMPATIBLE.values(), ids=COMPATIBLE)
def test_compatible_pairs_read_back_with_fastavro(
    reader: Schema, writer: Schema, datum: Any
) -> None:
    result = _roundtrip(reader, writer, datum)
    assert fastavro.validate(result, fastavro.parse_schema(reader))


@pytest.mark.parametrize(("reader", "writer", "expected"), INCOMPATIBLE.values(), ids=INCOMPATIBLE)
def test_incompatible(reader: Schema, writer: Schema, expected: str) -> None:
    problems = backward_problems(reader, writer)
    assert any(expected in p for p in problems), problems
    with pytest.raises(IncompatibleSchema, match="cannot read"):
        check_backward(reader, writer)


# fastavro only fails when the datum actually hits the break (e.g. the removed enum symbol).
# It does NOT enforce decimal precision/scale (it decodes with the writer's scale) nor
# namespaces (it compares unqualified names), so those are checked by our rule alone.
FASTAVRO_FAILS: dict[str, tuple[str, Any]] = {
    "field added without default": ("field added without default", {"a": 1}),
    "type changed": ("type changed", {"a": 1}),
    "long narrowed to int": ("long narrowed to int", 5),
    "double narrowed to float": ("double narrowed to float", 1.5),
    "enum symbol removed": ("enum symbol removed", "HELD"),
    "enum renamed": ("enum renamed", "OPEN"),
    "fixed size changed": ("fixed size changed", b"abcd"),
    "fixed renamed": ("fixed renamed", b"abcd"),
    "record renamed": ("record renamed", {"a": 1}),
    "array items changed": ("array items changed", [1]),
    "map values changed": ("map values changed", {"k": "v"}),
    "writer union branch dropped": ("writer union branch dropped", 3),
    "non-union writer missing from reader union": ("non-union writer missing", "x"),
    "nullable writer into non-null reader": ("nullable writer into non-null reader", None),
}


@pytest.mark.parametrize(("case", "datum"), FASTAVRO_FAILS.values(), ids=FASTAVRO_FAILS)
def test_incompatible_pairs_fail_in_fastavro(case: str, datum: Any) -> None:
    key = next(k for k in INCOMPATIBLE if k.startswith(case))
    reader, writer, _ = INCOMPATIBLE[key]
    with pytest.raises(fastavro.read.SchemaResolutionError):
        _roundtrip(reader, writer, datum)


def test_problems_name_the_dotted_path() -> None:
    old = payload([fld("amount", "string"), fld("status", enum(["X", "Y"]))])
    new = payload([fld("amount", "int"), fld("status", enum(["Y"])), fld("reason", "string")])
    assert backward_problems(new, old) == [
        "payload.amount: type changed from string to int",
        "payload.status: enum symbol 'X' removed",
        "field 'payload.reason' added without a default",
    ]


def test_decimal_scale_and_precision_changes_are_breaks() -> None:
    old = payload([fld("amount", dec(10, 2))])
    assert backward_problems(payload([fld("amount", dec(10, 3))]), old) == [
        "payload.amount: decimal scale changed from 2 to 3"
    ]
    assert backward_problems(payload([fld("amount", dec(12, 2))]), old) == [
        "payload.amount: decimal precision changed from 10 to 12"
    ]
    nullable = payload([fld("amount", ["null", dec(10, 3)], default=None)])
    assert backward_problems(nullable, old) == ["payload.amount: decimal scale changed from 2 to 3"]


def test_array_of_records_path() -> None:
    old = rec([fld("lines", {"type": "array", "items": rec([fld("qty", "int")], name="Line")})])
    new = rec([fld("lines", {"type": "array", "items": rec([fld("qty", "boolean")], name="Line")})])
    assert backward_problems(new, old) == ["lines[].qty: type changed from int to boolean"]


def test_namespace_change_without_alias_is_a_break() -> None:
    old = rec([fld("a", "int")], namespace="city.v1")
    new = rec([fld("a", "int")], namespace="city.v2")
    assert backward_problems(new, old) == [
        "<root>: record renamed from city.v1.Event to city.v2.Event"
    ]
    assert backward_problems(dict(new, aliases=["city.v1.Event"]), old) == []


def test_changed_named_reference_is_found_through_the_reference() -> None:
    old = rec([fld("fee", MONEY), fld("fine", "Money")])
    money_v3 = dict(MONEY, fields=[*MONEY["fields"], fld("x", "int")])
    new = rec([fld("fee", money_v3), fld("fine", "Money")])
    assert backward_problems(new, old) == [
        "field 'fee.x' added without a default",
        "field 'fine.x' added without a default",
    ]


def test_same_break_reached_twice_is_reported_once() -> None:
    money_v3 = dict(MONEY, fields=[fld("amount", dec(10, 3)), fld("currency", "string")])
    old = [rec([fld("m", MONEY)], name="Fee"), rec([fld("m", "Money")], name="Fine")]
    new = [rec([fld("m", money_v3)], name="Fee"), rec([fld("m", "Money")], name="Fine")]
    assert backward_problems(new, old) == ["m.amount: decimal scale changed from 2 to 3"]


def test_recursive_record_break_is_found() -> None:
    new = rec([fld("value", "string"), fld("next", ["null", "Node"], default=None)], name="Node")
    assert backward_problems(new, NODE) == ["value: type changed from int to string"]


def test_unknown_named_reference_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="unknown named type 'Nope'"):
        backward_problems(rec([fld("a", "Nope")]), rec([fld("a", "int")]))


def test_check_backward_error_names_subject_and_every_problem() -> None:
    old = payload([fld("amount", "string")])
    new = payload([fld("amount", "int"), fld("reason", "string")])
    with pytest.raises(IncompatibleSchema) as caught:
        check_backward(new, old, subject="permit.issued-value")
    assert caught.value.reason == "schema.incompatible"
    message = caught.value.message
    assert "'permit.issued-value'" in message
    assert "payload.amount: type changed from string to int" in message
    assert "field 'payload.reason' added without a default" in message


def test_backward_transitive() -> None:
    v1 = rec([fld("a", "int")])
    v2 = rec([fld("a", "int"), fld("b", "string", default="")])
    v3 = rec([fld("a", "long"), fld("b", "string")])  # reads v2, but not v1 (no b, no default)
    check_backward_transitive([v1, v2], subject="s")
    check_backward_transitive([v1])
    check_backward_transitive([])
    check_backward(v3, v2)
    with pytest.raises(IncompatibleSchema, match="version 1: field 'b' added without a default"):
        check_backward_transitive([v1, v2, v3], subject="s")
