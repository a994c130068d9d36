"""The department directory: codes, names, towns, credit domains and the event types each
may publish.

Kept as data (``bus/data/departments.yaml``) so operators review changes like code. The
ingest agent asks ``Directory.authorise`` for every event; a Kafka ACL or gateway credential
proves *who* is publishing, this file says *what* they may publish, and the policy beside it
(``bus.domain.policy``) on *which objects*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.domain.policy import Policy
from bus.errors import AuthorisationError, ConfigurationError
from bus.schemas.events import EVENT_TYPES
from bus.schemas.types import DepartmentCode


class Domain(BaseModel):
    """A field of public credit information (e.g. tax): a section of the credit report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    name: str = Field(min_length=1, max_length=200)


class Department(BaseModel):
    """One department as the directory describes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: DepartmentCode
    name: str = Field(min_length=1)
    town: str | None = None
    domain: str | None = Field(default=None, description="the credit domain of its decisions")
    publishes: tuple[str, ...] = ()

    def may_publish(self, event_type: str) -> bool:
        """True when one of the department's patterns matches ``event_type``."""
        return any(fnmatchcase(event_type, p) for p in self.publishes)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domains: list[Domain] = Field(default_factory=list)
    departments: list[Department]


@dataclass(frozen=True)
class Directory:
    """All departments by code, with a per-(source, type) answer cache for the hot path."""

    departments: dict[str, Department]
    policy: Policy = field(default_factory=Policy)
    domains: tuple[Domain, ...] = ()

    @classmethod
    def load(cls, path: Path | None = None, policy: Path | None = None) -> Directory:
        """Read and validate a directory file and the policy beside it (shipped by default)."""
        source = path or Path(str(resources.files("bus") / "data" / "departments.yaml"))
        try:
            raw = yaml.safe_load(source.read_text(encoding="utf-8"))
            parsed = _File.model_validate(raw)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read department directory {source}: {exc}") from exc
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigurationError(f"department directory {source}: {loc}: {err['msg']}") from exc
        domains = {d.code: d for d in parsed.domains}
        if len(domains) < len(parsed.domains):
            raise ConfigurationError(f"department directory {source}: a domain is listed twice")
        by_code: dict[str, Department] = {}
        for d in parsed.departments:
            if d.code in by_code:
                raise ConfigurationError(f"department directory {source}: {d.code} listed twice")
            if d.domain is not None and d.domain not in domains:
                raise ConfigurationError(
                    f"department directory {source}: {d.code}: domain {d.domain!r} is not "
                    f"among the domains listed ({', '.join(domains) or 'none'})"
                )
            for pattern in d.publishes:
                if not any(fnmatchcase(t, pattern) for t in EVENT_TYPES):
                    raise ConfigurationError(
                        f"department directory {source}: {d.code} publishes {pattern!r}, "
                        "which matches no known event type"
                    )
            by_code[d.code] = d
        # An operator's policy must name this directory's codes; the shipped one names
        # Kunshan's, which a directory of its own (a test's, another city's) may lack.
        codes = frozenset(by_code) if policy is not None else None
        return cls(by_code, Policy.load(policy, codes), tuple(parsed.domains))

    def get(self, code: str) -> Department | None:
        """The department with this code, if listed."""
        return self.departments.get(code)

    def domain_of(self, code: str) -> str | None:
        """The credit domain of a department's decisions, if the directory gives one."""
        dept = self.departments.get(code)
        return dept.domain if dept is not None else None

    def authorise(self, source: str, event_type: str) -> None:
        """Raise ``AuthorisationError`` unless ``source`` may publish ``event_type``."""
        if not _allowed(self, source, event_type):
            if source not in self.departments:
                raise AuthorisationError(
                    f"source {source!r} is not in the department directory",
                    reason="auth.unknown_source",
                )
            raise AuthorisationError(
                f"department {source} may not publish {event_type}", reason="auth.event_type"
            )

    def __hash__(self) -> int:
        return id(self)


@lru_cache(maxsize=4096)
def _allowed(directory: Directory, source: str, event_type: str) -> bool:
    dept = directory.departments.get(source)
    return dept is not None and dept.may_publish(event_type)
