"""Whether a Kafka broker answers: the check the CLI, the gateway and the tests share.

A TCP accept is not an answer: a broker can listen before it serves requests, and an advertised
address clients cannot reach shows up only in the metadata. So the check asks for metadata, as
every Kafka client does first.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from typing import Any

from bus.errors import BrokerError, ConfigurationError

#: How long one reachability attempt may take; short, so a broker that comes up is seen quickly.
PROBE_TIMEOUT = 2.0
#: Pause between attempts while a broker is starting.
POLL_INTERVAL = 0.1


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """Split ``host:port[,host:port...]``; also BUS_BROKER's ``kafka://a:9092;b:9092`` form."""
    hosts: list[tuple[str, int]] = []
    for raw in re.split(r"[,;]", bootstrap):
        item = raw.strip()
        for scheme in ("kafka://", "tcp://"):
            if item.startswith(scheme):
                item = item[len(scheme) :]
        item = item.rstrip("/")
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit():
            raise ConfigurationError(
                f"broker address must be host:port, got {raw.strip()!r} in {bootstrap!r}",
                reason="config.broker_address",
            )
        hosts.append((host, int(port_text)))
    if not hosts:
        raise ConfigurationError("empty broker address", reason="config.broker_address")
    return hosts


async def metadata_once(
    host: str, port: int, seconds: float, security: Mapping[str, Any] | None = None
) -> list[tuple[str, int]]:
    """Connect, negotiate API versions and ask for cluster metadata, as every Kafka client does.

    Returns the brokers the cluster advertises as ``(host, port)``. A TCP accept alone is not
    enough: a broker can listen before it serves requests, and an advertised address that clients
    cannot reach only shows up in the metadata. ``security`` holds aiokafka's connection
    options (``Settings.kafka_security()``): a SASL listener answers nothing before login.
    """
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    request_timeout_ms = max(1, int(seconds * 1000))
    async with asyncio.timeout(seconds):
        conn = await create_conn(
            host, port, client_id="bus-broker-probe", request_timeout_ms=request_timeout_ms,
            **(security or {}),
        )  # fmt: skip
    try:
        async with asyncio.timeout(seconds):
            response = await conn.send(MetadataRequest([]))
    finally:
        # close() hands back a future that resolves once the transport is really closed;
        # waiting for it avoids "unclosed transport" ResourceWarnings in the caller's loop.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await conn.close()
    brokers = [(str(b[1]), int(b[2])) for b in response.brokers]
    if not brokers:  # a broker still starting up may say so; the caller tries again
        raise ConnectionError("answered Metadata with an empty broker list")
    return brokers


async def probe(
    bootstrap: str, per_attempt: float, security: Mapping[str, Any] | None = None
) -> list[tuple[str, int]]:
    """One attempt over every bootstrap address; the first that answers wins."""
    errors: list[str] = []
    for host, port in parse_bootstrap(bootstrap):
        try:
            return await metadata_once(host, port, per_attempt, security)
        except Exception as err:  # OSError, TimeoutError, aiokafka's KafkaError family
            errors.append(f"{host}:{port}: {type(err).__name__}: {err}".rstrip(": "))
    raise BrokerError(
        "; ".join(errors) or f"no answer from {bootstrap}", reason="broker.unreachable"
    )


async def wait_for_broker(
    bootstrap: str,
    timeout: float,  # noqa: ASYNC109
    security: Mapping[str, Any] | None = None,
) -> None:
    """Wait until a broker at ``bootstrap`` answers a Kafka Metadata request.

    ``bootstrap`` is ``host:port``, several separated by ``,`` or ``;``, with or without
    ``kafka://`` (so ``Settings.broker`` can be passed as it is); the first that answers wins.
    Retries until ``timeout`` seconds have passed, then raises :class:`BrokerError` naming the last
    failure. Used by the CLI before starting workers and by the test fixtures, so that a broker
    that is down is reported once, clearly, instead of as a client's endless reconnect loop.
    (``timeout`` is a plain argument rather than ``asyncio.timeout()`` around the call because the
    last error is worth reporting, and a cancelled attempt would lose it.) ``security``:
    aiokafka's connection options for a SASL or TLS listener (``Settings.kafka_security()``).
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            await probe(bootstrap, max(0.05, min(PROBE_TIMEOUT, remaining)), security)
            return
        except BrokerError as err:
            last = err.message
        if time.monotonic() + POLL_INTERVAL >= deadline:
            raise BrokerError(
                f"broker {bootstrap} did not answer a Metadata request within {timeout:g} s "
                f"(last error: {last})",
                reason="broker.unreachable",
            )
        await asyncio.sleep(POLL_INTERVAL)


__all__ = ["POLL_INTERVAL", "PROBE_TIMEOUT", "parse_bootstrap", "probe", "wait_for_broker"]
