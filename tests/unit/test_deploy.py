"""The deployment files agree with the code: commands exist, variables are real settings.

No container engine runs here, so the files are checked as data: a typo in a command or a
``BUS_*`` variable that no setting reads would otherwise only show in production.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from bus.cli import app
from bus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_bus_command_in_compose_exists() -> None:
    cli = get_command(app)
    services = compose()["services"]
    bus_services = {n: s for n, s in services.items() if s.get("build")}
    assert {"topics", "worker", "gateway"} <= set(bus_services)
    for name, service in bus_services.items():
        words = service["command"]
        group = cli
        for word in words:
            if not hasattr(group, "commands"):  # reached a command: the rest are its options
                assert word.startswith("-"), f"{name}: unexpected argument {word!r}"
                break
            assert word in group.commands, f"{name}: `bus {' '.join(words)}` has no {word!r}"  # type: ignore[attr-defined]
            group = group.commands[word]  # type: ignore[attr-defined]


def test_every_bus_variable_in_compose_is_a_setting() -> None:
    fields = {f"BUS_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith("BUS_")} - fields
        assert not unknown, f"{name}: {unknown} are not settings"


def test_compose_broker_setting_parses_to_three_brokers() -> None:
    env = compose()["services"]["worker"]["environment"]
    s = Settings(broker=env["BUS_BROKER"])
    assert s.bootstrap_servers == ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]
    assert int(env["BUS_REPLICATION_FACTOR"]) == 3


def test_kafka_is_replicated_three_ways_with_two_in_sync() -> None:
    services = compose()["services"]
    brokers = [s for n, s in services.items() if n.startswith("kafka-")]
    assert len(brokers) == 3
    for b in brokers:
        assert b["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert b["environment"]["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3
