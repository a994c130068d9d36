"""Settings: read from ``BUS_*`` variables, broker URLs normalised and checked, secrets masked
in dumps, and frozen so nothing changes under a running worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from bus.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the BUS_* variables it sets itself."""
    for name in list(os.environ):
        if name.upper().startswith("BUS_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.broker == "kafka://127.0.0.1:9092"
    assert s.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.topic_prefix == "bus"
    assert s.max_event_bytes == 512 * 1024
    assert s.departments_file is None
    assert s.sasl_password is None
    assert s.processing_guarantee == "auto"  # exactly once where the broker has transactions


def test_bus_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_BROKER", "kafka://kafka-1.ks.gov:9092")
    monkeypatch.setenv("BUS_APP_ID", "bus-ks")
    monkeypatch.setenv("BUS_TOPIC_PREFIX", "ks.prod")
    monkeypatch.setenv("BUS_PARTITIONS", "12")
    monkeypatch.setenv("BUS_MAX_EVENT_BYTES", "2048")
    monkeypatch.setenv("BUS_BATCH_WAIT", "0.2")
    monkeypatch.setenv("BUS_DEPARTMENTS_FILE", "/etc/bus/departments.yaml")
    monkeypatch.setenv("BUS_RECOVERY_CONSISTENCY_CHECK", "false")
    monkeypatch.setenv("BUS_SASL_USERNAME", "bus")
    monkeypatch.setenv("BUS_SASL_PASSWORD", "s3cret-口令")
    s = Settings()
    assert s.broker == "kafka://kafka-1.ks.gov:9092"
    assert s.app_id == "bus-ks"
    assert s.topic("ingress") == "ks.prod.ingress"
    assert s.partitions == 12
    assert s.max_event_bytes == 2048
    assert s.batch_wait == 0.2
    assert s.departments_file == Path("/etc/bus/departments.yaml")
    assert s.recovery_consistency_check is False
    assert s.sasl_username == "bus"
    assert isinstance(s.sasl_password, SecretStr)
    assert s.sasl_password.get_secret_value() == "s3cret-口令"


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTITIONS", "99")
    monkeypatch.setenv("BROKER", "kafka://elsewhere:1")
    s = Settings()
    assert s.partitions == 6
    assert s.broker == "kafka://127.0.0.1:9092"


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_PARTITIONS", "12")
    assert Settings(partitions=3).partitions == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUS_PARTITIONS", "0"),
        ("BUS_PARTITIONS", "many"),
        ("BUS_MAX_EVENT_BYTES", "512"),
        ("BUS_TOPIC_PREFIX", "bus/prod"),
        ("BUS_WEB_PORT", "70000"),
        ("BUS_BATCH_WAIT", "0"),
        ("BUS_PROCESSING_GUARANTEE", "exactly-once"),
    ],
)
def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert [e["loc"] for e in info.value.errors()] == [(name.removeprefix("BUS_").lower(),)]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:9092", "kafka://localhost:9092"),
        ("10.0.3.7:9093", "kafka://10.0.3.7:9093"),
        ("kafka://10.0.3.7:9093", "kafka://10.0.3.7:9093"),
        ("k1:9092;k2:9092", "kafka://k1:9092;k2:9092"),
    ],
)
def test_broker_url_is_normalised(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("BUS_BROKER", given)
    assert Settings().broker == expected
    assert Settings(broker=given).broker == expected


@pytest.mark.parametrize(
    "broker", ["http://localhost:9092", "confluent://k1:9092", "memory://", "redis://r:6379"]
)
def test_broker_with_another_scheme_is_rejected(broker: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(broker=broker)
    assert info.value.errors()[0]["loc"] == ("broker",)
    assert "broker must look like kafka://host:port" in str(info.value)


@pytest.mark.parametrize(
    ("broker", "servers"),
    [
        ("kafka://k1:9092", ["k1:9092"]),
        ("kafka://k1:9092;k2:9092;k3:9092", ["k1:9092", "k2:9092", "k3:9092"]),
        ("k1:9092; k2:9092 ;", ["k1:9092", "k2:9092"]),
    ],
)
def test_bootstrap_servers_split_on_semicolons(broker: str, servers: list[str]) -> None:
    assert Settings(broker=broker).bootstrap_servers == servers


def test_dump_masks_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_SASL_USERNAME", "bus")
    monkeypatch.setenv("BUS_SASL_PASSWORD", "s3cret-口令")
    dumped = Settings().dump()
    assert dumped["sasl_password"] == "**********"
    assert dumped["sasl_username"] == "bus"
    text = json.dumps(dumped, ensure_ascii=False)  # the dump is JSON-ready, for logs
    assert "s3cret" not in text
    assert dumped["broker"] == "kafka://127.0.0.1:9092"
    assert dumped["data_dir"] == "var"


def test_dump_without_a_password() -> None:
    assert Settings().dump()["sasl_password"] is None


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.partitions = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.broker = "kafka://elsewhere:9092"  # type: ignore[misc]
    assert s.partitions == 6
    assert s.broker == "kafka://127.0.0.1:9092"


def test_kafka_options_carry_sasl_only_when_a_user_is_set() -> None:
    plain = Settings(broker="k1:9092;k2:9092").kafka()
    assert plain == {"bootstrap_servers": ["k1:9092", "k2:9092"], "security_protocol": "PLAINTEXT"}
    sasl = Settings(broker="k1:9092", sasl_username="ks.finance", sasl_password="s3cret").kafka()
    assert sasl["security_protocol"] == "SASL_PLAINTEXT"
    assert sasl["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (sasl["sasl_plain_username"], sasl["sasl_plain_password"]) == ("ks.finance", "s3cret")
    tls = Settings(sasl_username="u", sasl_password="p", security_protocol="SASL_SSL").kafka()
    assert tls["ssl_context"] is not None


def test_agents_are_chosen_from_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_AGENTS", "correlate")
    assert Settings().agents == ["correlate"]
    monkeypatch.setenv("BUS_AGENTS", "ingest, translate")
    with pytest.raises(ValueError, match="translate"):
        Settings()
