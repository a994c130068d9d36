"""Configured connectors: what ``bus connect NAME`` runs.

Operators declare connectors in a YAML file (``BUS_CONNECTORS_FILE``, or ``--config``)::

    connectors:
      - name: huaqiao-cases
        kind: outbox
        options:
          dsn: postgresql://cases@db/huaqiao
          table: bus_outbox
      - name: huaqiao-webhook
        kind: webhook
        options:
          department: ks.enforcement.huaqiao
          url: https://cases.huaqiao.example/bus-inbox

``${NAME}`` anywhere in the file is replaced by the environment variable ``NAME`` (so
passwords stay out of the file); a missing variable is an error that names it.

A connector class is registered under a ``kind`` in ``KINDS`` and provides an ``Options``
pydantic model (``extra="forbid"``, so a misspelt option is an error naming it, with the
closest known option as a suggestion) and
``from_options(settings, name, options)``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import ConfigurationError, first_problem
from bus.settings import Settings
from connectors.base import Connector

KINDS: dict[str, str] = {
    "outbox": "connectors.outbox:OutboxSource",
    "webhook": "connectors.webhook:WebhookSink",
    "file-import": "connectors.file_import:FileImportSource",
    "directory": "connectors.example:DirectorySource",
}
"""Connector kinds that ship, as ``module:Class`` (imported only when used)."""


class ConnectorClass(Protocol):
    """What a registered connector class provides."""

    Options: type[BaseModel]

    def from_options(self, settings: Settings, name: str, options: Any) -> Connector: ...


class Entry(BaseModel):
    """One configured connector."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    kind: str
    options: dict[str, Any] = Field(default_factory=dict)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connectors: list[Entry]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, path: Path) -> str:
    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ConfigurationError(f"{path}: environment variable {m.group(1)} is not set")
        return value

    return _VAR.sub(sub, text)


def load(path: Path) -> list[Entry]:
    """Read and check a connectors file; errors name the file and the entry."""
    try:
        raw = yaml.safe_load(_expand(path.read_text(), path))
    except OSError as exc:
        raise ConfigurationError(f"cannot read connectors file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    try:
        entries = _File.model_validate(raw).connectors
    except ValidationError as exc:
        entry_keys = _names(Entry)
        unknown = _unknown(
            exc, lambda loc: entry_keys if len(loc) == 3 else _names(_File), what="key"
        )
        raise ConfigurationError(f"{path}: {unknown or first_problem(exc)}") from None
    names = [e.name for e in entries]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigurationError(f"{path}: connector names used twice: {', '.join(dupes)}")
    for e in entries:
        if e.kind not in KINDS:
            raise ConfigurationError(
                f"{path}: connector {e.name!r} has unknown kind {e.kind!r}; known: "
                + ", ".join(sorted(KINDS))
            )
    return entries


def connector_class(kind: str) -> ConnectorClass:
    """The class registered for ``kind``."""
    module, _, attr = KINDS[kind].partition(":")
    cls: ConnectorClass = getattr(importlib.import_module(module), attr)
    return cls


def build(settings: Settings, entry: Entry) -> Connector:
    """The connector an entry describes, its options checked (errors name the option)."""
    cls = connector_class(entry.kind)
    try:
        options = cls.Options.model_validate(entry.options)
    except ValidationError as exc:
        known = _names(cls.Options)
        problem = _unknown(exc, lambda loc: known if len(loc) == 1 else []) or first_problem(exc)
        raise ConfigurationError(
            f"connector {entry.name!r} ({entry.kind}): options.{problem}"
        ) from None
    return cls.from_options(settings, entry.name, options)


def _names(model: type[BaseModel]) -> list[str]:
    """The keys a model takes in a file: each field's alias, or its name."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _unknown(
    exc: ValidationError, known: Callable[[tuple[Any, ...]], list[str]], what: str = "option"
) -> str | None:
    """``"<key>: unknown option ...; did you mean ...?"`` for the first key no field takes.

    A misspelt required option fails twice: as unknown and as missing. Reporting the missing
    one sends the operator looking for an option they did write; the unknown one is the typo.
    """
    for error in exc.errors(include_url=False):
        if error["type"] != "extra_forbidden":
            continue
        loc = tuple(error["loc"])
        key = str(loc[-1])
        where = ".".join(str(p) for p in loc)
        names = known(loc)
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(names))}"
        return f"{where}: unknown {what} {key!r}; {hint}"
    return None


def find(path: Path, name: str) -> Entry:
    """The entry called ``name``, or an error listing the names there are."""
    entries = load(path)
    for e in entries:
        if e.name == name:
            return e
    known = ", ".join(e.name for e in entries) or "none"
    raise ConfigurationError(f"no connector {name!r} in {path}; configured: {known}")
