"""The webhook sink against a real HTTP server started by each test, and a real broker.

``Endpoint`` is an aiohttp server on a loopback port standing in for a department's system:
it records every request, answers 200 unless told to answer something else (a script of
statuses, or one status for every request), and can be taken down (connection refused) and
brought back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bus.dev.brokers import free_port
from bus.dev.processes import settings_env, terminate
from bus.domain.certificates import Signer
from bus.edge.publish import replay_deadletters
from bus.errors import BusError, ConfigurationError
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.client import BusClient
from bus.streaming.codec import EventCodec
from bus.streaming.topics import inbox_topic
from connectors import registry
from connectors.base import Backoff, ConnectorMetrics, Sink
from connectors.contract import (
    FAST,
    SinkContract,
    TopicWatcher,
    metric,
    sample_events,
    wait_until,
)
from connectors.webhook import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSink,
    public_key_from_text,
    public_key_text,
    secret_bytes,
    signed_bytes,
    standard_secret,
    verify_webhook,
    webhook_id,
)
from tests.connectors.test_base import all_committed, members

DEPARTMENT = "ks.enforcement.huaqiao"
DOC = Path(__file__).resolve().parents[2] / "docs" / "connectors-webhook.md"
codec = EventCodec()


@dataclass
class Hit:
    """One request the endpoint received, and what it answered."""

    status: int
    headers: dict[str, str]
    body: bytes
    at: float

    def deliveries(self) -> list[dict[str, Any]]:
        deliveries: list[dict[str, Any]] = json.loads(self.body)["deliveries"]
        return deliveries

    def ids(self) -> list[str]:
        return [d["headers"]["event_id"] for d in self.deliveries()]

    def header(self, name: str) -> str:
        return {k.lower(): v for k, v in self.headers.items()}[name.lower()]

    def standard_only(self) -> dict[str, str]:
        """The headers without the deprecated ones: what a bus from 0.3.0 sends."""
        return {k: v for k, v in self.headers.items() if not k.lower().startswith("bus-")}

    def legacy_only(self) -> dict[str, str]:
        """The headers without the standard ones: what a bus before 0.2 sent."""
        return {k: v for k, v in self.headers.items() if not k.lower().startswith("webhook-")}


def spec_verify_v1a(headers: dict[str, str], body: bytes, key: Ed25519PublicKey) -> None:
    """Standard Webhooks' v1a check written from the specification alone."""
    h = {k.lower(): v for k, v in headers.items()}
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + body
    sigs = [s.split(",", 1)[1] for s in h["webhook-signature"].split(" ") if s.startswith("v1a,")]
    assert sigs, h["webhook-signature"]
    key.verify(base64.b64decode(sigs[0]), signed)


@dataclass
class Endpoint:
    """A department's HTTP endpoint: records requests, answers as told."""

    port: int = field(default_factory=free_port)
    status: int = 200
    """The answer when ``script`` is empty."""
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Answers for the next requests, in order (status, headers)."""
    hits: list[Hit] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bus-inbox"

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/bus-inbox", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner

    async def down(self) -> None:
        """Close the port (and every open connection): requests are refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, headers = self.script.pop(0) if self.script else (self.status, {})
        self.hits.append(Hit(status, dict(request.headers), body, time.monotonic()))
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    def delivered(self) -> list[dict[str, Any]]:
        """Every delivery of every request answered 2xx, in arrival order."""
        return [d for h in self.hits if 200 <= h.status < 300 for d in h.deliveries()]

    def ids(self) -> list[str]:
        return [d["headers"]["event_id"] for d in self.delivered()]


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    e = Endpoint()
    await e.up()
    try:
        yield e
    finally:
        await e.down()


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("ks-bus-test")


def make_sink(settings: Settings, endpoint: Endpoint, signer: Signer, **kwargs: Any) -> WebhookSink:
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("metrics", ConnectorMetrics())
    kwargs.setdefault("name", "huaqiao-webhook")
    kwargs.setdefault("url", endpoint.url)
    return WebhookSink(settings, department=DEPARTMENT, signer=signer, **kwargs)


ROUTE = "huaqiao-town-penalties"


async def put(settings: Settings, events: list[Envelope]) -> list[int]:
    """Put events on the department's inbox as the route agent does; their offsets."""
    topic = inbox_topic(settings, DEPARTMENT)
    async with BusClient(settings, codec) as client:
        receipts = [
            await client.send_raw(topic, e.subject.encode(), codec.encode(e),
                                  [*e.kafka_headers(), ("bus.route", ROUTE.encode())])
            for e in events
        ]  # fmt: skip
    return [r.offset for r in receipts]


