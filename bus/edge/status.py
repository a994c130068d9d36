"""``bus status``: is the bus healthy, what is late, where is work piling up — on one screen.

Everything comes from the broker: the catalogue's topics, each agent's consumer group (its
members, their partitions, and how far behind they are), the dead letters, and the task
lifecycle on the task topic (folded as the gateway folds an inbox, ``bus.domain.tasks``). A part a
broker cannot answer is shown as unavailable, not as an error, so the screen still helps
when something is wrong.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from bus.domain.tasks import TaskKey, TaskView, by_state, count_tasks
from bus.settings import Settings
from bus.streaming.client import kafka_admin, kafka_consumer, read_topic
from bus.streaming.codec import EventCodec
from bus.streaming.reach import wait_for_broker
from bus.streaming.topics import missing_topics

AGENTS = ("ingest", "correlate", "cases")


def agent_group(settings: Settings, agent: str) -> str:
    """An agent's consumer group: the batch agents' own, or the Faust app's for the cases."""
    return settings.app_id if agent == "cases" else f"{settings.app_id}.{agent}"


@dataclass
class AgentStatus:
    """One agent's consumer group."""

    name: str
    members: dict[str, list[str]] = field(default_factory=dict)  # client -> partitions
    lag: int | None = None
    problem: str | None = None


@dataclass
class Status:
    """Everything ``bus status`` shows."""

    broker: str
    reachable: bool
    missing_topics: list[str] = field(default_factory=list)
    agents: list[AgentStatus] = field(default_factory=list)
    deadletters: Counter[str] = field(default_factory=Counter)
    task_counts: Counter[TaskKey] = field(default_factory=Counter)

    @property
    def tasks(self) -> Counter[str]:
        """Tasks by state (``bus.domain.tasks.TASK_STATES``), zeros included."""
        return by_state(self.task_counts)


async def _agent(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, settings: Settings, name: str
) -> AgentStatus:
    group = agent_group(settings, name)
    status = AgentStatus(name)
    try:
        [response] = await admin.describe_consumer_groups([group])
        for g in response.groups:
            for member in g[5]:  # (member_id, client_id, client_host, metadata, assignment)
                parts: list[str] = []
                if member[4]:
                    assignment = ConsumerProtocolMemberAssignment.decode(member[4])
                    for topic, partitions in assignment.assignment:
                        short = topic.removeprefix(settings.topic_prefix + ".")
                        parts += [f"{short}/{p}" for p in sorted(partitions)]
                # The member id: every worker's agent has the same client id and, on one
                # host, the same address; keyed by those, two workers would show as one.
                status.members[f"{member[1]}@{member[2]} ({member[0][-8:]})"] = parts
        committed = await admin.list_consumer_group_offsets(group)
        if committed:
            ends = await consumer.end_offsets(list(committed))
            status.lag = sum(max(ends[tp] - om.offset, 0) for tp, om in committed.items())
    except Exception as exc:  # a broker without the admin API: say so, go on
        status.problem = f"unavailable from this broker ({type(exc).__name__})"
    return status


async def group_members(settings: Settings, agent: str) -> int | None:
    """How many members an agent's consumer group has; ``None`` if the broker cannot say."""
    admin = kafka_admin(settings, request_timeout_ms=2000)
    try:
        await admin.start()
        [response] = await admin.describe_consumer_groups([agent_group(settings, agent)])
        return sum(len(g[5]) for g in response.groups)
    except Exception:
        return None
    finally:
        await admin.close()


async def collect(settings: Settings) -> Status:
    """Ask the broker everything ``bus status`` shows."""
    status = Status(settings.broker, reachable=True)
    try:
        await wait_for_broker(settings.broker, 5, settings.kafka_security())
    except Exception:
        status.reachable = False
        return status
    admin = kafka_admin(settings)
    consumer = kafka_consumer(settings)
    await admin.start()
    await consumer.start()
    try:
        status.missing_topics = missing_topics(settings, await admin.list_topics())
        for name in AGENTS:
            status.agents.append(await _agent(admin, consumer, settings, name))
    finally:
        await consumer.stop()
        await admin.close()
    async for r in read_topic(settings, settings.topic("deadletter"), to_end=True, max_seconds=60):
        status.deadletters[r.headers.get("bus.reason", "?")] += 1
    status.task_counts = await _tasks(settings)
    return status


async def _tasks(settings: Settings) -> Counter[TaskKey]:
    """Every task by (matter, department, state), folded from the task topic as it is now.

    The same fold the gateway runs over an inbox (``bus.domain.tasks``), over the whole topic, read
    up to its end offsets: a slow fetch must not make the counts smaller.
    """
    tasks: dict[str, TaskView] = {}
    seen: set[str] = set()
    codec = EventCodec()
    topic = settings.topic("events.task")
    async for r in read_topic(settings, topic, to_end=True, max_seconds=60):
        event_id = r.headers.get("event_id", "")
        if event_id in seen:  # an at-least-once copy
            continue
        seen.add(event_id)
        TaskView.fold(tasks, codec.decode(r.value or b""))
    return count_tasks(tasks.values())


__all__ = ["AgentStatus", "Status", "collect"]
