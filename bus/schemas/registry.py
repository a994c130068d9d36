"""Schema registry: stable ids for (event type, version), and the shipped Avro schemas.

Events travel in the Confluent wire format, so each schema needs an id that never changes.
``LocalSchemaRegistry`` reads the ids and schemas shipped in ``bus/schemas/avro/`` (the
contract, reviewed like code); a Confluent-compatible HTTP registry can stand behind the same
``SchemaRegistry`` protocol in production. Subjects are event types (record-name strategy:
one topic carries several types of one family).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import fastavro

from bus.errors import ConfigurationError, DecodeError, UnknownEventType
from bus.schemas.compat import check_backward_transitive

MANIFEST = "registry.json"


@dataclass(frozen=True)
class RegisteredSchema:
    """One schema version with its id; ``parsed`` is fastavro's parsed form, made once."""

    id: int
    subject: str
    version: int
    schema: dict[str, Any]
    parsed: Any = field(repr=False, compare=False)


class SchemaRegistry(Protocol):
    """What the codec needs from a registry."""

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema with this id; ``DecodeError`` when unknown."""
        ...

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """The schema of one subject version; ``UnknownEventType`` when unknown."""
        ...


class LocalSchemaRegistry:
    """A registry held in memory, loaded from files; ``register`` enforces BACKWARD."""

    def __init__(self, schemas: Iterable[RegisteredSchema] = ()) -> None:
        self._by_id: dict[int, RegisteredSchema] = {}
        self._by_subject: dict[str, dict[int, RegisteredSchema]] = {}
        for s in schemas:
            self._add(s)

    def _add(self, s: RegisteredSchema) -> None:
        if s.id in self._by_id:
            raise ConfigurationError(f"schema id {s.id} is used twice")
        self._by_id[s.id] = s
        self._by_subject.setdefault(s.subject, {})[s.version] = s

    @classmethod
    def load(cls, directory: Path | None = None) -> LocalSchemaRegistry:
        """Load ``registry.json`` and its ``.avsc`` files (the package's own by default)."""
        base = directory or Path(str(resources.files("bus.schemas") / "avro"))
        try:
            manifest = json.loads((base / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read schema manifest in {base}: {exc}") from exc
        schemas = []
        for entry in manifest["schemas"]:
            try:
                schema = json.loads((base / entry["file"]).read_text())
                parsed = _parse(schema)
            except Exception as exc:  # missing file, bad JSON, not an Avro schema
                raise ConfigurationError(f"schema {base / entry['file']}: {exc}") from exc
            schemas.append(
                RegisteredSchema(entry["id"], entry["subject"], entry["version"], schema, parsed)
            )
        return cls(schemas)

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema with this id."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise DecodeError(
                f"unknown schema id {schema_id}", reason="schema.unknown_id"
            ) from None

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """The schema of one subject version."""
        try:
            return self._by_subject[subject][version]
        except KeyError:
            raise UnknownEventType(
                f"no schema registered for {subject} version {version}",
                reason="schema.unknown_version",
            ) from None

    def versions(self, subject: str) -> list[RegisteredSchema]:
        """Every version of a subject, oldest first."""
        return [v for _, v in sorted(self._by_subject.get(subject, {}).items())]

    def subjects(self) -> list[str]:
        """Every subject, sorted."""
        return sorted(self._by_subject)

    def all(self) -> list[RegisteredSchema]:
        """Every schema, by id."""
        return [self._by_id[i] for i in sorted(self._by_id)]

    def register(self, subject: str, schema: dict[str, Any]) -> RegisteredSchema:
        """Add a schema as the subject's next version, or return the identical existing one.

        Raises ``IncompatibleSchema`` when the new version could not read every older one.
        """
        existing = self.versions(subject)
        for s in existing:
            if s.schema == schema:
                return s
        check_backward_transitive([*(s.schema for s in existing), schema], subject=subject)
        new = RegisteredSchema(
            max(self._by_id, default=0) + 1,
            subject,
            existing[-1].version + 1 if existing else 1,
            schema,
            _parse(schema),
        )
        self._add(new)
        return new

    def save(self, directory: Path) -> None:
        """Write the manifest and one ``.avsc`` per schema (what ``bus schemas export`` ships)."""
        directory.mkdir(parents=True, exist_ok=True)
        entries = []
        for s in self.all():
            name = f"{s.subject}.v{s.version}.avsc"
            text = json.dumps(s.schema, indent=2, ensure_ascii=False) + "\n"
            (directory / name).write_text(text)
            entries.append({"id": s.id, "subject": s.subject, "version": s.version, "file": name})
        manifest = json.dumps({"schemas": entries}, indent=2) + "\n"
        (directory / MANIFEST).write_text(manifest)


def _parse(schema: dict[str, Any]) -> Any:
    return fastavro.parse_schema(schema)