@contextlib.asynccontextmanager
async def serving(sink: Sink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sink.serve())
    try:
        yield task
    finally:
        sink.stop()
        await asyncio.wait_for(task, 10)


async def until_delivered(endpoint: Endpoint, n: int, task: asyncio.Task[None]) -> None:
    def enough() -> bool:
        if task.done():
            task.result()  # a crashed sink: its error, not a timeout
        return len(endpoint.delivered()) >= n

    await wait_until(enough, 20, f"{n} deliveries")


class TestWebhookSinkContract(SinkContract):
    """The sink contract, with the endpoint answering 503 while broken."""

    department = DEPARTMENT
    deadletter_reason = "webhook.http_503"

    @pytest.fixture(autouse=True)
    def _endpoint(self) -> None:
        self.endpoint = Endpoint()
        self.signer = Signer.generate("ks-bus-test")

    def make_connector(self, settings: Settings, **kwargs: Any) -> WebhookSink:
        kwargs.setdefault("name", "contract-webhook")
        return WebhookSink(
            settings, department=self.department, url=self.endpoint.url, signer=self.signer,
            **kwargs,
        )  # fmt: skip

    async def setup_outside(self) -> None:
        await self.endpoint.up()

    async def teardown_outside(self) -> None:
        await self.endpoint.down()

    async def received(self) -> list[str]:
        return self.endpoint.ids()

    async def break_outside(self) -> None:
        self.endpoint.status = 503

    async def heal_outside(self) -> None:
        self.endpoint.status = 200


