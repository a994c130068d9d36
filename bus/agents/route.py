"""Route: deliver events to the inboxes of the departments that should see them.

Who receives what is data, reviewed by operators (``bus/data/subscriptions.yaml``, or the
file ``BUS_SUBSCRIPTIONS_FILE`` names)::

    subscriptions:
      - name: huaqiao-penalties
        department: ks.town.huaqiao
        event_types: ["penalty.imposed", "penalty.revoked"]
        where:
          enterprise.town: Huaqiao          # equality
          payload.amount: {gte: 10000}      # or an operator: eq ne in not_in gt gte lt lte
                                            #   exists contains

Paths are ``event_type``, ``source``, ``subject``, ``payload.<field>`` and
``enterprise.<field>`` (the enterprise's registered profile: ``name``, ``town``,
``industry_code``, ``registered_capital``, ``status`` ...). Besides subscriptions, the bus
delivers what concerns a department by construction: every task assigned to it (created,
overdue, escalated, and its own answers once the bus has taken them), an escalation to the
supervising office, and a decision to the department that asked for it. The correlate agent
names those recipients in the ``bus.notify`` header of the events it produces.

Routing runs inside the correlate agent, on each canonical event as it is read: conditions
on the enterprise need its record, and the correlate agent holds it. An event whose
subscription asks about the enterprise before the registration has reached the bus is
parked in the record and routed when the registration arrives, never decided on missing
data. Delivery is at-least-once: after a crash an inbox may receive an event twice; it
carries its ``event_id`` and readers (the gateway, the webhook sink) de-duplicate by it.
"""

from __future__ import annotations

import fnmatch
import logging
import operator
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bus.agents.out import Headers, Out
from bus.domain.conditions import OPERATORS, holds, split
from bus.domain.departments import Directory
from bus.errors import ConfigurationError, first_problem
from bus.schemas.envelope import Envelope
from bus.schemas.events import EVENT_TYPES
from bus.settings import Settings
from bus.streaming.topics import inbox_topic

log = logging.getLogger(__name__)

NOTIFY = "bus.notify"
"""Header on the bus's own events: departments that receive it by construction."""

ROOTS = ("event_type", "source", "subject", "payload", "enterprise")


class Subscription(BaseModel):
    """One department's standing request for a kind of event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    department: str
    description: str | None = None
    event_types: list[str] = Field(min_length=1)
    where: dict[str, Any] = Field(default_factory=dict)

    @field_validator("where")
    @classmethod
    def _conditions(cls, where: dict[str, Any]) -> dict[str, Any]:
        for path, cond in where.items():
            root = path.split(".", 1)[0]
            if root not in ROOTS or (root in ("payload", "enterprise") and "." not in path):
                raise ValueError(f"{path!r}: a path starts with one of {', '.join(ROOTS)}")
            if isinstance(cond, dict):
                if len(cond) != 1 or next(iter(cond)) not in OPERATORS:
                    raise ValueError(
                        f"{path!r}: a condition is a value or one of {', '.join(OPERATORS)}"
                    )
                op, value = next(iter(cond.items()))
                if op in ("in", "not_in") and not isinstance(value, list):
                    raise ValueError(f"{path!r}: {op} takes a list")
        return where

    @property
    def needs_enterprise(self) -> bool:
        """Whether a condition reads the enterprise's profile (needs its registration)."""
        return any(p.startswith("enterprise.") for p in self.where)

    def matches(self, event: Envelope, profile: dict[str, Any]) -> bool:
        """Every condition holds for ``event`` about an enterprise with ``profile``."""
        return _Compiled(self).matches(event, profile)


class _Compiled:
    """A subscription as routing evaluates it for every event: plain attributes, conditions
    turned into functions once (a pydantic model's attribute access costs more)."""

    __slots__ = ("conditions", "department", "equals", "name", "needs_enterprise")

    def __init__(self, sub: Subscription) -> None:
        self.name = sub.name
        self.department = sub.department
        self.needs_enterprise = sub.needs_enterprise
        self.conditions = [(_getter(path), _test(cond)) for path, cond in sub.where.items()]
        self.equals: dict[str, str] = {}  # path -> the text it must equal, for the index
        for path, cond in sub.where.items():
            op, expected = split(cond)
            if op == "eq" and isinstance(expected, str):
                self.equals[path] = expected

    def matches(self, event: Envelope, profile: dict[str, Any]) -> bool:
        for get, test in self.conditions:  # noqa: SIM110 (all() with a generator is slower)
            if not test(get(event, profile)):
                return False
        return True


