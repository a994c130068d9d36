"""``bus topics acls``: the departments' Kafka users and ACLs follow the directory.

Every publishing department, and nothing more: its SCRAM user, Write on its own ingress,
Read on its own inbox, its consumer groups by prefix; never a topic of another department or
the shared ingress; no principal for the bus's reserved identity. (That Kafka enforces these
lines is tests/integration/test_kafka_sasl.py.)
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from bus.domain.departments import Directory
from bus.errors import ConfigurationError
from bus.settings import Settings
from bus.streaming.acls import acl_commands, worker_acl_commands
from bus.streaming.topics import department_ingress_topic, full_catalogue, inbox_topic

SETTINGS = Settings(broker="kafka://k1:9092;k2:9092", topic_prefix="city")
DIRECTORY = Directory.load()


def grants(lines: list[str]) -> dict[str, set[tuple[str, ...]]]:
    """What each principal gets: ``(kind, name, pattern, operations...)`` per ACL line."""
    out: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for line in lines:
        if not line.startswith("kafka-acls.sh "):
            continue
        args = shlex.split(line)
        assert args[1:5] == ["--bootstrap-server", "k1:9092,k2:9092", "--command-config",
                             "admin.properties"]  # fmt: skip
        assert "--add" in args
        opts: dict[str, list[str]] = defaultdict(list)
        for flag, value in itertools.pairwise(args[5:]):
            if flag.startswith("--") and not value.startswith("--"):
                opts[flag].append(value)
        kind = "topic" if "--topic" in opts else "group"
        pattern = opts["--resource-pattern-type"] or ["literal"]
        (user,) = opts["--allow-principal"]
        (name,) = opts[f"--{kind}"]
        out[user].add((kind, name, pattern[0], *sorted(opts["--operation"])))
    return out


def test_every_publishing_department_gets_its_own_topics_and_nothing_else() -> None:
    lines = acl_commands(SETTINGS, DIRECTORY)
    got = grants(lines)
    codes = [c for c in DIRECTORY.departments if c != "ks.bus"]
    assert set(got) == {f"User:{c}" for c in codes}  # the bus's reserved identity has none
    for code in codes:
        assert got[f"User:{code}"] == {
            ("topic", f"city.ingress.{code}", "literal", "Describe", "Write"),
            ("topic", f"city.inbox.{code}", "literal", "Describe", "Read"),
            ("group", f"{code}.", "prefixed", "Read"),
        }
    assert not any("city.ingress " in line or line.endswith("city.ingress") for line in lines)


def test_the_topics_named_are_in_the_catalogue() -> None:
    catalogue = {SETTINGS.topic(spec.name) for spec in full_catalogue(SETTINGS)}
    for code in DIRECTORY.departments:
        if code != "ks.bus":
            assert department_ingress_topic(SETTINGS, code) in catalogue
            assert inbox_topic(SETTINGS, code) in catalogue
    assert department_ingress_topic(SETTINGS, "ks.bus") not in catalogue


def test_each_department_gets_a_scram_user_whose_password_is_read_not_printed() -> None:
    lines = acl_commands(SETTINGS, DIRECTORY, secrets="/etc/bus/kafka users")
    users = [shlex.split(line) for line in lines if line.startswith("kafka-configs.sh")]
    assert [u[u.index("--entity-name") + 1] for u in users] == [
        c for c in DIRECTORY.departments if c != "ks.bus"
    ]
    huaqiao = next(line for line in lines if "--entity-name ks.enforcement.huaqiao " in line)
    password = "$(cat '/etc/bus/kafka users/ks.enforcement.huaqiao')"
    assert huaqiao.endswith(f'--add-config "SCRAM-SHA-512=[password={password}]"')


def test_the_lines_are_a_shell_script(tmp_path: Path) -> None:
    """Run as printed, with the tools stubbed: the shell reads each password file."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "ks.tax").write_text("s3cret")
    for tool in ("kafka-acls.sh", "kafka-configs.sh"):
        (tmp_path / tool).write_text('#!/bin/sh\necho "$(basename "$0") $*"\n')
        (tmp_path / tool).chmod(0o755)
    script = "\n".join(acl_commands(SETTINGS, DIRECTORY, departments=["ks.tax"],
                                    secrets=str(secrets)))  # fmt: skip
    ran = subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"})  # fmt: skip
    assert "--add-config SCRAM-SHA-512=[password=s3cret]" in ran.stdout
    assert ran.stdout.count("kafka-acls.sh") == 3


def test_one_department_and_refusals() -> None:
    one = acl_commands(SETTINGS, DIRECTORY, departments=["ks.tax"], bootstrap="b:1")
    assert set(grants([line.replace("b:1", "k1:9092,k2:9092") for line in one])) == {"User:ks.tax"}
    with pytest.raises(ConfigurationError, match=r"ks\.bus is reserved"):
        acl_commands(SETTINGS, DIRECTORY, departments=["ks.bus"])
    with pytest.raises(ConfigurationError, match="not in the directory"):
        acl_commands(SETTINGS, DIRECTORY, departments=["ks.nobody"])


def test_plain_users_are_not_kafka_configs() -> None:
    plain = Settings(sasl_mechanism="PLAIN")
    lines = acl_commands(plain, DIRECTORY, departments=["ks.tax"])
    assert not [line for line in lines if line.startswith("kafka-configs.sh")]
    assert any("JAAS" in line for line in lines)


def test_a_code_nested_in_another_is_refused(tmp_path: Path) -> None:
    """``ks.a.`` by prefix would include ``ks.a.b``'s groups."""
    path = tmp_path / "departments.yaml"
    path.write_text(
        "departments:\n"
        "  - {code: ks.amr, name: A, publishes: ['enterprise.*']}\n"
        "  - {code: ks.amr-x, name: X, publishes: ['enterprise.*']}\n"
        "  - {code: ks.amr.kunshan, name: B, publishes: ['enterprise.*']}\n"
    )
    with pytest.raises(ConfigurationError, match=r"ks\.amr\.kunshan is inside ks\.amr's"):
        acl_commands(SETTINGS, Directory.load(path))


def test_bus_topics_acls_prints_the_lines() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "bus.cli", "topics", "acls", "--department", "ks.tax",
         "--bootstrap-server", "k1:9092,k2:9092"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "BUS_TOPIC_PREFIX": "city"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == acl_commands(SETTINGS, DIRECTORY, departments=["ks.tax"])


def test_the_workers_principal_gets_the_names_the_worker_uses_and_no_more() -> None:
    s = Settings(broker="kafka://k1:9092;k2:9092", topic_prefix="city", app_id="city-bus",
                 sasl_mechanism="SCRAM-SHA-512")  # fmt: skip
    lines = worker_acl_commands(s, "bus-worker", secrets="/run/secrets")
    acls = [shlex.split(x) for x in lines if x.startswith("kafka-acls.sh ")]
    resources = {(a[a.index("--operation") - 1], tuple(a[a.index("--operation") :])) for a in acls}
    assert all("User:bus-worker" in a for a in acls)
    assert all(a[-2:] == ["--resource-pattern-type", "prefixed"] for a in acls)
    named = {(a[-4], a[-3]) for a in acls}
    assert named == {("--topic", "city."), ("--topic", "city-bus-"), ("--group", "city-bus"),
                     ("--transactional-id", "city-bus.")}  # fmt: skip
    assert len(resources) == 4
    create = [a for a in acls if "Create" in a]
    assert [a[-3] for a in create] == ["city-bus-"]  # Faust's own topics; the bus's are an admin's
    assert "$(cat /run/secrets/bus-worker)" in lines[1]
