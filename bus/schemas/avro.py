"""Avro schemas derived from the pydantic models.

The shipped ``.avsc`` files are the contract (what a schema registry and other consumers
see); this module derives what the models say, so a test can prove the two agree and
``bus schemas export`` can write a new version. The mapping is deliberately small:

============================  =========================================
pydantic                      Avro
============================  =========================================
str, StrEnum                  string (enums as strings: adding a value never breaks readers)
int / bool / float            long / boolean / double
Decimal(max_digits, places)   bytes, logicalType decimal(precision, scale)
date / datetime / UUID        int date / long timestamp-micros / string uuid
X | None                      ["null", X] with default null
list[X]                       array
nested model                  record
============================  =========================================
"""

from __future__ import annotations

import types
import typing
import uuid
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from bus.schemas.envelope import Envelope
from bus.schemas.events import EVENT_TYPES

NAMESPACE = "gov.ks.bus"


def record_name(event_type: str) -> str:
    """Avro full name of an event type's record, e.g. ``gov.ks.bus.penalty.Imposed``."""
    family, rest = event_type.split(".", 1)
    name = "".join(p.title() for p in rest.replace(".", "_").split("_"))
    return f"{NAMESPACE}.{family}.{name}"


def _decimal(meta: list[Any]) -> dict[str, Any]:
    digits = places = None
    for m in meta:
        digits = getattr(m, "max_digits", digits)
        places = getattr(m, "decimal_places", places)
    if digits is None or places is None:
        raise TypeError(f"Decimal field needs max_digits and decimal_places: {meta}")
    return {"type": "bytes", "logicalType": "decimal", "precision": digits, "scale": places}


def _type(tp: Any, meta: list[Any], namespace: str, seen: dict[type, str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only Optional unions are supported, got {tp}")
        return ["null", _type(args[0], meta, namespace, seen)]
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(tp)
        for m in extra:
            meta = [*meta, *(m.metadata if isinstance(m, FieldInfo) else [m])]
        return _type(inner, meta, namespace, seen)
    if origin is list:
        return {"type": "array", "items": _type(typing.get_args(tp)[0], meta, namespace, seen)}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return _record(tp, namespace, seen)
    if (isinstance(tp, type) and issubclass(tp, Enum)) or tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    if tp is int:
        return "long"
    if tp is float:
        return "double"
    if tp is Decimal:
        return _decimal(meta)
    if tp is datetime:
        return {"type": "long", "logicalType": "timestamp-micros"}
    if tp is date:
        return {"type": "int", "logicalType": "date"}
    if tp is uuid.UUID:
        return {"type": "string", "logicalType": "uuid"}
    if tp is Any:
        raise TypeError("payload must be narrowed to a model before deriving a schema")
    raise TypeError(f"no Avro mapping for {tp!r}")


def _record(model: type[BaseModel], namespace: str, seen: dict[type, str]) -> Any:
    if model in seen:  # Avro names a record once; later uses refer to it by name
        return seen[model]
    # A later version keeps its record's name (``__avro_name__``), as Avro's schema
    # resolution asks of a reader of the older versions.
    record = str(model.__dict__.get("__avro_name__", model.__name__))
    full = f"{namespace}.{record}"
    seen[model] = full
    fields = []
    for name, info in model.model_fields.items():
        field: dict[str, Any] = {
            "name": name,
            "type": _type(info.annotation, info.metadata, namespace, seen),
        }
        if isinstance(field["type"], list):
            field["default"] = None
        if info.description:
            field["doc"] = info.description
        fields.append(field)
    doc = (model.__doc__ or "").strip().splitlines()
    out: dict[str, Any] = {"type": "record", "name": record, "namespace": namespace}
    if doc:
        out["doc"] = doc[0]
    out["fields"] = fields
    return out


def derive_schema(event_type: str, version: int) -> dict[str, Any]:
    """The Avro schema of one event type and version: the envelope with its typed payload."""
    spec = EVENT_TYPES[event_type]
    payload = spec.versions[version]
    full = record_name(event_type)
    namespace, _, name = full.rpartition(".")
    seen: dict[type, str] = {}
    fields: list[dict[str, Any]] = []
    for fname, info in Envelope.model_fields.items():
        if fname == "payload":
            ptype = _record(payload, f"{namespace}.{name.lower()}", seen)
            fields.append({"name": "payload", "type": ptype})
            continue
        ftype = _type(info.annotation, info.metadata, namespace, seen)
        field = {"name": fname, "type": ftype}
        if isinstance(ftype, list):
            field["default"] = None
        fields.append(field)
    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "doc": f"{event_type} v{version}: {spec.description}",
        "fields": fields,
    }


__all__ = ["NAMESPACE", "derive_schema", "record_name"]
