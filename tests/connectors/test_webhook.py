"""The webhook sink against a real HTTP server started by each test, and a real broker.

``Endpoint`` is an aiohttp server on a loopback port standing in for a department's system:
it records every request, answers 200 unless told to answer something else (a script of
statuses, or one status for every request), and can be taken down (connection refused) and
brought back on the same port.
"""

from __future__ import annotations

import asyncio
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
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from bus.brokers import free_port
from bus.certificates import Signer
from bus.client import BusClient
from bus.codec import EventCodec
from bus.errors import BusError, ConfigurationError
from bus.processes import settings_env, terminate
from bus.publish import replay_deadletters
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.topics import inbox_topic
from connectors import registry
from connectors.base import Backoff, ConnectorMetrics, Sink
from connectors.webhook import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSink,
    signed_bytes,
    verify_webhook,
)
from tests.connectors.contract import (
    FAST,
    SinkContract,
    TopicWatcher,
    metric,
    sample_events,
    wait_until,
)

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
    for hit in endpoint.hits:
        assert hit.headers[KEY_ID_HEADER] == signer.key_id
        batch = verify_webhook(hit.headers, hit.body, keys=keys, department=DEPARTMENT)
        assert batch["department"] == DEPARTMENT

    hit = endpoint.hits[0]
    sent_at = int(re.findall(r"t=(\d+)", hit.headers[SIGNATURE_HEADER])[0])
    tampered = hit.body.replace(b'"cursor":', b'"cursor":1', 1)
    assert tampered != hit.body
    refusals = {
        "webhook.bad_signature": lambda: verify_webhook(hit.headers, tampered, keys=keys),
        "webhook.stale": lambda: verify_webhook(
            hit.headers, hit.body, keys=keys, now=sent_at + 301
        ),
        "webhook.unknown_key": lambda: verify_webhook(
            hit.headers, hit.body, keys={"other": Signer.generate("other").public_key}
        ),
        "webhook.wrong_department": lambda: verify_webhook(
            hit.headers, hit.body, keys=keys, department="ks.tax"
        ),
        "webhook.unsigned": lambda: verify_webhook(
            {k: v for k, v in hit.headers.items() if k != SIGNATURE_HEADER}, hit.body, keys=keys
        ),
    }
    for reason, check in refusals.items():
        with pytest.raises(BusError) as caught:
            check()
        assert caught.value.reason == reason
    # Another key of the same id (a forger who knows the id) does not pass either.
    forged = {signer.key_id: Signer.generate(signer.key_id).public_key}
    with pytest.raises(BusError, match="does not match"):
        verify_webhook(hit.headers, hit.body, keys=forged)


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
    assert time.monotonic() - t0 < 2, "stop() waited out the back-off"
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
    headers = {SIGNATURE_HEADER: f"t={stamp},hmac-sha256=00", KEY_ID_HEADER: "k"}
    with pytest.raises(BusError) as caught:
        verify_webhook(headers, body, secret="s3cret")
    assert caught.value.reason == "webhook.malformed"
    assert "t=" in str(caught.value)


def test_a_signed_body_nested_too_deep_is_webhook_malformed() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    now = int(time.time())
    mac = hmac.new(b"s3cret", signed_bytes(now, body), hashlib.sha256).hexdigest()
    headers = {SIGNATURE_HEADER: f"t={now},hmac-sha256={mac}"}
    with pytest.raises(BusError) as caught:
        verify_webhook(headers, body, secret="s3cret")
    assert caught.value.reason == "webhook.malformed"


def test_the_receiver_code_in_the_docs_verifies_a_signed_request(tmp_path: Path) -> None:
    signer = Signer.generate("ks-bus-1")
    sink = WebhookSink(Settings(data_dir=tmp_path), department=DEPARTMENT,
                       url="http://127.0.0.1:1/", signer=signer)  # fmt: skip
    body = b'{"department":"ks.enforcement.huaqiao","deliveries":[]}'
    headers = {SIGNATURE_HEADER: sink.signing.header(body, int(time.time())),
               KEY_ID_HEADER: signer.key_id}  # fmt: skip
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    code = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    pem = signer.public_key_pem().encode()
    keys = {signer.key_id: namespace["load_pem_public_key"](pem)}
    verify = namespace["verify"]
    assert verify(headers, body, keys, DEPARTMENT) == json.loads(body)
    signature = headers[SIGNATURE_HEADER].split(",", 1)[1]
    old = {**headers, SIGNATURE_HEADER: f"t={int(time.time()) - 600},{signature}"}
    for bad_body, bad_headers, department in [
        (body.replace(b"[]", b"[{}]"), headers, DEPARTMENT),
        (body, old, DEPARTMENT),
        (body, headers, "ks.tax"),
    ]:
        with pytest.raises(Exception):  # noqa: B017, PT011  (the doc says: any error -> 401)
            verify(bad_headers, bad_body, keys, department)


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
    # Without a secret: the bus's own Ed25519 key, made and kept in the data dir.
    del entry.options["secret"]
    sink = registry.build(settings, entry)
    assert isinstance(sink, WebhookSink)
    assert sink.signing.header(b"{}", 1).startswith("t=1,ed25519=")
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
    from bus.app import load_signer

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
