"""The topic catalogue: every topic the bus uses, in one place.

All subject-keyed topics share ``Settings.partitions`` so Faust tables co-partition: every
event about one enterprise lands on the same partition number in every topic. Canonical
topics keep their events forever: they are the evidence log operators trace cases in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bus.schemas.events import FAMILIES
from bus.settings import Settings
from bus.streaming.client import kafka_admin, kafka_consumer, start_or_close

if TYPE_CHECKING:
    from bus.domain.departments import Directory

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its role, how long it keeps data, whether it is compacted."""

    name: str
    role: str
    description: str
    retention_ms: int = -1
    compacted: bool = False
    subject_keyed: bool = True
    partitions: int | None = None  # None: the shared count (Settings.partitions)

    def config(self) -> dict[str, str]:
        """Kafka topic configuration for ``CreateTopics``."""
        cfg = {"retention.ms": str(self.retention_ms)}
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        return cfg


INGRESS = TopicSpec(
    "ingress", "ingress", "what connectors and the gateway publish; untrusted", 7 * DAY_MS
)
DEADLETTER = TopicSpec(
    "deadletter",
    "deadletter",
    "everything rejected: original bytes, reason in headers",
    90 * DAY_MS,
)

INGEST_SEEN = TopicSpec(
    "state.ingest-seen",
    "state",
    "event ids the ingest agent accepted, per partition; retention is the de-duplication window",
    30 * DAY_MS,
)

INGEST_OWNERS = TopicSpec(
    "state.ingest-owners",
    "state",
    "who made each decision (a penalty, a licence) per enterprise, for the policy's ownership "
    "checks; compacted",
    compacted=True,
)

CORRELATE_RECORDS = TopicSpec(
    "state.correlate-records",
    "state",
    "one record per enterprise (profile, penalties, licences, open cases); compacted",
    compacted=True,
)
CORRELATE_SEEN = TopicSpec(
    "state.correlate-seen",
    "state",
    "event ids the correlate agent handled; retention is its de-duplication window",
    30 * DAY_MS,
)

REPLAYED = TopicSpec(
    "state.replayed",
    "state",
    "dead letters already re-submitted, by origin, so a replay happens once; compacted",
    compacted=True,
)

CASES = TopicSpec(
    "cases",
    "cases",
    "case steps for the case engine: a matter's trigger or a task's answer with the "
    "enterprise's record as of it, and deadline ticks",
    30 * DAY_MS,
)

CASES_TABLE = "cases"
"""The case engine's Faust table: each enterprise's open cases and the steps it handled."""


def cases_changelog(settings: Settings) -> str:
    """The changelog topic of the cases table (Faust names it ``<app_id>-<table>-changelog``)."""
    return f"{settings.app_id}-{CASES_TABLE}-changelog"


CASE_PARTIES = TopicSpec(
    "state.case-parties",
    "state",
    "who takes part in each case the bus runs (requester, assignees, supervisors), by "
    "correlation id, so the gateway answers an outsider without reading the case; compacted",
    compacted=True,
    subject_keyed=False,
    partitions=1,
)


def canonical(family: str) -> TopicSpec:
    """The canonical topic of one event family (validated, authorised, de-duplicated)."""
    return TopicSpec(f"events.{family}", "canonical", f"validated {family}.* events")


def inbox(department: str) -> TopicSpec:
    """A department's inbox: routed events and its tasks, in one order (one partition).

    One topic per department, so that on a Kafka with ACLs a department's principal can be
    allowed to read its own inbox and nothing else; one partition, so an inbox has a single
    order and a cursor is just an offset.
    """
    return TopicSpec(
        f"inbox.{department}",
        "inbox",
        f"what {department} receives: routed events and its tasks",
        90 * DAY_MS,
        subject_keyed=False,
        partitions=1,
    )


def missing_topics(
    settings: Settings, existing: Iterable[str], also: Iterable[str] = ()
) -> list[str]:
    """The catalogue's topics (and ``also``) not among ``existing``, in catalogue order."""
    have = set(existing)
    wanted = [settings.topic(spec.name) for spec in CATALOGUE] + list(also)
    return list(dict.fromkeys(t for t in wanted if t not in have))


def inbox_topic(settings: Settings, department: str) -> str:
    """Full name of a department's inbox topic."""
    return settings.topic(f"inbox.{department}")


def inboxes(departments: Iterable[str]) -> tuple[TopicSpec, ...]:
    """The inbox topics of these departments (``Directory.codes()``)."""
    return tuple(inbox(code) for code in departments)


