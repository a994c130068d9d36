"""Matters (一件事): cross-agency processes declared as data, reviewed like code.

Each ``*.yaml`` file in this folder declares one matter: what triggers it, how its cases are
correlated, who takes part, which decision rule applies, which tasks it creates (assignee,
deadline in working days) and what happens when they are late. ``load_matters`` validates
every file at start-up and names the file and field of any mistake. The rule and assignee
vocabularies below are what the correlate agent knows how to run.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bus.domain.yamlpos import line_of
from bus.errors import ConfigurationError
from bus.schemas.events import EVENT_TYPES

Rule = Literal["clean_record", "always", "holds_licences", "all_opinions"]
Action = Literal["issue_certificate", "review_tasks"]
RESOLVERS = (
    "penalty_agency",  # one task per bureau whose penalties are on the record
    "licence_department",  # one task per department whose active licences the enterprise holds
    "requested_departments",  # one task per department named in the trigger's payload
    "town_of_enterprise",  # the government of the town where the enterprise sits
)
DEPARTMENT = r"^[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9_-]*)+$"


class TaskTemplate(BaseModel):
    """A task a matter creates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    assignee: str = Field(description=f"a department code or one of {', '.join(RESOLVERS)}")
    title: str = Field(min_length=1, max_length=300)
    working_days: int = Field(ge=1, le=60)
    supervisor: str | None = Field(default=None, description="requester, lead or a code")

    @field_validator("assignee")
    @classmethod
    def _assignee(cls, value: str) -> str:
        if value not in RESOLVERS and not re.match(DEPARTMENT, value):
            raise ValueError(f"{value!r} is neither a department code nor one of {RESOLVERS}")
        return value

    @field_validator("supervisor")
    @classmethod
    def _supervisor(cls, value: str | None) -> str | None:
        if value not in (None, "requester", "lead") and not re.match(DEPARTMENT, value or ""):
            raise ValueError(f"{value!r} is not requester, lead or a department code")
        return value


class Decision(BaseModel):
    """How a case is decided, and what follows each outcome."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: Rule
    when_clean: Action | None = None
    otherwise: Action | None = None


class Matter(BaseModel):
    """One matter, as declared in its YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    version: int = Field(default=1, ge=1, description="raise it with every change of meaning")
    title: str
    trigger: str
    correlation: Literal["subject"] = "subject"
    lead: str
    participants: tuple[str, ...] = ()
    requires_registration: bool = Field(
        default=False, description="park triggers until the enterprise's registration arrives"
    )
    decision: Decision
    tasks: tuple[TaskTemplate, ...] = ()
    late: Literal["escalate_to_supervisor", "overdue_only"] = "escalate_to_supervisor"

    @field_validator("trigger")
    @classmethod
    def _known_trigger(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}")
        return value

    def task(self, name: str) -> TaskTemplate:
        """The task template called ``name``."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def load_matters(directory: Path | None = None) -> dict[str, Matter]:
    """Every matter in ``directory`` (the shipped ones by default), by name."""
    base = directory or Path(str(resources.files("bus.domain.matters")))
    matters: dict[str, Matter] = {}
    for path in sorted(base.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        try:
            matter = Matter.model_validate(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"matter {path.name}: not valid YAML: {exc}") from exc
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(file)"
            line = line_of(text, err["loc"])
            where = f"{path.name}, line {line}" if line else path.name
            raise ConfigurationError(f"matter {where}: {loc}: {err['msg']}") from exc
        if "review_tasks" in (matter.decision.when_clean, matter.decision.otherwise) and not any(
            t.name == "review" for t in matter.tasks
        ):
            raise ConfigurationError(f"matter {path.name}: review_tasks needs a task 'review'")
        if matter.decision.rule != "clean_record" and not matter.tasks:
            raise ConfigurationError(f"matter {path.name}: {matter.decision.rule} needs tasks")
        if matter.name in matters:
            raise ConfigurationError(f"matter {path.name}: another file is called {matter.name}")
        matters[matter.name] = matter
    return matters


def by_trigger(matters: dict[str, Matter]) -> dict[str, tuple[Matter, ...]]:
    """The matters each event type starts, in name order (several may share a trigger)."""
    found: dict[str, list[Matter]] = {}
    for name in sorted(matters):
        found.setdefault(matters[name].trigger, []).append(matters[name])
    return {trigger: tuple(ms) for trigger, ms in found.items()}
