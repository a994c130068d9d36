"""A matter played through the real agents in one process: no broker, no clock.

A policy author writes a scenario (events in, answers in, working days passing) and sees the
timeline the bus would produce: every event goes through ingest (schema, USCC, who may publish
it), correlate (the enterprise record, parking until the registration) and the case engine
(tasks, deadlines, escalations, decisions), exactly as on Kafka, with time taken from the
scenario. A scenario may say what it expects, so a matter ships with its own tests::

    matter: compliance-certificate
    start: 2026-03-02T09:00:00+08:00
    steps:
      - event: enterprise.registered
        source: ks.amr
        payload: {...}
      - event: certificate.requested
        source: ks.finance
        payload: {...}
      - complete: review                 # the matter's task, answered by its assignee
        by: ks.enforcement.huaqiao
        outcome: cleared
      - wait: 6                          # working days on the official calendar
    expect:
      - task.created: {assignee: ks.enforcement.huaqiao}
      - certificate.issued: {result: clean}
    expect_not: [task.escalated]

See docs/matters.md, "Testing a matter without a broker".
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from aiokafka import ConsumerRecord
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bus.agents.app import Context
from bus.agents.cases import (
    ANSWERS,
    BUS,
    CaseEngine,
    MemoryCaseStore,
    case_key,
    derived_id,
    task_id_for,
    tick_step,
)
from bus.agents.correlate import CorrelateAgent
from bus.agents.ingest import IngestAgent
from bus.agents.out import Out
from bus.agents.route import NOTIFY
from bus.domain.certificates import Signer
from bus.domain.departments import Directory
from bus.domain.matters import Matter, answering, by_trigger, load_matters
from bus.domain.workdays import CHINA_TZ
from bus.domain.yamlpos import line_of
from bus.errors import ConfigurationError
from bus.schemas.envelope import HISTORICAL, Envelope
from bus.schemas.events import EVENT_TYPES
from bus.settings import Settings
from bus.streaming.codec import EventCodec, Recent
from bus.streaming.topics import CASES

TaskAnswer = Literal["accept", "complete", "reject"]
ANSWER_TYPES = {"accept": "task.accepted", "complete": "task.completed", "reject": "task.rejected"}


class EventStep(BaseModel):
    """An event a department publishes, in the edge's JSON form (ids and times filled in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str
    source: str
    subject: str | None = Field(default=None, description="the scenario's enterprise if absent")
    payload: dict[str, Any]
    historical: bool = Field(default=False, description="an import of the past: starts nothing")

    @model_validator(mode="after")
    def _known(self) -> EventStep:
        if self.event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.event!r}")
        return self


class AnswerStep(BaseModel):
    """The assignee accepts, completes or rejects one of the matter's tasks, named by template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accept: str | None = None
    complete: str | None = None
    reject: str | None = None
    by: str
    outcome: str | None = Field(default=None, description="for complete, e.g. cleared")
    note: str | None = None
    reason: str | None = Field(default=None, description="for reject")

    @model_validator(mode="after")
    def _one(self) -> AnswerStep:
        given = [k for k in ("accept", "complete", "reject") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of accept, complete, reject (the task's name)")
        if self.complete and not self.outcome:
            raise ValueError("complete needs an outcome (e.g. cleared, confirmed)")
        return self

    @property
    def kind(self) -> TaskAnswer:
        return "accept" if self.accept else "complete" if self.complete else "reject"

    @property
    def task(self) -> str:
        return self.accept or self.complete or self.reject or ""


class WaitStep(BaseModel):
    """Time passes: working days on the official calendar, or hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wait: int = Field(ge=0, le=365, description="working days")
    hours: int = Field(default=0, ge=0, le=24 * 30)


def _step_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "EventStep" if "event" in value else "WaitStep" if "wait" in value else "AnswerStep"
    return type(value).__name__


Step = Annotated[
    Annotated[EventStep, Tag("EventStep")]
    | Annotated[AnswerStep, Tag("AnswerStep")]
    | Annotated[WaitStep, Tag("WaitStep")],
    Discriminator(_step_kind),
]


