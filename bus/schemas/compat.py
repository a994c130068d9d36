"""BACKWARD compatibility of Avro schemas: can the NEW schema read what the OLD one wrote?

This is the check a Confluent schema registry runs for ``BACKWARD`` subjects, done here in pure
Python so a bad schema change is caught before it is registered or deployed. It follows the
schema-resolution rules of the Avro specification, with the new schema as *reader* and the old
one as *writer*:

* records (and errors), enums and fixed types match by full name, or a reader alias naming
  the writer's full name;
* every reader field absent from the writer (by name or reader field alias) needs a default;
  writer fields the reader dropped are skipped, so removing a field is fine;
* promotions: int → long/float/double, long → float/double, float → double, string ↔ bytes;
* enums: every writer symbol must be a reader symbol, unless the reader enum has a default;
* arrays and maps resolve their items/values; fixed types must keep their size;
* a writer union resolves branch by branch; a non-union writer must resolve against some branch
  of a reader union;
* logical types count as their underlying type, except that a decimal may not change its
  precision or scale (the bytes would silently mean another number).

Named types may be referenced by (full or namespace-relative) name after their definition;
recursive records are handled. Each problem names the dotted field path it was found at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bus.errors import IncompatibleSchema, SchemaError

Schema = dict[str, Any] | list[Any] | str

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
ROOT = "<root>"


def _full_name(name: str, namespace: str) -> str:
    """Avro full name: a dotted name is already full, otherwise the namespace applies."""
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _resolve(schema: Schema, namespace: str, names: dict[str, Any]) -> Any:
    """Return a normalised copy where named references point at their definitions.

    Named types get ``name`` as their full name and full-name ``aliases``; references become
    the very same dict, so recursive records turn into cycles (guarded in the comparison).
    """
    if isinstance(schema, list):
        return [_resolve(branch, namespace, names) for branch in schema]
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return schema
        for candidate in (_full_name(schema, namespace), schema):
            if candidate in names:
                return names[candidate]
        raise SchemaError(f"unknown named type {schema!r}")
    kind = schema["type"]
    if not isinstance(kind, str):  # {"type": {...}} wraps a complete schema
        return _resolve(kind, namespace, names)
    if kind not in NAMED:
        node = dict(schema)
        if kind == "array":
            node["items"] = _resolve(schema["items"], namespace, names)
        elif kind == "map":
            node["values"] = _resolve(schema["values"], namespace, names)
        elif kind not in PRIMITIVES:
            return _resolve(kind, namespace, names)  # {"type": "SomeNamedType"}
        return node
    full = _full_name(schema["name"], schema.get("namespace", namespace))
    inner = full.rpartition(".")[0]
    node = dict(schema, name=full)
    node["aliases"] = [_full_name(alias, inner) for alias in schema.get("aliases", [])]
    names[full] = node  # registered before the fields, so a record may refer to itself
    if kind in {"record", "error"}:
        node["fields"] = [
            dict(field, type=_resolve(field["type"], inner, names)) for field in schema["fields"]
        ]
    return node


def _kind(node: Any) -> str:
    """The resolution kind: the primitive or complex type name; 'error' counts as 'record'."""
    if isinstance(node, list):
        return "union"
    kind = node if isinstance(node, str) else node["type"]
    return "record" if kind == "error" else kind


def _describe(node: Any) -> str:
    """A short human name for a type, as used in problem sentences."""
    kind = _kind(node)
    if kind == "union":
        return "union[" + ", ".join(_describe(branch) for branch in node) + "]"
    if kind in NAMED:
        return f"{kind} {node['name']}"
    if kind == "array":
        return f"array<{_describe(node['items'])}>"
    if kind == "map":
        return f"map<{_describe(node['values'])}>"
    logical = node.get("logicalType") if isinstance(node, dict) else None
    if logical == "decimal":
        return f"{kind} (decimal({node.get('precision')}, {node.get('scale', 0)}))"
    return f"{kind} ({logical})" if logical else kind


def _field_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Checker:
    """One reader/writer comparison; remembers record pairs in progress for recursive types."""

    def __init__(self) -> None:
        self.in_progress: set[tuple[int, int]] = set()

    def problems(self, reader: Any, writer: Any, path: str) -> list[str]:
        where = path or ROOT
        rkind, wkind = _kind(reader), _kind(writer)
        if wkind == "union":
            return [p for branch in writer for p in self.problems(reader, branch, path)]
        if rkind == "union":
            return self._into_union(reader, writer, path)
        if rkind != wkind:
            if rkind in PROMOTIONS.get(wkind, ()):
                return []
            return [f"{where}: type changed from {_describe(writer)} to {_describe(reader)}"]
        renamed = rkind in NAMED and reader["name"] != writer["name"]
        if renamed and writer["name"] not in reader["aliases"]:
            return [f"{where}: {rkind} renamed from {writer['name']} to {reader['name']}"]
        if rkind == "record":
            return self._record(reader, writer, path)
        if rkind == "enum":
            if "default" in reader:
                return []
            symbols = set(reader["symbols"])
            return [
                f"{where}: enum symbol {s!r} removed" for s in writer["symbols"] if s not in symbols
            ]
        if rkind == "array":
            return self.problems(reader["items"], writer["items"], f"{where}[]")
        if rkind == "map":
            return self.problems(reader["values"], writer["values"], f"{where}{{}}")
        if rkind == "fixed" and reader["size"] != writer["size"]:
            return [f"{where}: fixed size changed from {writer['size']} to {reader['size']}"]
        return _decimal_problems(reader, writer, where)

    def _into_union(self, reader: list[Any], writer: Any, path: str) -> list[str]:
        """A non-union writer must resolve against at least one reader branch."""
        closest: list[str] | None = None
        for branch in reader:
            found = self.problems(branch, writer, path)
            if not found:
                return []
            same_type = _kind(branch) == _kind(writer) and (
                _kind(branch) not in NAMED or branch["name"] == writer["name"]
            )
            if same_type and closest is None:
                closest = found
        if closest is not None:  # the "same" type is there but changed: say how
            return closest
        return [f"{path or ROOT}: type {_describe(writer)} not in reader {_describe(reader)}"]

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        key = (id(reader), id(writer))
        if key in self.in_progress:  # recursion: this pair is already being compared
            return []
        self.in_progress.add(key)
        written = {field["name"]: field for field in writer["fields"]}
        found: list[str] = []
        for field in reader["fields"]:
            fpath = _field_path(path, field["name"])
            names = [field["name"], *field.get("aliases", [])]
            source = next((written[n] for n in names if n in written), None)
            if source is not None:
                found += self.problems(field["type"], source["type"], fpath)
            elif "default" not in field:
                found.append(f"field {fpath!r} added without a default")
        self.in_progress.discard(key)
        return found


def _decimal_problems(reader: Any, writer: Any, where: str) -> list[str]:
    """Same underlying type; a decimal must keep precision and scale to keep its meaning."""
    if not (isinstance(reader, dict) and isinstance(writer, dict)):
        return []
    if reader.get("logicalType") != "decimal" or writer.get("logicalType") != "decimal":
        return []
    found: list[str] = []
    for attr, default in (("precision", None), ("scale", 0)):
        old, new = writer.get(attr, default), reader.get(attr, default)
        if old != new:
            found.append(f"{where}: decimal {attr} changed from {old} to {new}")
    return found


def backward_problems(reader: Schema, writer: Schema) -> list[str]:
    """Every reason the reader cannot read the writer's data; empty when compatible."""
    found = _Checker().problems(_resolve(reader, "", {}), _resolve(writer, "", {}), "")
    return list(dict.fromkeys(found))  # a shared named type can report the same spot twice


def check_backward(reader: Schema, writer: Schema, *, subject: str = "") -> None:
    """Raise IncompatibleSchema listing the problems, so a breaking change is never registered."""
    found = backward_problems(reader, writer)
    if found:
        raise IncompatibleSchema(_message(subject, "the previous version", found))


def check_backward_transitive(versions: Sequence[Schema], *, subject: str = "") -> None:
    """The newest version must read every older one (BACKWARD_TRANSITIVE); oldest first."""
    if len(versions) < 2:
        return
    newest = versions[-1]
    found: list[str] = []
    for number, older in enumerate(versions[:-1], start=1):
        found += [f"version {number}: {p}" for p in backward_problems(newest, older)]
    if found:
        raise IncompatibleSchema(_message(subject, "every older version", found))


def _message(subject: str, against: str, found: list[str]) -> str:
    """One readable sentence plus one line per problem."""
    name = f"schema for {subject!r}" if subject else "new schema"
    lines = "\n".join(f"  - {p}" for p in found)
    return f"{name} cannot read data written with {against}:\n{lines}"


__all__ = ["Schema", "backward_problems", "check_backward", "check_backward_transitive"]
