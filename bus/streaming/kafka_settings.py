"""The Kafka version and broker settings of every Kafka the bus runs on: one source of truth.

The local broker of the tests (:mod:`bus.dev.kafka_local`), docker-compose.yml and the Strimzi
cluster of deploy/k8s/kafka must run the same Apache Kafka with the same durability settings
(replication, ``min.insync.replicas``, unclean election, offset retention), or the tests
prove something production does not do. They all take them from here, and
tests/unit/test_deploy.py checks that the compose file and the Kubernetes manifest still say
what this module says. No imports from the rest of ``bus``: anything may read it.
"""

from __future__ import annotations

#: The Apache Kafka release everywhere: the local broker's jars (bus/data/kafka/pom.xml), the
#: ``apache/kafka`` image of docker-compose.yml and ``spec.kafka.version`` of the Strimzi cluster.
KAFKA_VERSION = "4.1.1"

#: Server properties of a production cluster of 3 (or more) nodes. Why each value:
#: docs/operations.md, "Kafka settings that matter".
CLUSTER_SETTINGS: dict[str, str] = {
    # with acks=all a write survives the loss of one broker; with two lost, producers wait
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    # Kafka's own topics (consumer offsets, transactions, share groups) as safe as the bus's
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
    # a replica that missed writes never becomes leader
    "unclean.leader.election.enable": "false",
    # topics come from the catalogue (`bus topics create`); a misspelt name is an error
    "auto.create.topics.enable": "false",
    # 30 days: a department system off over Spring Festival comes back where it stopped
    "offsets.retention.minutes": "43200",
}

#: Properties holding a replica count, and those holding a minimum in-sync count.
_REPLICATION = (
    "default.replication.factor",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "share.coordinator.state.topic.replication.factor",
)
_MIN_ISR = (
    "min.insync.replicas",
    "transaction.state.log.min.isr",
    "share.coordinator.state.topic.min.isr",
)


def settings_for(nodes: int) -> dict[str, str]:
    """:data:`CLUSTER_SETTINGS` for a cluster of ``nodes`` brokers (a new dict).

    3 or more: the production settings as they are. Fewer: no more replicas than brokers, and
    one broker fewer in sync (at least 1), so 1 node has replication 1 and min ISR 1.
    """
    if nodes < 1:
        raise ValueError(f"a Kafka cluster has at least 1 node, not {nodes}")
    settings = dict(CLUSTER_SETTINGS)
    for key in _REPLICATION:
        replicas = min(nodes, int(CLUSTER_SETTINGS[key]))
        settings[key] = str(replicas)
    replicas = int(settings["default.replication.factor"])
    for key in _MIN_ISR:
        settings[key] = str(min(int(CLUSTER_SETTINGS[key]), max(1, replicas - 1)))
    return settings


def _env_name(prop: str) -> str:
    """``log.dirs`` -> ``KAFKA_LOG_DIRS``: the ``apache/kafka`` image's naming.

    The image turns ``KAFKA_`` variables back into properties: ``_`` is ``.``, ``__`` is ``_``
    and ``___`` is ``-`` (its docker/examples/README.md). So ``_`` is doubled first.
    """
    name = prop.replace("_", "__").replace("-", "___").replace(".", "_")
    return f"KAFKA_{name.upper()}"


def compose_env(settings: dict[str, str]) -> dict[str, str]:
    """Server properties as the ``apache/kafka`` image's environment variables."""
    return {_env_name(prop): value for prop, value in settings.items()}
