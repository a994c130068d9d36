"""The shipped Avro schemas are a contract: they agree with the models, their ids never change,
a released version is never rewritten, and new versions get new ids only when BACKWARD
compatible. ``bus/schemas/avro/registry.json`` as it is today is the reference for the ids.

Export is exercised on copies of the shipped directory in ``tmp_path``; the package's own
files are only read.
"""

from __future__ import annotations

import copy
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from bus.errors import ConfigurationError, DecodeError, IncompatibleSchema, UnknownEventType
from bus.schemas.avro import derive_schema, record_name
from bus.schemas.events import EVENT_TYPES
from bus.schemas.export import checkout_schemas, drift, export
from bus.schemas.registry import LocalSchemaRegistry, RegisteredSchema

AVRO_DIR = Path(str(resources.files("bus.schemas") / "avro"))

# The ids consumers have seen on the wire. They must never change.
RELEASED_IDS = {
    ("enterprise.registered", 1): 1,
    ("enterprise.changed", 1): 2,
    ("enterprise.deregistered", 1): 3,
    ("penalty.imposed", 1): 4,
    ("penalty.revoked", 1): 5,
    ("penalty.repaired", 1): 6,
    ("licence.granted", 1): 7,
    ("licence.revoked", 1): 8,
    ("certificate.requested", 1): 9,
    ("certificate.issued", 1): 10,
    ("task.created", 1): 11,
    ("task.accepted", 1): 12,
    ("task.completed", 1): 13,
    ("task.rejected", 1): 14,
    ("task.overdue", 1): 15,
    ("task.escalated", 1): 16,
    ("approval.requested", 1): 17,
    ("approval.opinion", 1): 18,
    ("approval.decided", 1): 19,
    ("task.cancelled", 1): 20,
    ("application.submitted", 1): 21,
    ("application.withdrawn", 1): 22,
    ("application.decided", 1): 23,
    ("report.requested", 1): 24,
    ("report.issued", 1): 25,
    ("approval.decided", 2): 26,
    ("application.decided", 2): 27,
}


