"""Keep the shipped Avro schemas in step with the models (``bus schemas check|export``)."""

from __future__ import annotations

from pathlib import Path

from bus.errors import ConfigurationError, IncompatibleSchema
from bus.schemas.avro import derive_schema
from bus.schemas.events import EVENT_TYPES
from bus.schemas.registry import LocalSchemaRegistry


def drift(registry: LocalSchemaRegistry) -> list[str]:
    """Every disagreement between the models and the shipped schemas; empty when in step."""
    problems = []
    for event_type, spec in EVENT_TYPES.items():
        shipped = {s.version: s.schema for s in registry.versions(event_type)}
        for version in spec.versions:
            derived = derive_schema(event_type, version)
            if version not in shipped:
                problems.append(f"{event_type} v{version}: model has no shipped schema")
            elif shipped[version] != derived:
                problems.append(
                    f"{event_type} v{version}: model differs from the shipped schema; "
                    "a released version never changes, add a new version instead"
                )
        for version in shipped.keys() - spec.versions.keys():
            problems.append(f"{event_type} v{version}: shipped schema has no model")
    return problems


def export(directory: Path) -> list[str]:
    """Add schemas for new model versions (BACKWARD-checked, new ids); returns what was added.

    A released version whose model changed is refused: that would re-interpret old bytes.
    """
    registry = (
        LocalSchemaRegistry.load(directory)
        if (directory / "registry.json").exists()
        else LocalSchemaRegistry()
    )
    changed = [p for p in drift(registry) if "differs" in p or "has no model" in p]
    if changed:
        raise ConfigurationError("; ".join(changed))
    added = []
    for event_type, spec in EVENT_TYPES.items():
        known = {s.version for s in registry.versions(event_type)}
        for version in sorted(spec.versions.keys() - known):
            try:
                s = registry.register(event_type, derive_schema(event_type, version))
            except IncompatibleSchema:
                raise
            added.append(f"{event_type} v{s.version} -> id {s.id}")
    registry.save(directory)
    return added
