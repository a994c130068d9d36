"""One settings object for every process, read from ``BUS_*`` environment variables.

Frozen, so nothing changes under a running worker; secrets are ``SecretStr`` and
``Settings.dump()`` masks them, so a settings dump is safe to log or paste in an issue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a bus process can be told; each field is ``BUS_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="BUS_", frozen=True, extra="ignore")

    broker: str = Field(
        default="kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers as a Faust URL; ';' separates several brokers",
    )
    app_id: str = Field(default="bus", description="Faust app id: consumer group and state")
    topic_prefix: str = Field(default="bus", pattern=r"^[a-zA-Z0-9._-]+$")
    partitions: int = Field(default=6, ge=1, description="Partitions of every subject-keyed topic")
    replication_factor: int = Field(default=1, ge=1)
    agents: Annotated[list[str], NoDecode] = Field(
        default=["ingest", "correlate", "cases"],
        description="Which agents this worker runs (comma-separated); all by default",
    )
    max_event_bytes: int = Field(default=512 * 1024, ge=1024, description="Larger is rejected")
    batch_size: int = Field(default=500, ge=1, description="Events an agent handles at once")
    batch_wait: float = Field(default=0.05, gt=0, description="Seconds to fill a batch")
    case_batch_wait: float = Field(
        default=0.005,
        gt=0,
        description="Seconds the case engine waits to fill a batch; it adds to every "
        "decision's latency",
    )
    records_decoded: int = Field(
        default=20_000,
        ge=1,
        description="Enterprise records the correlate agent keeps decoded, the most recently "
        "used; the others are held as their changelog bytes (a third of the memory)",
    )
    processing_guarantee: Literal["auto", "exactly_once", "at_least_once"] = Field(
        default="auto",
        description="exactly_once: each batch's outputs, state and offsets in one Kafka "
        "transaction; at_least_once: outputs acknowledged before offsets are committed; "
        "auto: exactly_once where the broker has transactions",
    )
    data_dir: Path = Field(default=Path("var"), description="Worker state (tables) and broker")
    departments_file: Path | None = Field(
        default=None, description="Department directory YAML; the shipped one when unset"
    )
    policy_file: Path | None = Field(
        default=None,
        description="Who may act on whose decisions (YAML); the shipped one when unset",
    )
    subscriptions_file: Path | None = Field(
        default=None, description="Inbox subscriptions YAML; the shipped one when unset"
    )
    connectors_file: Path | None = Field(
        default=None, description="Connectors YAML for `bus connect` (docs/connectors.md)"
    )
    calendar_dir: Path | None = Field(
        default=None, description="Operator holiday files (YYYY.yaml), see docs/calendar-data.md"
    )
    matters_dir: Path | None = Field(
        default=None,
        description="The matters (一件事) the worker runs, one YAML file each, scenarios in "
        "scenarios/; the shipped ones when unset (docs/matters.md)",
    )
    task_check_interval: float = Field(
        default=30.0, gt=0, description="Seconds between checks for overdue tasks"
    )
    clock_skew: float = Field(
        default=0.0,
        description="Seconds added to the clock when judging deadlines: for drills and tests "
        "only; keep 0 in production",
    )
    metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="Prometheus /metrics on web_host; 0: off"
    )
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    log_level: str = "INFO"
    signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) for certificates; unset: <data_dir>/keys/<id>.pem, "
        "made on first start",
    )
    signing_key_id: str = Field(default="ks-bus-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        default=None, description="Unset: SASL_PLAINTEXT when a SASL user is set, else PLAINTEXT"
    )

    # Faust and client tuning; tests shorten the group timeouts (docs/broker.md).
    producer_max_batch_size: int = Field(default=900 * 1024, description="Bytes per record batch")
    producer_linger_ms: int = 5
    recovery_consistency_check: bool = True
    table_store: Literal["memory", "rocksdb"] = Field(
        default="memory",
        description="Where the case engine's table lives: memory, or RocksDB files under "
        "<data_dir>/worker/<app_id> (a restart and a standby read only the changelog's tail)",
    )
    standby_replicas: int = Field(
        default=0,
        ge=0,
        description="Standby copies of the case engine's table kept by other workers (Faust's "
        "table_standby_replicas); with the memory store a standby saves no recovery",
    )
    session_timeout: float = 10.0
    heartbeat_interval: float = 3.0
    rebalance_timeout: float = 60.0

    @field_validator("agents", mode="before")
    @classmethod
    def _agents(cls, value: object) -> object:
        if isinstance(value, str):
            value = [a.strip() for a in value.split(",") if a.strip()]
        known = {"ingest", "correlate", "cases"}
        if isinstance(value, list) and (unknown := set(value) - known):
            raise ValueError(f"unknown agents {sorted(unknown)}; known: {sorted(known)}")
        return value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if "://" not in value:
            value = f"kafka://{value}"
        if not value.startswith("kafka://"):
            raise ValueError("broker must look like kafka://host:port (or host:port)")
        return value

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` strings for plain Kafka clients (admin, producer, consumer)."""
        hosts = (h.strip().removeprefix("kafka://") for h in self.broker.split(";"))
        return [h for h in hosts if h]

    def kafka(self) -> dict[str, Any]:
        """Connection options for every aiokafka client (servers and, when set, SASL)."""
        return {"bootstrap_servers": self.bootstrap_servers, **self.kafka_security()}

    def kafka_security(self) -> dict[str, Any]:
        """How to log in (protocol, SASL, TLS): :meth:`kafka` without the servers.

        Also what a single connection needs (the reachability probe of ``bus status`` and of
        the gateway's health check), which a SASL listener refuses without.
        """
        options: dict[str, Any] = {}
        protocol = self.security_protocol or (
            "SASL_PLAINTEXT" if self.sasl_username else "PLAINTEXT"
        )
        options["security_protocol"] = protocol
        if protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            password = self.sasl_password.get_secret_value() if self.sasl_password else None
            options["sasl_plain_password"] = password
        if protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context()
        return options

    def topic(self, name: str) -> str:
        """The full topic name for a catalogue entry (``<prefix>.<name>``)."""
        return f"{self.topic_prefix}.{name}"

    def dump(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs and ``bus settings``."""
        out = self.model_dump(mode="json")
        for key, value in out.items():
            if isinstance(getattr(self, key), SecretStr) and value is not None:
                out[key] = "**********"
        return out


def invalid_settings(exc: ValueError) -> str:
    """What is wrong with the settings, one line each, named as operators set them.

    ``BUS_PARTITIONS: Input should be greater than or equal to 1`` rather than pydantic's
    field names and links; values are not repeated, as some settings are secrets.
    """
    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"BUS_{field.upper()}" if field else "settings"
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