def department_ingress(department: str) -> TopicSpec:
    """A department's own ingress: what its Kafka principal publishes, and nothing else.

    Kafka's ACLs name topics, not what is inside a record, so a principal allowed to write the
    shared ingress could claim any department as ``source``. Here the topic names the
    publisher: ACLs let only ``User:<department>`` write it, and the ingest agent dead-letters
    an event on it whose ``source`` is another department (``auth.source_mismatch``). Subject
    keyed, with the shared partition count: partition ``p`` of every ingress topic holds the
    same enterprises, whose de-duplication and ownership state ingest keeps per partition.
    """
    return TopicSpec(
        f"{INGRESS.name}.{department}",
        "ingress",
        f"what {department} publishes as its own Kafka principal; source must be {department}",
        INGRESS.retention_ms,
    )


def department_ingress_topic(settings: Settings, department: str) -> str:
    """Full name of a department's own ingress topic."""
    return settings.topic(department_ingress(department).name)


def publishing_departments(directory: Directory) -> tuple[str, ...]:
    """The departments that get their own ingress and a principal: all but reserved ones.

    A reserved identity (the bus's own, ``ks.bus``) never publishes through ingress, so it
    gets no topic to write to.
    """
    reserved = directory.policy.reserved
    return tuple(code for code in directory.departments if code not in reserved)


def department_ingresses(directory: Directory) -> tuple[TopicSpec, ...]:
    """The own ingress topic of every publishing department of the directory."""
    return tuple(department_ingress(code) for code in publishing_departments(directory))


CATALOGUE: tuple[TopicSpec, ...] = (
    INGRESS,
    *(canonical(f) for f in FAMILIES),
    DEADLETTER,
    INGEST_SEEN,
    INGEST_OWNERS,
    CORRELATE_RECORDS,
    CORRELATE_SEEN,
    REPLAYED,
    CASES,
    CASE_PARTIES,
)


def canonical_topic(settings: Settings, event_type: str) -> str:
    """Full name of the canonical topic an event type belongs to."""
    return settings.topic(f"events.{event_type.split('.', 1)[0]}")


CREATE_CHUNK = 10
"""Topics per CreateTopics request."""


def full_catalogue(settings: Settings) -> tuple[TopicSpec, ...]:
    """The catalogue plus an inbox and an own ingress for every department in the directory."""
    from bus.domain.departments import Directory

    directory = Directory.load(settings.departments_file, settings.policy_file)
    return CATALOGUE + inboxes(directory.departments) + department_ingresses(directory)


async def create_topics(
    settings: Settings,
    specs: tuple[TopicSpec, ...] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Create every missing topic (the full catalogue by default); returns the ones created.

    Idempotent: existing topics are left alone (their partition count is checked by Faust).
    Topics go in requests of ``CREATE_CHUNK``; ``progress(done, total)`` after each.
    """
    specs = full_catalogue(settings) if specs is None else specs
    admin = kafka_admin(settings)
    await start_or_close(admin)
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                settings.topic(s.name),
                num_partitions=s.partitions or settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=s.config(),
            )
            for s in specs
            if settings.topic(s.name) not in existing
        ]
        created: list[str] = []
        for i in range(0, len(new), CREATE_CHUNK):  # dozens of inboxes: a few round trips
            chunk = new[i : i + CREATE_CHUNK]
            try:
                await admin.create_topics(chunk)
                created += [t.name for t in chunk]
            except TopicAlreadyExistsError:
                for topic in chunk:  # one by one: one taken name should not hide the rest
                    try:
                        await admin.create_topics([topic])
                        created.append(topic.name)
                    except TopicAlreadyExistsError:
                        pass
            if progress is not None:
                progress(min(i + CREATE_CHUNK, len(new)), len(new))
        if created:
            await _wait_for_metadata(admin, set(created))
        return created
    finally:
        await admin.close()


async def partitions_on_broker(settings: Settings) -> dict[str, tuple[int, int]]:
    """``topic: (partitions on the broker, partitions the settings expect)`` for the catalogue.

    What was created earlier keeps its count whatever ``BUS_PARTITIONS`` says now, so a report
    of "topics up to date" names what the broker has, not what this run would have made.
    Topics missing from the broker are left out.
    """

    from bus.streaming.client import topic_partitions

    expected = {settings.topic(s.name): s.partitions or settings.partitions
                for s in full_catalogue(settings)}  # fmt: skip
    consumer = kafka_consumer(settings)
    await start_or_close(consumer)
    try:
        found = await topic_partitions(consumer, expected)
    finally:
        await consumer.stop()
    return {t: (len(parts), expected[t]) for t, parts in found.items()}


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: set[str]) -> None:
    for _ in range(50):
        if names <= set(await admin.list_topics()):
            return
        await asyncio.sleep(0.1)
