"""``bus migrate owners``: give decisions made before the policy existed their owners.

The ingest agent learns who made a decision (a penalty, a licence) when the decision passes
through it, and refuses acts on decisions it never saw (``auth.unknown_decision``). Decisions
already on the canonical topics when the policy arrived were never seen: this reads them, in
log order, and writes the owners the ingest agent would have written into its changelog.
Run it once with the workers stopped; the workers read the owners when they next start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.domain.departments import Directory
from bus.edge.status import group_members
from bus.errors import BusError, ConfigurationError
from bus.settings import Settings
from bus.streaming.client import kafka_producer, read_topic, start_or_close
from bus.streaming.codec import EventCodec
from bus.streaming.topics import INGEST_OWNERS, canonical_topic


@dataclass
class OwnersReport:
    """What a migration found and wrote."""

    known: int = 0
    added: dict[str, str] = field(default_factory=dict)  # ownership key -> owner
    skipped: list[str] = field(default_factory=list)  # acts the policy would have refused


async def migrate_owners(settings: Settings, *, dry_run: bool = False) -> OwnersReport:
    """Write the owners of decisions on the canonical topics that the owners store lacks.

    Idempotent: keys already in the store keep their owner; a second run adds nothing.
    """
    if await group_members(settings, "ingest"):
        raise ConfigurationError(
            "the ingest agent is running; stop every worker first (it reads the owners only "
            "when it starts)",
            reason="config.workers_running",
        )
    policy = Directory.load(settings.departments_file, settings.policy_file).policy
    codec = EventCodec()
    owners_topic = settings.topic(INGEST_OWNERS.name)
    owners: dict[tuple[int, str], str] = {}
    async for r in read_topic(settings, owners_topic, to_end=True, max_seconds=600):
        key = (r.key or b"").decode()
        if r.value is None:
            owners.pop((r.partition, key), None)
        else:
            owners[(r.partition, key)] = r.value.decode()
    report = OwnersReport(known=len(owners))
    topics = sorted({canonical_topic(settings, t) for t in policy.acts})
    added: dict[tuple[int, str], str] = {}
    for topic in topics:
        # One topic's partition holds one set of enterprises, in log order: the first
        # decision wins as it did at ingest.
        async for r in read_topic(settings, topic, to_end=True, max_seconds=3600):
            event = codec.decode(r.value or b"")
            found = policy.decision_of(event)
            if found is None:
                continue
            act, key = found
            owner = owners.get((r.partition, key)) or added.get((r.partition, key))
            try:
                policy.authorise_act(event, act, owner)
            except BusError as exc:
                report.skipped.append(f"{topic}/{r.partition}@{r.offset}: {exc}")
                continue
            if owner is None:
                added[(r.partition, key)] = event.source
    report.added = {key: owner for (_, key), owner in added.items()}
    if dry_run or not added:
        return report
    producer = kafka_producer(settings, enable_idempotence=True)
    await start_or_close(producer)
    try:
        for (partition, key), owner in added.items():
            await producer.send(owners_topic, owner.encode(), key=key.encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return report


__all__ = ["OwnersReport", "migrate_owners"]