# A payload field a new version might add: with a default (compatible) and without.
_DEFAULTED = {"name": "remark", "type": ["null", "string"], "default": None}
_REQUIRED = {"name": "remark", "type": "string"}


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped schema directory."""
    return Path(shutil.copytree(AVRO_DIR, tmp_path / "avro"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "registry.json").read_text())


def with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    """A copy of an event schema with one more payload field."""
    out = copy.deepcopy(schema)
    payload = next(f for f in out["fields"] if f["name"] == "payload")
    payload["type"]["fields"].append(field)
    return out


# --- the shipped schemas --------------------------------------------------------------------


def test_shipped_schemas_agree_with_the_models() -> None:
    assert drift(LocalSchemaRegistry.load()) == []


def test_released_ids_are_as_shipped() -> None:
    registry = LocalSchemaRegistry.load()
    assert {(s.subject, s.version): s.id for s in registry.all()} == RELEASED_IDS
    for (subject, version), schema_id in RELEASED_IDS.items():
        assert registry.get(subject, version).id == schema_id
        assert registry.by_id(schema_id).subject == subject


def test_ids_are_unique_in_the_manifest() -> None:
    ids = [e["id"] for e in manifest(AVRO_DIR)["schemas"]]
    assert len(ids) == len(set(ids))


def test_every_event_type_has_a_schema_per_model_version() -> None:
    registry = LocalSchemaRegistry.load()
    assert registry.subjects() == sorted(EVENT_TYPES)
    for event_type, spec in EVENT_TYPES.items():
        assert [s.version for s in registry.versions(event_type)] == sorted(spec.versions)


def test_schema_names_follow_the_record_name_strategy() -> None:
    assert record_name("penalty.imposed") == "gov.ks.bus.penalty.Imposed"
    assert record_name("certificate.requested") == "gov.ks.bus.certificate.Requested"
    schema = LocalSchemaRegistry.load().get("penalty.imposed", 1).schema
    assert (schema["namespace"], schema["name"]) == ("gov.ks.bus.penalty", "Imposed")


def test_drift_reports_a_changed_model_and_a_missing_schema() -> None:
    shipped = LocalSchemaRegistry.load()
    changed = [
        s
        if s.subject != "penalty.imposed"
        else RegisteredSchema(s.id, s.subject, s.version, with_field(s.schema, _DEFAULTED), None)
        for s in shipped.all()
        if s.subject != "licence.revoked"
    ]
    assert drift(LocalSchemaRegistry(changed)) == [
        "penalty.imposed v1: model differs from the shipped schema; "
        "a released version never changes, add a new version instead",
        "licence.revoked v1: model has no shipped schema",
    ]


# --- the registry ---------------------------------------------------------------------------


def test_register_compatible_new_version_gets_the_next_id() -> None:
    registry = LocalSchemaRegistry.load()
    v1 = registry.get("penalty.imposed", 1)
    v2 = registry.register("penalty.imposed", with_field(v1.schema, _DEFAULTED))
    assert (v2.id, v2.subject, v2.version) == (28, "penalty.imposed", 2)
    assert registry.get("penalty.imposed", 2) is v2
    assert registry.by_id(28) is v2
    assert registry.get("penalty.imposed", 1).id == 4  # the old version keeps its id


def test_register_the_same_schema_again_returns_the_existing_one() -> None:
    registry = LocalSchemaRegistry.load()
    v1 = registry.get("penalty.imposed", 1)
    assert registry.register("penalty.imposed", copy.deepcopy(v1.schema)) is v1
    assert len(registry.all()) == len(RELEASED_IDS)


def test_register_field_without_default_is_incompatible() -> None:
    registry = LocalSchemaRegistry.load()
    v1 = registry.get("penalty.imposed", 1)
    with pytest.raises(IncompatibleSchema) as info:
        registry.register("penalty.imposed", with_field(v1.schema, _REQUIRED))
    assert info.value.reason == "schema.incompatible"
    assert "'payload.remark' added without a default" in str(info.value)
    assert [s.version for s in registry.versions("penalty.imposed")] == [1]
    assert len(registry.all()) == len(RELEASED_IDS)


def test_register_checks_every_older_version() -> None:
    """v3 makes v2's optional field required: it can read neither v1 nor v2 data."""
    registry = LocalSchemaRegistry.load()
    v1 = registry.get("penalty.revoked", 1).schema
    registry.register("penalty.revoked", with_field(v1, _DEFAULTED))
    with pytest.raises(IncompatibleSchema) as info:
        registry.register("penalty.revoked", with_field(v1, _REQUIRED))
    assert "version 1: field 'payload.remark' added without a default" in str(info.value)
    assert "version 2: payload.remark: type changed from null to string" in str(info.value)


def test_register_a_new_subject_starts_at_version_1() -> None:
    registry = LocalSchemaRegistry.load()
    schema = {"type": "record", "name": "Opened", "namespace": "gov.ks.bus.case", "fields": []}
    new = registry.register("case.opened", schema)
    assert (new.id, new.version) == (28, 1)


def test_registry_refuses_a_duplicate_id() -> None:
    a = LocalSchemaRegistry.load().get("penalty.imposed", 1)
    b = LocalSchemaRegistry.load().get("penalty.revoked", 1)
    with pytest.raises(ConfigurationError, match="schema id 4 is used twice"):
        LocalSchemaRegistry([a, RegisteredSchema(4, b.subject, 1, b.schema, b.parsed)])


def test_registry_lookups_fail_with_reasons() -> None:
    registry = LocalSchemaRegistry.load()
    with pytest.raises(DecodeError) as by_id:
        registry.by_id(12345)
    assert by_id.value.reason == "schema.unknown_id"
    with pytest.raises(UnknownEventType) as by_subject:
        registry.get("penalty.imposed", 2)
    assert by_subject.value.reason == "schema.unknown_version"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    registry = LocalSchemaRegistry.load()
    v1 = registry.get("penalty.imposed", 1)
    registry.register("penalty.imposed", with_field(v1.schema, _DEFAULTED))
    registry.save(tmp_path / "out")
    loaded = LocalSchemaRegistry.load(tmp_path / "out")
    assert [(s.id, s.subject, s.version, s.schema) for s in loaded.all()] == [
        (s.id, s.subject, s.version, s.schema) for s in registry.all()
    ]
    assert (tmp_path / "out" / "penalty.imposed.v2.avsc").exists()
    assert loaded.get("penalty.imposed", 2).id == 28


