"""Kafka principals are departments: their users and ACLs, generated from the directory.

On a Kafka with SASL and ACLs every department system that speaks Kafka logs in as its code
(``User:ks.tax``) and may do three things: write its own ingress topic
(``<prefix>.ingress.<code>``, where the ingest agent refuses any ``source`` but the
department's own), read its own inbox (``<prefix>.inbox.<code>``), and use consumer groups
named ``<code>.…`` for that. Nothing else: not the shared ingress, not another department's
topics. :func:`acl_commands` prints what makes it so, as the ``kafka-configs.sh`` and
``kafka-acls.sh`` lines an operator runs (``bus topics acls``), so the ACLs follow the
directory instead of a hand-kept list. The bus's own principals are not departments:
:func:`worker_acl_commands` prints the worker's (``bus topics acls --worker``), made from the
same settings as the names it uses; docs/operations.md lists the others.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from bus.domain.departments import Directory
from bus.errors import ConfigurationError
from bus.settings import Settings
from bus.streaming.topics import department_ingress_topic, inbox_topic, publishing_departments


def principal(department: str) -> str:
    """The Kafka principal of a department: ``User:<code>``."""
    return f"User:{department}"


def group_prefix(department: str) -> str:
    """The consumer groups a department may use: every name starting with ``<code>.``."""
    return f"{department}."


def _check_nesting(codes: Iterable[str]) -> None:
    """Refuse codes nested in another's: ``ks.a``'s groups would include ``ks.a.b``'s."""
    known = set(codes)
    for inner in sorted(known):
        parts = inner.split(".")
        outer = next((o for i in range(1, len(parts)) if (o := ".".join(parts[:i])) in known), "")
        if outer:
            raise ConfigurationError(
                f"department {inner} is inside {outer}'s consumer-group prefix "
                f"{group_prefix(outer)!r}: ACLs by prefix would let {outer} use {inner}'s groups",
                reason="config.acls",
            )


def acl_commands(
    settings: Settings,
    directory: Directory,
    *,
    departments: Iterable[str] = (),
    bootstrap: str | None = None,
    command_config: str = "admin.properties",
    secrets: str = "secrets",
) -> list[str]:
    """Shell lines that make each department a Kafka principal with its ACLs.

    ``departments``: only these codes (a department just added); all publishing ones by
    default (the reserved ``ks.bus`` never publishes through ingress and gets none). A
    user's password is read from ``<secrets>/<code>`` when the line runs, so none is printed.
    ``bootstrap`` defaults to ``BUS_BROKER``'s servers.
    """
    every = publishing_departments(directory)
    _check_nesting(directory.departments)
    chosen = list(departments) or list(every)
    unknown = [c for c in chosen if c not in every]
    if unknown:
        why = "is reserved" if unknown[0] in directory.departments else "is not in the directory"
        raise ConfigurationError(f"department {unknown[0]} {why}", reason="config.acls")
    servers = bootstrap or ",".join(settings.bootstrap_servers)
    admin = (
        f"--bootstrap-server {shlex.quote(servers)} --command-config {shlex.quote(command_config)}"
    )
    acl = f"kafka-acls.sh {admin} --add --allow-principal"
    scram = settings.sasl_mechanism.startswith("SCRAM")
    lines = [
        f"# Kafka principals of {len(chosen)} department(s), from the department directory "
        "(bus topics acls).",
        f"# Run with an admin's --command-config; passwords are read from {secrets}/<code>.",
    ]
    if not scram:
        lines.append(
            f"# {settings.sasl_mechanism} users are not kept in Kafka: add them to the "
            "brokers' JAAS configuration."
        )
    for code in chosen:
        user = principal(code)
        lines.append(f"# {code}: {directory.departments[code].name}")
        if scram:
            password = f"$(cat {shlex.quote(f'{secrets}/{code}')})"
            lines.append(
                f"kafka-configs.sh {admin} --alter --entity-type users --entity-name {code} "
                f'--add-config "{settings.sasl_mechanism}=[password={password}]"'
            )
        lines += [
            f"{acl} {user} --operation Write --operation Describe "
            f"--topic {department_ingress_topic(settings, code)}",
            f"{acl} {user} --operation Read --operation Describe "
            f"--topic {inbox_topic(settings, code)}",
            f"{acl} {user} --operation Read --group {group_prefix(code)} "
            "--resource-pattern-type prefixed",
        ]
    return lines


def worker_acl_commands(
    settings: Settings,
    user: str = "bus-worker",
    *,
    bootstrap: str | None = None,
    command_config: str = "admin.properties",
    secrets: str = "secrets",
) -> list[str]:
    """Shell lines that make ``user`` a principal able to run ``bus worker``, and no more.

    Derived from the names the worker uses: the bus's topics (``<topic_prefix>.``), Faust's
    own (``<app_id>-``: the case table's changelog, the assignor's topic, created by the
    worker), the consumer groups (``<app_id>``, ``<app_id>.<agent>``) and the transactional ids
    (``<app_id>.<agent>.<partition>``). Not topic creation for the bus's topics: that is
    ``bus topics create``, an admin's.
    """
    servers = bootstrap or ",".join(settings.bootstrap_servers)
    admin = (
        f"--bootstrap-server {shlex.quote(servers)} --command-config {shlex.quote(command_config)}"
    )
    grant = f"kafka-acls.sh {admin} --add --allow-principal {principal(user)}"
    prefixed = "--resource-pattern-type prefixed"
    lines = [f"# The worker's principal {principal(user)} (bus topics acls --worker)."]
    if settings.sasl_mechanism.startswith("SCRAM"):
        password = f"$(cat {shlex.quote(f'{secrets}/{user}')})"
        lines.append(
            f"kafka-configs.sh {admin} --alter --entity-type users --entity-name {user} "
            f'--add-config "{settings.sasl_mechanism}=[password={password}]"'
        )
    app = shlex.quote(settings.app_id)
    lines += [
        f"{grant} --operation Read --operation Write --operation Describe "
        f"--topic {shlex.quote(settings.topic_prefix + '.')} {prefixed}",
        f"{grant} --operation Create --operation Read --operation Write --operation Describe "
        f"--topic {shlex.quote(settings.app_id + '-')} {prefixed}",
        f"{grant} --operation Read --group {app} {prefixed}",
        f"{grant} --operation Write --operation Describe "
        f"--transactional-id {shlex.quote(settings.app_id + '.')} {prefixed}",
    ]
    return lines


__all__ = ["acl_commands", "group_prefix", "principal", "worker_acl_commands"]