@pytest.mark.integration
async def test_deliveries_arrive_in_inbox_order_signed_and_verifiable(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    events = sample_events(5)
    offsets = await put(settings, events)
    sink = make_sink(settings, endpoint, signer, batch_size=2)
    async with serving(sink) as task:
        await until_delivered(endpoint, 5, task)
    delivered = endpoint.delivered()
    assert [d["cursor"] for d in delivered] == offsets
    as_read = [codec.decode(codec.encode(e)) for e in events]  # Avro gives amounts their scale
    assert [d["event"] for d in delivered] == [json.loads(codec.to_json(e)) for e in as_read]
    assert [codec.from_json(d["event"]) for d in delivered] == events
    assert delivered[0]["headers"]["event_type"] == "penalty.imposed"
    assert all(len(h.deliveries()) <= 2 for h in endpoint.hits)
    keys = {signer.key_id: signer.public_key}
    whpk = public_key_text(signer.public_key)
    for hit in endpoint.hits:
        assert hit.header("webhook-signature").startswith("v1a,")
        spec_verify_v1a(hit.headers, hit.body, public_key_from_text(whpk))
        batch = verify_webhook(hit.standard_only(), hit.body, keys=keys, department=DEPARTMENT)
        assert batch["department"] == DEPARTMENT
        # The deprecated headers still verify on their own, until 0.3.0.
        assert hit.header(KEY_ID_HEADER) == signer.key_id
        verify_webhook(hit.legacy_only(), hit.body, keys=keys, department=DEPARTMENT)
    assert [h.header("webhook-id") for h in endpoint.hits] == [
        webhook_id(h.ids(), endpoint.url) for h in endpoint.hits
    ]
    assert len({h.header("webhook-id") for h in endpoint.hits}) == len(endpoint.hits)

    hit = endpoint.hits[0]
    sent_at = int(hit.header("webhook-timestamp"))
    tampered = hit.body.replace(b'"cursor":', b'"cursor":1', 1)
    assert tampered != hit.body
    with pytest.raises(InvalidSignature):
        spec_verify_v1a(hit.headers, tampered, signer.public_key)
    stranger = {"other": Signer.generate("other").public_key}
    signatures = ("webhook-signature", "bus-signature")
    unsigned = {k: v for k, v in hit.headers.items() if k.lower() not in signatures}
    refusals: list[tuple[bytes, dict[str, Any], str]] = [
        (tampered, {}, "webhook.bad_signature"),
        (hit.body, {"now": sent_at + 301}, "webhook.stale"),
        (hit.body, {"department": "ks.tax"}, "webhook.wrong_department"),
    ]
    for headers in (hit.headers, hit.standard_only(), hit.legacy_only()):
        for body, extra, reason in refusals:
            with pytest.raises(BusError) as caught:
                verify_webhook(headers, body, keys=keys, **extra)
            assert caught.value.reason == reason, headers
    with pytest.raises(BusError) as caught:
        verify_webhook(unsigned, hit.body, keys=keys)
    assert caught.value.reason == "webhook.unsigned"
    # An untrusted key: no key matches (standard), or the named id is unknown (deprecated).
    with pytest.raises(BusError, match="none of the trusted keys") as caught:
        verify_webhook(hit.standard_only(), hit.body, keys=stranger)
    assert caught.value.reason == "webhook.bad_signature"
    with pytest.raises(BusError) as caught:
        verify_webhook(hit.legacy_only(), hit.body, keys=stranger)
    assert caught.value.reason == "webhook.unknown_key"
    # Another key of the same id (a forger who knows the id) does not pass either.
    forged = {signer.key_id: Signer.generate(signer.key_id).public_key}
    for headers in (hit.standard_only(), hit.legacy_only()):
        with pytest.raises(BusError, match="match"):
            verify_webhook(headers, hit.body, keys=forged)


@pytest.mark.integration
async def test_a_department_verifies_deliveries_with_the_standardwebhooks_library_alone(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    """HMAC deliveries from the sink on Kafka; the receiver has only the library and a secret."""
    secret = standard_secret(os.urandom(32))
    events = sample_events(2)
    await put(settings, events)
    endpoint.script = [(503, {}), (503, {})]
    sink = make_sink(settings, endpoint, signer, secret=secret,
                     backoff=Backoff(initial=0.6, maximum=0.6, attempts=4, jitter=0))  # fmt: skip
    async with serving(sink) as task:
        await until_delivered(endpoint, 2, task)
    assert [h.status for h in endpoint.hits] == [503, 503, 200, 200]
    receiver = Webhook(secret)
    for hit in endpoint.hits:
        assert receiver.verify(hit.body, hit.headers) == json.loads(hit.body)
    first, retry, last, other = endpoint.hits
    # Each try is signed afresh, at its own time, for one delivery: one webhook-id.
    assert first.ids() == retry.ids() == last.ids() == [str(events[0].event_id)]
    assert first.header("webhook-id") == retry.header("webhook-id") == last.header("webhook-id")
    assert first.header("webhook-timestamp") != last.header("webhook-timestamp")
    assert first.header("webhook-signature") != last.header("webhook-signature")
    assert other.header("webhook-id") != first.header("webhook-id")
    assert other.header("webhook-id") == webhook_id([str(events[1].event_id)], endpoint.url)

    tampered = other.body.replace(b'"cursor":', b'"cursor":1', 1)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        receiver.verify(tampered, other.headers)
    sent_at = int(other.header("webhook-timestamp"))
    stale = {**other.standard_only(), "webhook-timestamp": str(sent_at - 301)}
    with pytest.raises(WebhookVerificationError, match="too old"):
        receiver.verify(other.body, stale)
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_secret(os.urandom(32))).verify(other.body, other.headers)
    # verify_webhook agrees, on the standard headers and on the deprecated one alone.
    for headers in (other.standard_only(), other.legacy_only()):
        assert verify_webhook(headers, other.body, secret=secret, department=DEPARTMENT)
        for body, now, reason in [
            (tampered, None, "webhook.bad_signature"),
            (other.body, sent_at + 301, "webhook.stale"),
        ]:
            with pytest.raises(BusError) as caught:
                verify_webhook(headers, body, secret=secret, now=now)
            assert caught.value.reason == reason


@pytest.mark.integration
async def test_two_500s_then_200_deliver_each_event_once_in_order(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    events = sample_events(3)
    await put(settings, events)
    endpoint.script = [(500, {}), (500, {})]
    sink = make_sink(settings, endpoint, signer, backoff=Backoff(initial=0.02, attempts=5))
    async with serving(sink) as task:
        await until_delivered(endpoint, 3, task)
    expected = [str(e.event_id) for e in events]
    assert endpoint.ids() == expected
    assert [h.status for h in endpoint.hits] == [500, 500, 200, 200, 200]
    assert [h.ids() for h in endpoint.hits[:3]] == [expected[:1]] * 3, "retried another batch"
    assert metric(sink, "bus_connector_retries_total") == 2
    assert metric(sink, "bus_connector_deliveries_total", outcome="delivered") == 3
    assert metric(sink, "bus_connector_deliveries_total", outcome="deadlettered") == 0


@pytest.mark.integration
async def test_429_waits_as_long_as_retry_after_says(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    await put(settings, sample_events(1))
    endpoint.script = [(429, {"Retry-After": "1"})]
    sink = make_sink(settings, endpoint, signer, backoff=Backoff(initial=0.01, attempts=3))
    async with serving(sink) as task:
        await until_delivered(endpoint, 1, task)
    first, second = endpoint.hits
    assert first.status == 429
    assert second.at - first.at >= 0.95, "Retry-After was not honoured"


class Impatient(WebhookSink):
    """A webhook whose group evicts a member that has not polled for 1.5 s."""

    def consumer_options(self) -> dict[str, Any]:
        return {"max_poll_interval_ms": 1500}


@pytest.mark.integration
async def test_a_retry_after_longer_than_the_poll_interval_keeps_the_sink_in_its_group(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    """The sink pauses its inbox and polls while it waits: not evicted, nothing sent twice."""
    events = sample_events(2)
    await put(settings, events)
    endpoint.script = [(503, {"Retry-After": "5"})]
    sink = Impatient(settings, department=DEPARTMENT, url=endpoint.url, signer=signer,
                     name="impatient", backoff=Backoff(initial=0.01, attempts=3))  # fmt: skip
    sink.poll_every = 0.2
    async with serving(sink) as task:
        await wait_until(lambda: endpoint.hits or task.done(), 20, "the first try")
        # Two poll intervals into the wait: an unpolled consumer has left its group by now.
        first_at = endpoint.hits[0].at
        await wait_until(lambda: time.monotonic() - first_at > 3.0, 20, "two intervals")
        assert await members(settings, sink.group) == ("Stable", 1), "the sink left its group"
        await until_delivered(endpoint, 2, task)
        await wait_until(lambda: all_committed(settings, sink.group, sink.topic), 20, "commits")
        # On the agents' runtime: the sink's reads and lag are series like any agent's.
        await wait_until(lambda: sink.metrics.registry.get_sample_value("bus_consumer_lag", {
            "agent": "connector.impatient", "topic": sink.topic, "partition": "0"}) == 0,
            20, "the sink's lag, caught up")  # fmt: skip
    first, second = endpoint.hits[:2]
    assert (first.status, second.status) == (503, 200)
    assert second.at - first.at >= 4.9, "Retry-After was not honoured"  # of 5 s, > 1.5 s
    assert endpoint.ids() == [str(e.event_id) for e in events], "delivered twice or out of order"
    assert metric(sink, "bus_connector_failures_total", reason="connector.commit_refused") == 0
    agent = {"agent": "connector.impatient", "topic": sink.topic}
    assert sink.metrics.registry.get_sample_value("bus_events_in_total", agent) == 2


@pytest.mark.integration
async def test_a_400_is_dead_lettered_at_once_and_the_next_event_delivered(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    refused, fine = sample_events(2)
    offsets = await put(settings, [refused, fine])
    endpoint.script = [(400, {})]
    sink = make_sink(settings, endpoint, signer, backoff=Backoff(initial=0.01, attempts=8),
                     url=endpoint.url + "?token=s3cret")  # fmt: skip
    async with TopicWatcher(settings, settings.topic("deadletter")) as deadletters:
        async with serving(sink) as task:
            await until_delivered(endpoint, 1, task)
        (letter,) = await deadletters.wait_count(1)
    assert [h.status for h in endpoint.hits] == [400, 200], "a 400 was retried"
    assert endpoint.ids() == [str(fine.event_id)]
    assert metric(sink, "bus_connector_retries_total") == 0
    assert letter.headers["bus.reason"] == "webhook.http_400"
    assert "answered 400" in letter.headers["bus.error"]
    assert "token" not in letter.headers["bus.error"], "the URL's query leaked"
    assert letter.headers["bus.stage"] == "connector.huaqiao-webhook"
    assert letter.headers["bus.origin"] == f"{inbox_topic(settings, DEPARTMENT)}/0/{offsets[0]}"
    assert letter.headers["event_id"] == str(refused.event_id)
    assert codec.decode(letter.value or b"") == refused


@pytest.mark.integration
async def test_an_undecodable_record_is_dead_lettered_and_the_rest_delivered(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    (event,) = sample_events(1)
    async with BusClient(settings, codec) as client:
        await client.send_raw(inbox_topic(settings, DEPARTMENT), None, b"\x00\x00\x00\x7fjunk", [])
    await put(settings, [event])
    sink = make_sink(settings, endpoint, signer, batch_size=10)
    async with TopicWatcher(settings, settings.topic("deadletter")) as deadletters:
        async with serving(sink) as task:
            await until_delivered(endpoint, 1, task)
        (letter,) = await deadletters.wait_count(1)
    assert endpoint.ids() == [str(event.event_id)]
    assert letter.headers["bus.reason"] == "schema.decode"
    assert letter.headers["bus.origin"] == f"{inbox_topic(settings, DEPARTMENT)}/0/0"
    assert letter.value == b"\x00\x00\x00\x7fjunk"


@pytest.mark.integration
async def test_an_unreachable_endpoint_dead_letters_then_replay_redelivers(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    await endpoint.down()
    lost = sample_events(2)
    await put(settings, lost)
    sink = make_sink(settings, endpoint, signer, backoff=Backoff(initial=0.01, attempts=2))
    watcher = TopicWatcher(settings, settings.topic("deadletter"))
    async with watcher as deadletters, serving(sink) as task:
        letters = await deadletters.wait_count(2)
        await endpoint.up()  # the department fixed its system
        (later,) = sample_events(1)
        await put(settings, [later])
        await until_delivered(endpoint, 1, task)
        assert endpoint.ids() == [str(later.event_id)], "the sink did not move on"

        report = await replay_deadletters(settings, reason="webhook.")
        await until_delivered(endpoint, 3, task)
        again = await replay_deadletters(settings, reason="webhook.")
        await asyncio.sleep(0.5)  # a second replay would be delivered by now
    origins = sorted(
        (r.headers["bus.origin"] for r in letters), key=lambda o: int(o.split("/")[-1])
    )
    assert {r.headers["bus.reason"] for r in letters} == {"webhook.unreachable"}
    assert report.replayed == origins
    assert again.replayed == []
    assert again.skipped == dict.fromkeys(origins, "already replayed")
    delivered = endpoint.delivered()
    assert [d["headers"]["event_id"] for d in delivered] == [
        str(e.event_id) for e in [later, *lost]
    ]
    assert [d["headers"].get("bus.replay_of") for d in delivered] == [None, *origins]
    # Redelivered with the reason the inbox received them, as the first time.
    assert [d["headers"].get("bus.route") for d in delivered] == [ROUTE] * 3
    assert [codec.from_json(d["event"]) for d in delivered[1:]] == lost


@pytest.mark.integration
async def test_replay_puts_a_sink_dead_letter_back_on_its_origin_topic_once(
    settings: Settings,
) -> None:
    inbox = inbox_topic(settings, DEPARTMENT)
    (event,) = sample_events(1)
    origin = f"{inbox}/0/7"
    letter = [
        *event.kafka_headers(),
        ("bus.reason", b"webhook.http_503"),
        ("bus.stage", b"connector.huaqiao-webhook"),
        ("bus.origin", origin.encode()),
    ]
    garbled = [*letter[:-1], ("bus.origin", b"junk")]
    async with BusClient(settings, codec) as client:
        # The same record twice: a sink that crashed between dead letter and commit.
        for headers in (letter, letter, garbled):
            await client.send_raw(settings.topic("deadletter"), event.subject.encode(),
                                  codec.encode(event), headers)  # fmt: skip
    async with TopicWatcher(settings, inbox) as watcher:
        report = await replay_deadletters(settings, reason="webhook.")
        records = await watcher.settle(0.3)
    assert report.replayed == [origin]
    assert report.skipped == {
        origin: "dead-lettered twice: replayed once",
        "junk": "origin 'junk' names no topic: nowhere to replay to",
    }
    (replayed,) = records
    assert replayed.value == codec.encode(event)
    assert replayed.headers["event_id"] == str(event.event_id)
    assert replayed.headers["bus.replay_of"] == origin
    assert "bus.reason" not in replayed.headers


@pytest.mark.integration
async def test_stop_during_back_off_returns_at_once_and_the_batch_is_sent_on_restart(
    settings: Settings, endpoint: Endpoint, signer: Signer
) -> None:
    endpoint.status = 503
    (event,) = sample_events(1)
    await put(settings, [event])
    slow = Backoff(initial=30.0, maximum=30.0, attempts=None)
    sink = make_sink(settings, endpoint, signer, backoff=slow)
    task = asyncio.create_task(sink.serve())
    await wait_until(lambda: metric(sink, "bus_connector_retries_total") >= 1, 20, "a retry")
    t0 = time.monotonic()
    sink.stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - t0 < 10, "stop() waited out the back-off"  # of 30 s
    assert metric(sink, "bus_connector_deliveries_total", outcome="deadlettered") == 0

    endpoint.status = 200
    again = make_sink(settings, endpoint, signer)
    async with serving(again) as task:
        await until_delivered(endpoint, 1, task)
    assert endpoint.ids() == [str(event.event_id)]


# -- without a broker: signatures, options, the receiver code in the docs ----------------------


def test_hmac_signature_verifies_with_the_secret_only(tmp_path: Path) -> None:
    sink = WebhookSink(
        Settings(data_dir=tmp_path), department=DEPARTMENT, url="http://127.0.0.1:1/",
        secret="s3cret", key_id="huaqiao-2026",
    )  # fmt: skip
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    headers = {SIGNATURE_HEADER: sink.signing.header(body, int(time.time())),
               KEY_ID_HEADER: sink.signing.key_id}  # fmt: skip
    assert verify_webhook(headers, body, secret="s3cret") == json.loads(body)
    with pytest.raises(BusError) as wrong:
        verify_webhook(headers, body, secret="guess")
    assert wrong.value.reason == "webhook.bad_signature"
    with pytest.raises(BusError) as tampered:
        verify_webhook(headers, body.replace(b"[]", b"[{}]"), secret="s3cret")
    assert tampered.value.reason == "webhook.bad_signature"
    # A receiver that expects Ed25519 never accepts an HMAC in its place.
    with pytest.raises(BusError) as scheme:
        verify_webhook(headers, body, keys={"huaqiao-2026": Signer.generate("x").public_key})
    assert scheme.value.reason == "webhook.unsigned"


@pytest.mark.parametrize(
    "stamp",
    ["9" * 5000, "9" * 400, "1" * 13, "²", "١٧٦٧٢٢٥٦٠٠", "-1", "1767225600.5", "0x69"],
)
def test_a_malformed_or_oversized_timestamp_is_webhook_malformed(stamp: str) -> None:
    """int() of 5000 digits raised ValueError, 400 digits OverflowError, '²' ValueError."""
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    legacy = {SIGNATURE_HEADER: f"t={stamp},hmac-sha256=00", KEY_ID_HEADER: "k"}
    standard = {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": "v1,AA=="}
    for headers, named in [(legacy, "t="), (standard, "webhook-timestamp")]:
        with pytest.raises(BusError) as caught:
            verify_webhook(headers, body, secret="s3cret")
        assert caught.value.reason == "webhook.malformed"
        assert named in str(caught.value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-id": "msg.1"}, "webhook.malformed"),  # <id>.<t>.<body> would be ambiguous
        ({"webhook-id": ""}, "webhook.malformed"),
        ({"webhook-timestamp": ""}, "webhook.malformed"),
        ({"webhook-signature": "v1a,AAAA"}, "webhook.unsigned"),  # the other scheme only
        ({"webhook-signature": "v1,!!!"}, "webhook.bad_signature"),
        ({"webhook-id": "msg_2"}, "webhook.bad_signature"),  # the id is signed too
    ],
)
def test_standard_headers_that_do_not_verify(change: dict[str, str], reason: str) -> None:
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    now = int(time.time())
    signature = Webhook(b"s3cret").sign("msg_1", datetime.fromtimestamp(now, UTC), body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": signature}
    assert verify_webhook(headers, body, secret="s3cret", now=now) == json.loads(body)
    with pytest.raises(BusError) as caught:
        verify_webhook(headers | change, body, secret="s3cret", now=now)
    assert caught.value.reason == reason


def test_one_good_signature_in_the_list_is_enough_as_in_a_key_rotation(tmp_path: Path) -> None:
    old, new = Signer.generate("ks-bus-1"), Signer.generate("ks-bus-2")
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    now = int(time.time())
    signed = [
        WebhookSink(Settings(data_dir=tmp_path), department=DEPARTMENT,
                    url="http://127.0.0.1:1/", signer=s).signing.headers("msg_1", body, now)
        for s in (old, new)
    ]  # fmt: skip
    both = signed[1] | {"webhook-signature": " ".join(h["webhook-signature"] for h in signed)}
    for trusted in (old, new):
        assert verify_webhook(both, body, keys={trusted.key_id: trusted.public_key}, now=now)
    hmacs = f"v1,{base64.b64encode(b'x' * 32).decode()} " + Webhook(b"s3cret").sign(
        "msg_1", datetime.fromtimestamp(now, UTC), body
    )
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": hmacs}
    assert verify_webhook(headers, body, secret="s3cret", now=now)
    assert Webhook(b"s3cret").verify(body, headers)


def test_webhook_id_is_one_per_delivery_and_endpoint() -> None:
    url = "https://cases.huaqiao.example/bus-inbox"
    one = webhook_id(["e1"], url)
    assert one == webhook_id(["e1"], url)
    assert one.startswith("msg_")
    assert "." not in one
    assert len({one, webhook_id(["e2"], url), webhook_id(["e1"], url + "2"),
                webhook_id(["e1", "e2"], url)}) == 4  # fmt: skip


@pytest.mark.parametrize("secret", ["s3cret", "whsec_" + base64.b64encode(b"k" * 32).decode()])
def test_a_secret_old_or_whsec_signs_what_the_library_verifies(tmp_path: Path, secret: str) -> None:
    """An existing plain secret is its UTF-8 bytes; give the library its whsec_ form."""
    sink = WebhookSink(Settings(data_dir=tmp_path), department=DEPARTMENT,
                       url="http://127.0.0.1:1/", secret=secret)  # fmt: skip
    body = '{"department":"ks.enforcement.huaqiao","deliveries":[],"name":"昆山"}'.encode()
    now = int(time.time())
    headers = sink.signing.headers("msg_1", body, now)
    assert headers["webhook-signature"] == Webhook(secret_bytes(secret)).sign(
        "msg_1", datetime.fromtimestamp(now, UTC), body
    )
    assert Webhook(standard_secret(secret)).verify(body, headers) == json.loads(body)
    assert verify_webhook(headers, body, secret=standard_secret(secret)) == json.loads(body)
    assert verify_webhook(headers, body, secret=secret) == json.loads(body)


def test_a_whpk_public_key_round_trips() -> None:
    key = Signer.generate("k").public_key
    text = public_key_text(key)
    assert text.startswith("whpk_")
    assert public_key_from_text(text) == key
    for bad in ("whpk_!!", "whpk_" + base64.b64encode(b"short").decode(), text[5:]):
        with pytest.raises(ConfigurationError):
            public_key_from_text(bad)


def test_a_signed_body_nested_too_deep_is_webhook_malformed() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    now = int(time.time())
    mac = hmac.new(b"s3cret", signed_bytes(now, body), hashlib.sha256).hexdigest()
    headers = {SIGNATURE_HEADER: f"t={now},hmac-sha256={mac}"}
    with pytest.raises(BusError) as caught:
        verify_webhook(headers, body, secret="s3cret")
    assert caught.value.reason == "webhook.malformed"


def doc_code(marker: str) -> dict[str, Any]:
    """Run the docs' Python block that holds ``marker``; its names."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    namespace: dict[str, Any] = {}
    exec(next(b for b in blocks if marker in b), namespace)
    return namespace


def refused_by(verify: Any, headers: dict[str, str], body: bytes, *args: Any) -> list[bool]:
    """For a tampered body, a 10-minute-old timestamp, another department: was each refused?"""
    old = {**headers, "webhook-timestamp": str(int(time.time()) - 600)}
    refused = []
    for bad_headers, bad_body, department in [
        (headers, body.replace(b"[]", b"[{}]"), DEPARTMENT),
        (old, body, DEPARTMENT),
        (headers, body, "ks.tax"),
    ]:
        try:
            verify(bad_headers, bad_body, *args, department)
        except Exception:  # the doc says: any error -> 401
            refused.append(True)
        else:
            refused.append(False)
    return refused


def test_the_ed25519_receiver_code_in_the_docs_verifies_a_signed_request(tmp_path: Path) -> None:
    signer = Signer.generate("ks-bus-1")
    sink = WebhookSink(Settings(data_dir=tmp_path), department=DEPARTMENT,
                       url="http://127.0.0.1:1/", signer=signer)  # fmt: skip
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    headers = sink.signing.headers("msg_1", body, int(time.time()))
    namespace = doc_code("def verify(")
    verify = namespace["verify"]
    from_pem = namespace["load_pem_public_key"](signer.public_key_pem().encode())
    from_text = namespace["whpk"](public_key_text(signer.public_key))
    other = Signer.generate("x").public_key
    for keys in ([from_pem], [other, from_text]):
        assert verify(headers, body, keys, DEPARTMENT) == json.loads(body)
        assert refused_by(verify, headers, body, keys) == [True] * 3
    with pytest.raises(ValueError, match="trusted"):
        verify(headers, body, [other], DEPARTMENT)


def test_the_hmac_receiver_code_in_the_docs_verifies_a_signed_request(tmp_path: Path) -> None:
    namespace = doc_code("def verify_hmac(")
    match = re.search(r'Webhook\("(whsec_[^"]+)"\)', DOC.read_text(encoding="utf-8"))
    assert match is not None
    secret = match.group(1)
    sink = WebhookSink(Settings(data_dir=tmp_path), department=DEPARTMENT,
                       url="http://127.0.0.1:1/", secret=secret)  # fmt: skip
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    headers = sink.signing.headers("msg_1", body, int(time.time()))
    verify = namespace["verify_hmac"]
    assert verify(headers, body, DEPARTMENT) == json.loads(body)
    assert refused_by(verify, headers, body) == [True] * 3


def test_signed_bytes_are_the_timestamp_a_dot_and_the_body() -> None:
    assert signed_bytes(1767225600, b'{"a":1}') == b'1767225600.{"a":1}'


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"url": "http://x/"}, "options.department: Field required"),
        ({"department": DEPARTMENT, "url": "http://x/", "retries": 3}, "options.retries"),
        ({"department": DEPARTMENT, "url": "ftp://x/"}, "options.url"),
        ({"department": DEPARTMENT, "url": "http://x/", "secret": "s", "key_file": "k.pem"},
         "not both"),
        ({"department": DEPARTMENT, "url": "http://x/", "headers": {"Bus-Signature": "x"}},
         "set by the sink itself: Bus-Signature"),
        ({"department": DEPARTMENT, "url": "http://x/", "headers": {"Webhook-Id": "x"}},
         "set by the sink itself: Webhook-Id"),
        ({"department": DEPARTMENT, "url": "http://x/", "secret": "whsec_c2hvcnQ="},
         "a whsec_ secret holds 24 to 64 bytes"),
        ({"department": DEPARTMENT, "url": "http://x/", "secret": "whsec_not base64!"},
         "standard base64"),
        ({"department": DEPARTMENT, "url": "http://x/", "secret": ""}, "may not be empty"),
        ({"department": "ks.nowhere", "url": "http://x/"}, "not in the directory"),
        ({"department": DEPARTMENT, "url": "http://x/", "key_file": "missing.pem"},
         "does not exist"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_naming_the_problem(
    tmp_path: Path, options: dict[str, Any], complaint: str
) -> None:
    entry = registry.Entry(name="w", kind="webhook", options=options)
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        registry.build(Settings(data_dir=tmp_path), entry)


def test_options_build_a_sink_on_the_department_inbox(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, topic_prefix="kb")
    entry = registry.Entry(name="huaqiao-webhook", kind="webhook", options={
        "department": DEPARTMENT, "url": "https://cases.huaqiao.example/bus-inbox",
        "batch_size": 20, "max_attempts": 4, "backoff_initial": 1, "secret": "s",
        "headers": {"Authorization": "Bearer t"},
    })  # fmt: skip
    sink = registry.build(settings, entry)
    assert isinstance(sink, WebhookSink)
    assert sink.topic == inbox_topic(settings, DEPARTMENT)
    assert (sink.name, sink.batch_size, sink.backoff.attempts) == ("huaqiao-webhook", 20, 4)
    assert sink.extra_headers == {"Authorization": "Bearer t"}
    assert sink.signing.header(b"{}", 1).startswith("t=1,hmac-sha256=")
    assert sink.signing.standard("msg_1", b"{}", 1).startswith("v1,")
    # Without a secret: the bus's own Ed25519 key, made and kept in the data dir.
    del entry.options["secret"]
    sink = registry.build(settings, entry)
    assert isinstance(sink, WebhookSink)
    assert sink.signing.header(b"{}", 1).startswith("t=1,ed25519=")
    assert sink.signing.standard("msg_1", b"{}", 1).startswith("v1a,")
    assert sink.signing.key_id == settings.signing_key_id
    assert (tmp_path / "keys" / f"{settings.signing_key_id}.pub").exists()


# -- end to end: `bus connect` as operators run it ---------------------------------------------


def bus_connect(
    settings: Settings, name: str, config: Path, log_file: Path
) -> subprocess.Popen[bytes]:
    """``bus connect NAME --config FILE`` as a child process with the test's settings."""
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "connect", name, "--config", str(config)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


@pytest.mark.e2e
async def test_bus_connect_runs_the_webhook_and_stops_cleanly_on_sigterm(
    settings: Settings, endpoint: Endpoint, tmp_path: Path
) -> None:
    from bus.agents.app import load_signer

    bus_key = load_signer(settings)  # what the child process will load from the data dir
    config = tmp_path / "connectors.yaml"
    config.write_text(yaml.safe_dump({"connectors": [{
        "name": "huaqiao-webhook", "kind": "webhook",
        "options": {"department": DEPARTMENT, "url": endpoint.url, "batch_size": 2,
                    "backoff_initial": 0.05, "max_attempts": 3},
    }]}))  # fmt: skip
    events = sample_events(3)
    await put(settings, events)
    log_file = tmp_path / "connect.log"
    proc = bus_connect(settings, "huaqiao-webhook", config, log_file)
    try:
        await wait_until(
            lambda: len(endpoint.delivered()) >= 3 or proc.poll() is not None, 60, "3 deliveries"
        )
        assert proc.poll() is None, log_file.read_text()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 20)
    finally:
        await asyncio.to_thread(terminate, proc)
    output = log_file.read_text()
    assert code == 0, output
    assert "Traceback" not in output, output
    assert endpoint.ids() == [str(e.event_id) for e in events]
    keys = {bus_key.key_id: bus_key.public_key}
    for hit in endpoint.hits:
        verify_webhook(hit.headers, hit.body, keys=keys, department=DEPARTMENT)
