"""Keep the shipped Avro schemas in step with the models (``bus schemas check|export``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from bus.errors import ConfigurationError, IncompatibleSchema
from bus.schemas.avro import derive_schema
from bus.schemas.events import EVENT_TYPES
from bus.schemas.registry import LocalSchemaRegistry

PROJECT = "collaboration-bus"
"""The distribution's name in pyproject.toml: how a source checkout of it is recognised."""


def checkout_schemas(package: Path | None = None) -> Path | None:
    """The schemas directory of the running package when it is a source checkout, else None.

    Only a checkout's schemas are committed and released; rewriting an installed package's
    files (site-packages) would change what that installation decodes, and a path relative to
    the current directory writes wherever the command happens to run.
    """
    here = (package or Path(__file__).parent).resolve()
    if {"site-packages", "dist-packages"} & set(here.parts):
        return None
    pyproject = here.parent.parent / "pyproject.toml"
    try:
        name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return here / "avro" if name == PROJECT else None


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
    if added:  # in step: nothing is rewritten
        registry.save(directory)
    return added