class Scenario(BaseModel):
    """A scenario file: the matter, when it starts, the steps, and what must come of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    matter: str
    with_matters: list[str] = Field(
        default_factory=list, description="other matters that run beside it, e.g. on its trigger"
    )
    title: str = ""
    start: datetime
    enterprise: str = Field(default="91320583MA1W0A0T3Y", description="the steps' subject")
    steps: list[Step] = Field(min_length=1)
    expect: list[dict[str, dict[str, Any] | str | None]] = Field(default_factory=list)
    expect_not: list[str] = Field(default_factory=list)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a time zone, e.g. 2026-03-02T09:00:00+08:00")
        return value


def load_scenario(path: Path) -> Scenario:
    """Read a scenario file; a mistake names the file, the line and the field."""
    text = path.read_text(encoding="utf-8")
    try:
        return Scenario.model_validate(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"scenario {path.name}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.endswith("Step"))]
        line = line_of(text, loc)
        where = f"{path.name}, line {line}" if line else path.name
        field_ = ".".join(str(p) for p in loc) or "(file)"
        raise ConfigurationError(f"scenario {where}: {field_}: {err['msg']}") from exc


@dataclass(frozen=True)
class Moment:
    """One line of the timeline: what happened, when, who was involved."""

    at: datetime
    kind: Literal["published", "refused", "decided"]
    event_type: str
    source: str
    notify: tuple[str, ...] = ()
    payload: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def line(self) -> str:
        """The moment as a line of the timeline, in China Standard Time."""
        when = self.at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M")
        who = self.source + (" -> " + ", ".join(self.notify) if self.notify else "")
        if self.kind == "refused":
            return f"{when}  {who:<40} {self.event_type:<22} REFUSED {self.reason}"
        return f"{when}  {who:<40} {self.event_type:<22} {summary(self.event_type, self.payload)}"


def summary(event_type: str, p: dict[str, Any]) -> str:
    """The fields of an event a policy author reads first."""
    if event_type == "task.created":
        due = datetime.fromisoformat(str(p["due_at"])).astimezone(CHINA_TZ)
        return f"{p.get('title', '')}; due {due:%Y-%m-%d %H:%M}"
    if event_type == "certificate.issued":
        cases = ", ".join(r.get("case_number", "") for r in p.get("record", []))
        return f"result {p.get('result')}" + (f" ({cases})" if cases else "")
    if event_type == "report.issued":
        found = [
            f"{d['domain']} {', '.join(r['case_number'] + ' ' + r['state'] for r in d['records'])}"
            for d in p.get("domains", [])
            if d.get("records")
        ]
        return f"result {p.get('result')}" + (f" ({'; '.join(found)})" if found else "")
    if event_type == "approval.decided":
        return f"decision {p.get('decision')}"
    if event_type in ("application.submitted", "application.decided"):
        result = f"result {p['result']} " if p.get("result") else ""
        return f"{result}{p.get('matter')} {p.get('application_number')}"
    if event_type in ("task.completed", "task.accepted", "task.rejected", "task.cancelled"):
        return " ".join(str(p.get(k)) for k in ("outcome", "reason") if p.get(k))
    if event_type == "task.escalated":
        return f"to {p.get('escalated_to')}"
    return ""


@dataclass
class Outcome:
    """What a scenario produced, and whether its expectations held."""

    scenario: Scenario
    timeline: list[Moment]
    open_tasks: int
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


class Simulation:
    """Ingest, correlate and the case engine over one partition, with the scenario's clock."""

    def __init__(self, matters_dir: Path | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bus-simulate-")
        s = Settings(app_id="sim", topic_prefix="sim", partitions=1, data_dir=Path(self._tmp.name))
        self.settings = s
        self.ctx = Context(
            s, EventCodec(), Directory.load(s.departments_file, s.policy_file), recent=Recent(0)
        )
        self.matters: dict[str, Matter] = load_matters(matters_dir)
        self.ingest = IngestAgent(self.ctx)
        self.correlate = CorrelateAgent(self.ctx)
        self.engine = CaseEngine(self.ctx, Signer.generate("simulation"))
        self.store = MemoryCaseStore(1)
        self._offset = 0
        self.timeline: list[Moment] = []
        self.created: list[Envelope] = []
        self._back: list[Out] = []  # the bus's events correlate reads again
        self.events: list[Envelope] = []  # every event the bus published, as published

    def close(self) -> None:
        """Remove the temporary data folder (signing key, stores)."""
        self._tmp.cleanup()

    def run(self, scenario: Scenario) -> Outcome:
        """Play ``scenario``; the timeline and what its expectations found."""
        names = [scenario.matter, *scenario.with_matters]
        for name in names:
            if name not in self.matters:
                known = ", ".join(sorted(self.matters))
                raise ConfigurationError(f"no matter called {name!r} (known: {known})")
        # Those named alone: a registration in its steps does not open other matters' cases.
        played = {name: self.matters[name] for name in names}
        self.engine.matters, self.engine.triggers = played, by_trigger(played)
        self.correlate.triggers = by_trigger(played)
        self.correlate.cancels = {c.event for m in played.values() for c in m.cancel}
        self.correlate.answers = {*ANSWERS, *answering(played)}
        now = scenario.start
        for i, step in enumerate(scenario.steps):
            if isinstance(step, WaitStep):
                now = self.engine.calendar.add_working_days(now, step.wait) + timedelta(
                    hours=step.hours
                )
                self._tick(now)
                continue
            now += timedelta(minutes=1)  # one step after another, in the log's order
            self._tick(now)
            event = (
                self._event(step, scenario, now)
                if isinstance(step, EventStep)
                else self._answer(step, scenario, now)
            )
            # Ids from the scenario, not at random: a scenario plays the same every time.
            eid = derived_id("scenario", scenario.matter, scenario.title, str(i))
            event = event.model_copy(update={"event_id": eid, "correlation_id": str(eid)})
            historical = isinstance(step, EventStep) and step.historical
            asyncio.run(self._publish(event, now, historical=historical))
        open_tasks = sum(len(s.open_tasks()) for s in self.store.data.values())
        return Outcome(scenario, self.timeline, open_tasks, self._check(scenario))

    # -- the steps ---------------------------------------------------------------------------

    def _event(self, step: EventStep, scenario: Scenario, now: datetime) -> Envelope:
        doc = {
            "event_type": step.event, "source": step.source, "occurred_at": now.isoformat(),
            "subject": step.subject or scenario.enterprise, "payload": step.payload,
        }  # fmt: skip
        return self.ctx.codec.from_json(json.dumps(doc, default=str))

    def _answer(self, step: AnswerStep, scenario: Scenario, now: datetime) -> Envelope:
        task_id = self._task_id(step, scenario)
        payload: dict[str, Any] = {"task_id": task_id}
        if step.kind == "complete":
            payload.update(outcome=step.outcome, note=step.note)
        elif step.kind == "reject":
            payload["reason"] = step.reason or "not ours"
        elif step.note:
            payload["note"] = step.note
        doc = {
            "event_type": ANSWER_TYPES[step.kind], "source": step.by,
            "occurred_at": now.isoformat(), "subject": scenario.enterprise,
            "payload": {k: v for k, v in payload.items() if v is not None},
        }  # fmt: skip
        return self.ctx.codec.from_json(json.dumps(doc))

    def _task_id(self, step: AnswerStep, scenario: Scenario) -> str:
        """The id of the task ``step`` names: its template, its assignee, the latest case."""
        named = [
            c.payload for c in reversed(self.created)
            if c.payload.task_id == task_id_for(step.task, _case(c), c.payload.assignee)
        ]  # fmt: skip
        for p in sorted(named, key=lambda p: p.assignee != step.by):  # the answerer's own first
            return str(p.task_id)  # another department's: the engine refuses it, as it should
        # Not created (yet): answer a task id the bus will not know, as a department might.
        return task_id_for(step.task, "none", step.by)

    async def _publish(self, event: Envelope, now: datetime, *, historical: bool) -> None:
        headers = event.kafka_headers()
        if historical:
            headers.append((HISTORICAL, b"1"))
        raw = self._record(self.settings.topic("ingress"), event.subject.encode(),
                           self.ctx.codec.encode(event), headers, now)  # fmt: skip
        accepted = []
        for out in await self.ingest.process([raw]):
            if out.topic == self.settings.topic("deadletter"):
                self._refused(out, now)
            elif out.topic.startswith(self.settings.topic("events.")):
                accepted.append(out)
                self.timeline.append(
                    Moment(now, "published", event.event_type, event.source,
                           payload=event.payload.model_dump(mode="json"))
                )  # fmt: skip
        records = [self._record(o.topic, o.key or b"", o.value or b"", o.headers, now)
                   for o in accepted]  # fmt: skip
        for out in await self.correlate.process(records) if records else []:
            if out.topic == self.settings.topic(CASES.name):
                self._decide(self.engine.handle(0, out.value or b"", self.store), now)
            elif out.topic == self.settings.topic("deadletter"):
                self._refused(out, now)
        await self._read_back(now)

    def _tick(self, now: datetime) -> None:
        self._decide(self.engine.handle(0, tick_step(now), self.store), now)
        if self._back:
            asyncio.run(self._read_back(now))

    async def _read_back(self, now: datetime) -> None:
        """The bus's own events that are case steps too (a deadline passed), through correlate."""
        while self._back:
            outs, self._back = self._back, []
            records = [self._record(o.topic, o.key or b"", o.value or b"", o.headers, now)
                       for o in outs]  # fmt: skip
            for out in await self.correlate.process(records):
                if out.topic == self.settings.topic(CASES.name):
                    self._decide(self.engine.handle(0, out.value or b"", self.store), now)

    def _decide(self, outs: list[Out], now: datetime) -> None:
        for out in outs:
            if out.topic == self.settings.topic("deadletter"):
                self._refused(out, now)
                continue
            if not out.topic.startswith(self.settings.topic("events.")):
                continue  # inbox deliveries and case parties: the route's business
            event = self.ctx.codec.decode(out.value or b"")
            if event.source != BUS:
                continue  # an answer confirmed: shown when it was published
            self.events.append(event)
            if event.event_type == "task.created":
                self.created.append(event)
            if event.event_type == "task.overdue":
                self._back.append(out)  # read by correlate, as the bus reads its own events
            notify = dict(out.headers or ()).get(NOTIFY, b"").decode()
            self.timeline.append(
                Moment(event.occurred_at, "decided", event.event_type, BUS,
                       tuple(n for n in notify.split(",") if n),
                       event.payload.model_dump(mode="json"))
            )  # fmt: skip

    def _refused(self, out: Out, now: datetime) -> None:
        headers = {k: v.decode(errors="replace") for k, v in out.headers or ()}
        self.timeline.append(
            Moment(now, "refused", headers.get("event_type", "?"), headers.get("source", "?"),
                   reason=f"{headers.get('bus.reason', '?')}: {headers.get('bus.error', '')}")
        )  # fmt: skip

    def _record(
        self, topic: str, key: bytes, value: bytes, headers: Any, now: datetime
    ) -> ConsumerRecord[bytes, bytes]:
        self._offset += 1
        ms = round(now.timestamp() * 1000)
        return ConsumerRecord(topic, 0, self._offset, ms, 0, key, value, None,
                              len(key), len(value), list(headers or ()))  # fmt: skip

    # -- expectations ------------------------------------------------------------------------

    def _check(self, scenario: Scenario) -> list[str]:
        failures: list[str] = []
        seen = iter(self.timeline)
        for want in scenario.expect:
            ((event_type, fields),) = want.items()
            if not _find(seen, event_type, fields or {}):
                failures.append(
                    f"expected {event_type} {fields or ''} (after the ones before it), not seen"
                )
                seen = iter(self.timeline)
        for event_type in scenario.expect_not:
            if any(m.event_type == event_type and m.kind == "decided" for m in self.timeline):
                failures.append(f"did not expect {event_type}, but the bus decided one")
        return failures


def _case(created: Envelope) -> str:
    """The case a ``task.created`` belongs to: its matter and the trigger that caused it."""
    return case_key(created.payload.matter, str(created.causation_id))


def _find(moments: Iterator[Moment], event_type: str, fields: dict[str, Any] | str) -> bool:
    """Advance ``moments`` to the first one matching; whether there was one."""
    for m in moments:
        if event_type == "refused":
            if m.kind == "refused" and str(fields) in m.reason:
                return True
            continue
        if m.event_type != event_type or m.kind == "refused":
            continue
        wanted = fields if isinstance(fields, dict) else {}
        if all(str(m.payload.get(k)) == str(v) for k, v in wanted.items()):
            return True
    return False


def simulate(matter: str, scenario_file: Path, matters_dir: Path | None = None) -> Outcome:
    """Load and play one scenario for ``matter``."""
    scenario = load_scenario(scenario_file)
    if scenario.matter != matter:
        raise ConfigurationError(
            f"scenario {scenario_file.name} is for {scenario.matter!r}, not {matter!r}"
        )
    sim = Simulation(matters_dir)
    try:
        return sim.run(scenario)
    finally:
        sim.close()


__all__ = ["Moment", "Outcome", "Scenario", "Simulation", "load_scenario", "simulate"]
