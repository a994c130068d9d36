"""Who may do what to which object: the policy beside the department directory.

The directory (``departments.yaml``) answers "may this department publish this event type?";
the policy (``policy.yaml``) answers "may it do this to *that* object?": which identities are
the bus's own, which payload fields must name the publisher, and who may act on a decision
(its owner, or a department the policy delegates). The stateless checks run wherever an event
enters (gateway, ingest); the ownership check needs the owners of earlier decisions, which the
ingest agent keeps (``bus.agents.ingest``). Reasons: docs/operations.md, "Reasons".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import AuthorisationError, ConfigurationError, first_problem
from bus.schemas.events import EVENT_TYPES, model_for

if TYPE_CHECKING:
    from bus.schemas.envelope import Envelope

OWNER = "owner"
#: Separates subject, decision type and number in an ownership key.
SEP = "\x1f"


class Act(BaseModel):
    """An event type that acts on an earlier decision, and who may publish it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    decision: str = Field(description="The event type that made the decision")
    key: str = Field(description="The payload field holding the decision's number")
    allowed: tuple[str, ...] = Field(min_length=1, description="`owner` and delegates' codes")


class Policy(BaseModel):
    """The policy file, validated against the event types and the directory's codes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reserved: frozenset[str] = frozenset()
    bound_fields: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    acts: dict[str, Act] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None, codes: frozenset[str] | None = None) -> Policy:
        """Read the policy (the shipped one by default); ``codes`` are the directory's."""
        source = path or Path(str(resources.files("bus") / "data" / "policy.yaml"))
        try:
            policy = cls.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"cannot read policy {source}: {exc}") from exc
        except ValidationError as exc:
            raise ConfigurationError(f"policy {source}: {first_problem(exc)}") from exc
        problem = policy._problem(codes)
        if problem:
            raise ConfigurationError(f"policy {source}: {problem}")
        return policy

    def _problem(self, codes: frozenset[str] | None) -> str | None:
        """The first entry that names an unknown event type, field or department."""
        for event_type, fields in self.bound_fields.items():
            if event_type not in EVENT_TYPES:
                return f"bound_fields: unknown event type {event_type!r}"
            for name in fields:
                if name not in _payload_fields(event_type):
                    return f"bound_fields.{event_type}: {event_type} has no payload field {name!r}"
        for event_type, act in self.acts.items():
            for kind in (event_type, act.decision):
                if kind not in EVENT_TYPES:
                    return f"acts.{event_type}: unknown event type {kind!r}"
                if act.key not in _payload_fields(kind):
                    return f"acts.{event_type}: {kind} has no payload field {act.key!r}"
            if codes is not None:
                unknown = [a for a in act.allowed if a != OWNER and a not in codes]
                if unknown:
                    return f"acts.{event_type}: {unknown[0]!r} is not in the directory"
        if codes is not None and (unknown_reserved := self.reserved - codes):
            return f"reserved: {sorted(unknown_reserved)[0]!r} is not in the directory"
        return None

    def check(self, event: Envelope) -> None:
        """The checks that need nothing but the event: reserved identities, bound fields."""
        if event.source in self.reserved:
            raise AuthorisationError(
                f"{event.source} is the bus's own identity; no department may publish as it",
                reason="auth.reserved_source",
                field="source",
            )
        for name in self.bound_fields.get(event.event_type, ()):
            named = getattr(event.payload, name)
            if named != event.source:
                raise AuthorisationError(
                    f"payload.{name} names {named}, but {event.source} is publishing: a "
                    "department acts only in its own name",
                    reason="auth.bound_field",
                    field=f"payload.{name}",
                )

    def decision_of(self, event: Envelope) -> tuple[Act, str] | None:
        """The act an event performs and the ownership key of its decision, if it is one."""
        act = self.acts.get(event.event_type)
        if act is None:
            return None
        number = getattr(event.payload, act.key)
        return act, f"{event.subject}{SEP}{act.decision}{SEP}{number}"

    def authorise_act(self, event: Envelope, act: Act, owner: str | None) -> None:
        """Raise unless ``event``'s source may act on a decision owned by ``owner``.

        ``owner`` is ``None`` when the bus has no record of the decision: that is fine for the
        decision itself (its publisher becomes the owner), an error for anything acting on it.
        """
        number = getattr(event.payload, act.key)
        if owner is None:
            if event.event_type == act.decision:
                return
            raise AuthorisationError(
                f"{event.event_type} of {act.key} {number!r}: the bus has no {act.decision} of "
                f"it for {event.subject}; replay this once the decision has arrived",
                reason="auth.unknown_decision",
                field=f"payload.{act.key}",
            )
        if (event.source == owner and OWNER in act.allowed) or event.source in act.allowed:
            return
        raise AuthorisationError(
            f"{act.key} {number!r} of {event.subject} belongs to {owner}; {event.source} may "
            f"not publish {event.event_type} for it",
            reason="auth.not_owner",
            field=f"payload.{act.key}",
        )


def _payload_fields(event_type: str) -> set[str]:
    payload: Any = model_for(event_type).model_fields["payload"].annotation
    return set(getattr(payload, "model_fields", {}))


__all__ = ["OWNER", "Act", "Policy"]