def test_save_of_the_shipped_registry_reproduces_the_shipped_files(tmp_path: Path) -> None:
    LocalSchemaRegistry.load().save(tmp_path)
    assert snapshot(tmp_path) == snapshot(AVRO_DIR)


def test_load_without_a_manifest_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read schema manifest"):
        LocalSchemaRegistry.load(tmp_path)


# --- export ---------------------------------------------------------------------------------


def test_export_of_an_in_step_directory_changes_nothing(shipped_copy: Path) -> None:
    before = snapshot(shipped_copy)
    assert export(shipped_copy) == []
    assert snapshot(shipped_copy) == before


def test_export_refuses_a_changed_released_version(shipped_copy: Path) -> None:
    avsc = shipped_copy / "penalty.imposed.v1.avsc"
    avsc.write_text(json.dumps(with_field(json.loads(avsc.read_text()), _DEFAULTED)))
    before = snapshot(shipped_copy)
    with pytest.raises(ConfigurationError) as info:
        export(shipped_copy)
    assert "penalty.imposed v1: model differs from the shipped schema" in str(info.value)
    assert snapshot(shipped_copy) == before  # nothing rewritten


def test_export_refuses_a_released_version_without_a_model(shipped_copy: Path) -> None:
    registry = LocalSchemaRegistry.load(shipped_copy)
    v1 = registry.get("penalty.imposed", 1)
    registry.register("penalty.imposed", with_field(v1.schema, _DEFAULTED))
    registry.save(shipped_copy)
    with pytest.raises(ConfigurationError) as info:
        export(shipped_copy)
    assert "penalty.imposed v2: shipped schema has no model" in str(info.value)


def test_export_adds_a_missing_version_with_a_new_id(shipped_copy: Path) -> None:
    """A model version without a shipped schema is added; ids are never reused."""
    m = manifest(shipped_copy)
    m["schemas"] = [e for e in m["schemas"] if e["subject"] != "enterprise.registered"]
    (shipped_copy / "registry.json").write_text(json.dumps(m))
    (shipped_copy / "enterprise.registered.v1.avsc").unlink()

    assert export(shipped_copy) == ["enterprise.registered v1 -> id 28"]

    registry = LocalSchemaRegistry.load(shipped_copy)
    assert registry.get("enterprise.registered", 1).id == 28
    assert registry.get("enterprise.registered", 1).schema == derive_schema(
        "enterprise.registered", 1
    )
    assert registry.get("penalty.imposed", 1).id == 4
    assert drift(registry) == []


def test_export_into_an_empty_directory_writes_every_model_version(tmp_path: Path) -> None:
    added = export(tmp_path / "new")
    assert len(added) == sum(len(s.versions) for s in EVENT_TYPES.values())
    assert drift(LocalSchemaRegistry.load(tmp_path / "new")) == []


def test_only_a_source_checkout_of_this_project_is_written_without_out(tmp_path: Path) -> None:
    assert checkout_schemas() == AVRO_DIR.resolve()
    for root, name in (
        (tmp_path / "venv/lib/python3.12/site-packages", "collaboration-bus"),
        (tmp_path / "other", "another-project"),  # vendored into someone else's tree
        (tmp_path / "bare", None),  # unpacked without a pyproject.toml
    ):
        package = root / "bus/schemas"
        package.mkdir(parents=True)
        if name:
            (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
        assert checkout_schemas(package) is None, root
    checkout = tmp_path / "clone"
    (checkout / "bus/schemas").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "collaboration-bus"\n')
    assert checkout_schemas(checkout / "bus/schemas") == (checkout / "bus/schemas/avro").resolve()