def _lookup(path: str, event: Envelope, profile: dict[str, Any]) -> Any:
    root, _, rest = path.partition(".")
    if root == "enterprise":
        value: Any = profile
        for part in rest.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value
    if root == "payload":
        value = event.payload
        for part in rest.split("."):
            value = getattr(value, part, None) if not isinstance(value, dict) else value.get(part)
        return value
    return getattr(event, root)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt,
    "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}  # fmt: skip


def _getter(path: str) -> Callable[[Envelope, dict[str, Any]], Any]:
    """A function that reads ``path`` of an event (and its enterprise's profile)."""
    root, _, rest = path.partition(".")
    if root == "enterprise" and "." not in rest:
        return lambda _event, profile: profile.get(rest)
    if root in ("enterprise", "payload"):
        return lambda event, profile: _lookup(path, event, profile)
    return lambda event, _profile: getattr(event, root)


def _test(cond: Any) -> Callable[[Any], bool]:
    """``cond`` as a test of one value: ``holds`` with the common cases precomputed.

    Text compared with text and money or counts compared with a number are most of what
    subscriptions ask; they skip ``norm``. Anything else takes ``holds``, the reference.
    """
    op, expected = split(cond)
    compare = _COMPARE.get(op)
    if compare is None:
        return lambda actual: holds(actual, cond)
    if isinstance(expected, str):

        def text(actual: Any) -> bool:
            if type(actual) is str:
                return bool(compare(actual, expected))
            return holds(actual, cond)

        return text
    if isinstance(expected, (int, float, Decimal)) and not isinstance(expected, bool):
        number = Decimal(str(expected))

        def numeric(actual: Any) -> bool:
            if type(actual) is Decimal:
                return bool(compare(actual, number))
            if type(actual) is int:
                return bool(compare(Decimal(actual), number))
            return holds(actual, cond)

        return numeric
    return lambda actual: holds(actual, cond)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscriptions: list[Subscription]


def load_subscriptions(path: Path | None, directory: Directory) -> list[Subscription]:
    """Read and check the subscriptions; errors name the file, the entry and the field."""
    source = path or Path(str(resources.files("bus") / "data" / "subscriptions.yaml"))
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read subscriptions {source}: {exc}") from None
    try:
        subs = _File.model_validate(raw).subscriptions
    except ValidationError as exc:
        raise ConfigurationError(f"{source}: {first_problem(exc)}") from None
    names = set()
    for i, sub in enumerate(subs):
        at = f"{source}: subscriptions.{i} ({sub.name})"
        if sub.name in names:
            raise ConfigurationError(f"{at}: the name is used twice")
        names.add(sub.name)
        if directory.get(sub.department) is None:
            raise ConfigurationError(f"{at}: department {sub.department!r} is not in the directory")
        for pattern in sub.event_types:
            if not fnmatch.filter(EVENT_TYPES, pattern):
                raise ConfigurationError(f"{at}: event type {pattern!r} matches no event type")
    return subs


