"""The topic catalogue: every topic the bus uses, in one place.

All subject-keyed topics share ``Settings.partitions`` so Faust tables co-partition: every
event about one enterprise lands on the same partition number in every topic. Canonical
topics keep their events forever: they are the evidence log operators trace cases in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bus.schemas.events import FAMILIES
from bus.settings import Settings

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


def canonical(family: str) -> TopicSpec:
    """The canonical topic of one event family (validated, authorised, de-duplicated)."""
    return TopicSpec(f"events.{family}", "canonical", f"validated {family}.* events")


CATALOGUE: tuple[TopicSpec, ...] = (
    INGRESS,
    *(canonical(f) for f in FAMILIES),
    DEADLETTER,
    INGEST_SEEN,
    CORRELATE_RECORDS,
    CORRELATE_SEEN,
    REPLAYED,
)


def canonical_topic(settings: Settings, event_type: str) -> str:
    """Full name of the canonical topic an event type belongs to."""
    return settings.topic(f"events.{event_type.split('.', 1)[0]}")


async def create_topics(settings: Settings, specs: tuple[TopicSpec, ...] = CATALOGUE) -> list[str]:
    """Create every missing topic with the shared partition count; returns the ones created.

    Idempotent: existing topics are left alone (their partition count is checked by Faust).
    """
    admin = AIOKafkaAdminClient(**settings.kafka())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                settings.topic(s.name),
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=s.config(),
            )
            for s in specs
            if settings.topic(s.name) not in existing
        ]
        created = []
        for topic in new:  # one by one: a broker that rejects one should not hide the rest
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            await _wait_for_metadata(admin, set(created))
        return created
    finally:
        await admin.close()


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: set[str]) -> None:
    for _ in range(50):
        if names <= set(await admin.list_topics()):
            return
        await asyncio.sleep(0.1)