class _Index:
    """An event type's subscriptions, narrowed by the path most of them test for equality.

    Ten towns each following their own enterprises are ten subscriptions on
    ``enterprise.town``; an event needs only its own town's (and those that do not test the
    town) evaluated. Candidates keep the file's order, so the first subscription that
    matches a department still names the route, and each candidate is still evaluated in
    full: the index only leaves out subscriptions that cannot match.
    """

    __slots__ = ("by_value", "get", "rest", "subs")

    def __init__(
        self,
        subs: list[_Compiled],
        get: Callable[[Envelope, dict[str, Any]], Any] | None = None,
        by_value: dict[str, list[_Compiled]] | None = None,
        rest: list[_Compiled] | None = None,
    ) -> None:
        self.subs, self.get = subs, get
        self.by_value, self.rest = by_value or {}, rest or []

    @classmethod
    def build(cls, subs: list[_Compiled]) -> _Index:
        """Index on the path with the most equality tests, if three or more share it."""
        counts: dict[str, int] = {}
        for sub in subs:
            for path in sub.equals:
                counts[path] = counts.get(path, 0) + 1
        if not counts or max(counts.values()) < 3:
            return cls(subs)
        path = max(counts, key=lambda p: counts[p])
        values = {sub.equals[path] for sub in subs if path in sub.equals}
        by_value = {
            v: [sub for sub in subs if sub.equals.get(path, v) == v] for v in sorted(values)
        }
        rest = [sub for sub in subs if path not in sub.equals]
        return cls(subs, _getter(path), by_value, rest)

    def candidates(self, event: Envelope, profile: dict[str, Any]) -> list[_Compiled]:
        """The subscriptions that may match ``event``, in the file's order."""
        if self.get is None:
            return self.subs
        actual = self.get(event, profile)
        if type(actual) is not str:  # None, an enum, a number: let every test decide
            return self.subs
        return self.by_value.get(actual, self.rest)


class Router:
    """Which inboxes an event goes to, as ``Out`` records for the runtime to produce."""

    def __init__(
        self, settings: Settings, directory: Directory, subscriptions: list[Subscription]
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.subscriptions = subscriptions
        self.by_type: dict[str, list[_Compiled]] = {}
        for sub in subscriptions:
            types = {t for p in sub.event_types for t in fnmatch.filter(EVENT_TYPES, p)}
            compiled = _Compiled(sub)
            for event_type in sorted(types):
                self.by_type.setdefault(event_type, []).append(compiled)
        self._waits = {t: any(s.needs_enterprise for s in subs) for t, subs in self.by_type.items()}
        self._index = {t: _Index.build(subs) for t, subs in self.by_type.items()}
        self._topics: dict[str, str] = {}

    def must_wait(self, event: Envelope, registered: bool) -> bool:
        """Whether a subscription needs the enterprise's profile and it is not there yet."""
        return not registered and self._waits.get(event.event_type, False)

    def recipients(
        self,
        event: Envelope,
        profile: dict[str, Any],
        notify: str | None,
        *,
        registered: bool = True,
        deferred: bool = False,
    ) -> dict[str, str]:
        """Department -> why it receives ``event`` (a subscription's name, or ``notify``).

        Before the registration (``registered=False``) subscriptions that read the
        enterprise are left out (``must_wait`` says to park the event); ``deferred=True``
        is the parked event's second pass: only those subscriptions.
        """
        to: dict[str, str] = {}
        for code in () if deferred else (notify or "").split(","):
            if not code:
                continue
            if self.directory.get(code) is None:  # no inbox to deliver to: say so, go on
                log.warning("route: %s names %s, which is not in the directory",
                            event.event_id, code)  # fmt: skip
                continue
            to.setdefault(code, "notify")
        index = self._index.get(event.event_type)
        for sub in index.candidates(event, profile) if index is not None else ():
            if deferred != sub.needs_enterprise and (deferred or not registered):
                continue
            if sub.department not in to and sub.matches(event, profile):
                to[sub.department] = sub.name
        return to

    def outs(
        self,
        event: Envelope,
        value: bytes,
        headers: Headers,
        profile: dict[str, Any],
        notify: str | None = None,
        *,
        registered: bool = True,
        deferred: bool = False,
    ) -> list[Out]:
        """The inbox records for one event: its own bytes, the reason in ``bus.route``."""
        kept = [(k, v) for k, v in headers if not k.startswith("bus.")]
        out = []
        to = self.recipients(event, profile, notify, registered=registered, deferred=deferred)
        for dept, why in to.items():
            topic = self._topics.get(dept)
            if topic is None:
                topic = self._topics[dept] = inbox_topic(self.settings, dept)
            out.append(
                Out(
                    topic,
                    value,
                    key=event.subject.encode(),
                    headers=[*kept, ("bus.route", why.encode())],
                    partition=0,
                )
            )
        return out
