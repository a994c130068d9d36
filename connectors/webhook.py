"""The webhook sink: a department's inbox, POSTed to its HTTP endpoint, signed, in order.

Each request carries up to ``batch_size`` inbox records, oldest first, signed as Standard
Webhooks (standardwebhooks.com) specifies::

    POST /bus-inbox HTTP/1.1
    Content-Type: application/json
    webhook-id: msg_4c0f6a1e9b2d47c3a8e1f0b7d6c5a4e3
    webhook-timestamp: 1767225600
    webhook-signature: v1a,6Jc3...Ag==
    Bus-Key-Id: ks-bus-1                                 (deprecated, gone in 0.3.0)
    Bus-Signature: t=1767225600,ed25519=Qx7...Bw==       (deprecated, gone in 0.3.0)

    {"department": "ks.enforcement.huaqiao",
     "deliveries": [{"cursor": 41, "event": {...}, "headers": {"event_id": "...", ...}}]}

``cursor`` is the record's offset in the inbox (one partition, so one order); ``event`` is the
envelope as the gateway and ``bus publish`` speak it; ``headers`` are the record's Kafka
headers (``event_type``, ``event_id``, ``correlation_id``, ``source``, and ``bus.replay_of``
on a replayed dead letter). The next request is sent only after a 2xx to this one.

``webhook-id`` names the delivery: derived from the batch's event ids and the endpoint, so a
retry (or a resend after a restart, or a replayed dead letter) carries the same id and a
receiver de-duplicates by it. ``webhook-signature`` covers ``<id>.<timestamp>.<body>``:
``v1,<base64 HMAC-SHA256>`` with a shared ``whsec_`` secret, or ``v1a,<base64 Ed25519>`` with
the bus's key. ``Bus-Signature`` (over ``<t>.<body>``) and ``Bus-Key-Id`` are the bus's own
scheme from before; they are sent alongside for the 0.2 releases and no longer from 0.3.0.
``verify_webhook`` checks either; docs/connectors-webhook.md shows the check for receivers
that do not install this package.

Answers: 2xx is delivered. 408, 425, 429 and 5xx, a timeout or a refused connection are
retried with back-off (``Retry-After`` is honoured); any other status is the receiver saying
"never", so the batch goes to the dead-letter topic at once (``bus.reason`` ``webhook.http_400``
...). Once the retry budget is spent the batch is dead-lettered with the last failure's reason
(``webhook.http_503``, ``webhook.unreachable``, ``webhook.timeout``) and the next records go
out; ``bus deadletters replay --reason webhook.`` puts them back on the inbox after the
endpoint is fixed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

import httpx
from aiokafka import TopicPartition
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from standardwebhooks.webhooks import Webhook

from bus.agents.out import Out
from bus.domain.certificates import KEY_ID_PATTERN, Signer
from bus.errors import BusError, ConfigurationError, ConnectorError, DecodeError
from bus.schemas.jsontext import load_json
from bus.schemas.types import DepartmentCode
from bus.settings import Settings
from bus.streaming.topics import inbox_topic
from connectors.base import Backoff, Guarantee, Sink, SinkRecord

log = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
HMAC_VERSION = "v1"
"""Standard Webhooks' tag of an HMAC-SHA256 signature."""
ED25519_VERSION = "v1a"
"""Standard Webhooks' tag of an Ed25519 signature."""
SECRET_PREFIX = "whsec_"
PUBLIC_KEY_PREFIX = "whpk_"
SECRET_BYTES = (24, 64)
"""A ``whsec_`` secret's length in bytes, as the specification asks (192 to 512 bits)."""

SIGNATURE_HEADER = "Bus-Signature"
"""Deprecated: the bus's own scheme before Standard Webhooks; not sent from 0.3.0."""
KEY_ID_HEADER = "Bus-Key-Id"
"""Deprecated with ``Bus-Signature``."""
ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"
TOLERANCE = 300.0
"""Seconds a receiver accepts between the signature's timestamp and its own clock, either way."""

REASON_UNSIGNED = "webhook.unsigned"
REASON_STALE = "webhook.stale"
REASON_UNKNOWN_KEY = "webhook.unknown_key"
REASON_BAD_SIGNATURE = "webhook.bad_signature"
REASON_WRONG_DEPARTMENT = "webhook.wrong_department"
REASON_MALFORMED = "webhook.malformed"

MAX_TIMESTAMP_DIGITS = 12
"""Digits of a timestamp: Unix seconds have 10 until the year 2286."""

RETRIABLE_STATUS = frozenset({408, 425, 429})
"""Besides 5xx: the receiver is busy or slow, the same request may succeed later."""

_RESERVED_HEADERS = frozenset(
    h.lower()
    for h in ("content-type", "content-length", "host", ID_HEADER, TIMESTAMP_HEADER,
              STANDARD_SIGNATURE_HEADER, SIGNATURE_HEADER, KEY_ID_HEADER)
)  # fmt: skip


def secret_bytes(secret: str | bytes) -> bytes:
    """The HMAC key a secret stands for, the same for the sink and ``verify_webhook``.

    ``whsec_<base64>`` (the Standard Webhooks form) is the decoded bytes; any other text is
    its UTF-8 bytes, as the bus's secrets were before, so an existing secret keeps working;
    ``bytes`` are used as they are.
    """
    if isinstance(secret, bytes):
        raw = secret
    elif secret.startswith(SECRET_PREFIX):
        try:
            raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"a {SECRET_PREFIX} secret must be standard base64 after the prefix"
            ) from None
    else:
        raw = secret.encode("utf-8")
    if not raw:
        raise ConfigurationError("a webhook secret may not be empty")
    return raw


def standard_secret(secret: str | bytes) -> str:
    """The ``whsec_`` form of a secret, for a receiver's Standard Webhooks library."""
    return SECRET_PREFIX + base64.b64encode(secret_bytes(secret)).decode("ascii")


def public_key_text(key: Ed25519PublicKey) -> str:
    """The ``whpk_`` form of the bus's public key that Standard Webhooks receivers are given."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Read a ``whpk_`` public key (the inverse of ``public_key_text``)."""
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise ConfigurationError(f"a public key in text form starts with {PUBLIC_KEY_PREFIX}")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{PUBLIC_KEY_PREFIX} must be followed by the base64 of a 32-byte Ed25519 key"
        ) from None


def webhook_id(event_ids: Sequence[str], endpoint: str) -> str:
    """The ``webhook-id`` of a delivery: the same for every try, whatever the timestamp.

    A digest of the endpoint and the event ids in order, so it never holds a ``.`` (which
    would make ``<id>.<timestamp>.<body>`` ambiguous) and two departments' endpoints get
    different ids for the same event.
    """
    text = "\n".join([endpoint, *event_ids])
    return "msg_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def standard_signed_bytes(msg_id: str, timestamp: int, body: bytes) -> bytes:
    """What a Standard Webhooks signature covers: ``<id>.<timestamp>.<body as sent>``."""
    return f"{msg_id}.{timestamp}.".encode() + body


def signed_bytes(timestamp: int, body: bytes) -> bytes:
    """What the deprecated ``Bus-Signature`` covers: the timestamp, a dot, the body."""
    return str(timestamp).encode("ascii") + b"." + body


class _Signing:
    """Signs request bodies with the bus's Ed25519 key or a department's shared secret."""

    def __init__(self, key_id: str, *, signer: Signer | None = None, secret: bytes | None = None):
        self.key_id = key_id
        self._signer = signer
        self._secret = secret
        # The reference library signs v1 (HMAC); it has no Ed25519 (v1a), done below by spec.
        self._webhook = Webhook(secret) if secret is not None else None

    def header(self, body: bytes, timestamp: int) -> str:
        """The deprecated ``Bus-Signature`` value."""
        data = signed_bytes(timestamp, body)
        if self._secret is not None:
            mac = hmac.new(self._secret, data, hashlib.sha256).hexdigest()
            return f"t={timestamp},{HMAC_SHA256}={mac}"
        assert self._signer is not None
        # Signer's public method signs certificates only; the raw key signs any bytes.
        sig = self._signer.sign_bytes(data)
        return f"t={timestamp},{ED25519}={base64.b64encode(sig).decode('ascii')}"

    def standard(self, msg_id: str, body: bytes, timestamp: int) -> str:
        """The ``webhook-signature`` value: ``v1,<HMAC>`` or ``v1a,<Ed25519>``, base64."""
        if self._webhook is not None:
            return self._webhook.sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
        assert self._signer is not None
        sig = self._signer.sign_bytes(standard_signed_bytes(msg_id, timestamp, body))
        return f"{ED25519_VERSION},{base64.b64encode(sig).decode('ascii')}"

    def headers(self, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """Every signature header of one try: the standard ones and, until 0.3.0, the old."""
        return {
            ID_HEADER: msg_id,
            TIMESTAMP_HEADER: str(timestamp),
            STANDARD_SIGNATURE_HEADER: self.standard(msg_id, body, timestamp),
            SIGNATURE_HEADER: self.header(body, timestamp),
            KEY_ID_HEADER: self.key_id,
        }


def _unsigned(message: str) -> BusError:
    return BusError(message, reason=REASON_UNSIGNED)


def _timestamp(stamp: str, where: str) -> int:
    # ASCII digits only (str.isdigit also takes '²'), and few: int() of a huge one fails
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
        raise BusError(
            f"{where} must be Unix seconds (up to {MAX_TIMESTAMP_DIGITS} digits): {stamp[:40]!r}",
            reason=REASON_MALFORMED,
        )
    return int(stamp)


def _parse_signature(value: str) -> tuple[int, dict[str, str]]:
    fields: dict[str, str] = {}
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep or not item:
            raise _unsigned(f"{SIGNATURE_HEADER} is malformed: {value[:200]!r}")
        fields[name] = item
    if "t" not in fields:
        raise _unsigned(f"{SIGNATURE_HEADER} has no t=<unix seconds>: {value[:200]!r}")
    return _timestamp(fields.pop("t"), f"{SIGNATURE_HEADER} t="), fields


def _check_time(timestamp: int, at: float, tolerance: float) -> None:
    if abs(at - timestamp) > tolerance:
        raise BusError(
            f"signature time {timestamp} is {at - timestamp:+.0f}s from now, outside "
            f"±{tolerance:.0f}s: a replayed or delayed request",
            reason=REASON_STALE,
        )


def _verify_standard(
    lower: Mapping[str, str],
    body: bytes,
    keys: Mapping[str, Ed25519PublicKey] | None,
    secret: bytes | None,
    at: float,
    tolerance: float,
) -> None:
    """Standard Webhooks: ``webhook-signature`` over ``<webhook-id>.<webhook-timestamp>.<body>``."""
    msg_id = lower.get(ID_HEADER, "")
    stamp = lower.get(TIMESTAMP_HEADER, "")
    if not msg_id or not stamp:
        raise BusError(
            f"{STANDARD_SIGNATURE_HEADER} needs {ID_HEADER} and {TIMESTAMP_HEADER}",
            reason=REASON_MALFORMED,
        )
    if "." in msg_id or len(msg_id) > 256:
        raise BusError(f"{ID_HEADER} {msg_id[:80]!r} is not a message id", reason=REASON_MALFORMED)
    timestamp = _timestamp(stamp, TIMESTAMP_HEADER)
    _check_time(timestamp, at, tolerance)
    # A space-separated list (several during a key rotation): one trusted match is enough.
    given: dict[str, list[str]] = {}
    for item in lower[STANDARD_SIGNATURE_HEADER].split(" "):
        version, _, sig = item.partition(",")
        given.setdefault(version, []).append(sig)
    wanted = HMAC_VERSION if secret is not None else ED25519_VERSION
    if not given.get(wanted):
        raise _unsigned(f"{STANDARD_SIGNATURE_HEADER} has no {wanted} signature")
    if secret is not None:
        expected = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
        if not any(
            hmac.compare_digest(expected.encode(), f"{wanted},{sig}".encode("utf-8", "replace"))
            for sig in given[wanted]
        ):
            raise BusError("HMAC does not match the body", reason=REASON_BAD_SIGNATURE)
        return
    assert keys is not None
    data = standard_signed_bytes(msg_id, timestamp, body)
    for sig in given[wanted]:
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            continue
        for public in keys.values():
            with contextlib.suppress(InvalidSignature, ValueError):
                public.verify(raw, data)
                return
    raise BusError(
        f"signature matches the body for none of the trusted keys "
        f"({', '.join(sorted(keys)) or 'none'})",
        reason=REASON_BAD_SIGNATURE,
    )


def _verify_legacy(
    lower: Mapping[str, str],
    body: bytes,
    keys: Mapping[str, Ed25519PublicKey] | None,
    secret: bytes | None,
    at: float,
    tolerance: float,
) -> None:
    """The deprecated ``Bus-Signature`` over ``<t>.<body>`` (accepted until 0.3.0)."""
    timestamp, fields = _parse_signature(lower[SIGNATURE_HEADER.lower()])
    _check_time(timestamp, at, tolerance)
    data = signed_bytes(timestamp, body)
    if secret is not None:
        given = fields.get(HMAC_SHA256)
        if given is None:
            raise _unsigned(f"{SIGNATURE_HEADER} has no {HMAC_SHA256}= signature")
        if not hmac.compare_digest(hmac.new(secret, data, hashlib.sha256).hexdigest(), given):
            raise BusError("HMAC does not match the body", reason=REASON_BAD_SIGNATURE)
        return
    assert keys is not None
    given = fields.get(ED25519)
    if given is None:
        raise _unsigned(f"{SIGNATURE_HEADER} has no {ED25519}= signature")
    key_id = lower.get(KEY_ID_HEADER.lower(), "")
    public = keys.get(key_id)
    if public is None:
        raise BusError(
            f"signed with key {key_id!r}, which is not trusted here "
            f"(trusted: {', '.join(sorted(keys)) or 'none'})",
            reason=REASON_UNKNOWN_KEY,
        )
    try:
        public.verify(base64.b64decode(given, validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        raise BusError(
            f"signature does not match the body for key {key_id!r}",
            reason=REASON_BAD_SIGNATURE,
        ) from None


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    *,
    keys: Mapping[str, Ed25519PublicKey] | None = None,
    secret: str | bytes | None = None,
    department: str | None = None,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a webhook request came from the bus, unaltered and recent; return its JSON body.

    Give ``keys`` (the bus's public keys, for Ed25519: the ids name them in messages and in
    the deprecated scheme) or ``secret`` (the shared secret, ``whsec_...`` or as configured,
    for HMAC-SHA256): the receiver decides which scheme it accepts, a request never does.
    Pass the body exactly as received, before any parsing. ``department`` (your code)
    refuses a request signed for another department; ``tolerance`` bounds how old (or early)
    the timestamp may be, which stops a recorded request being replayed later. Within the
    window a repeat is possible, as with any at-least-once delivery: de-duplicate by the
    ``webhook-id`` header (one per delivery, the same on every retry) or by ``event_id``.

    Checks the Standard Webhooks headers when present, else the deprecated ``Bus-Signature``
    (accepted until 0.3.0, for requests from a bus not yet upgraded).

    Raises ``BusError`` with reason ``webhook.unsigned`` / ``.stale`` / ``.unknown_key`` /
    ``.bad_signature`` / ``.malformed`` / ``.wrong_department``; answer those with 401/400.

    Example (Starlette / FastAPI)::

        body = await request.body()
        batch = verify_webhook(request.headers, body, keys={"ks-bus-1": bus_public_key},
                               department="ks.enforcement.huaqiao")
        for d in batch["deliveries"]:
            handle(d["event"])          # skip event_ids already handled
    """
    if (keys is None) == (secret is None):
        raise ConfigurationError("verify_webhook needs keys (Ed25519) or secret (HMAC), not both")
    key = secret_bytes(secret) if secret is not None else None
    lower = {k.lower(): v for k, v in headers.items()}
    at = time.time() if now is None else now
    if lower.get(STANDARD_SIGNATURE_HEADER):
        _verify_standard(lower, body, keys, key, at, tolerance)
    elif lower.get(SIGNATURE_HEADER.lower()):
        _verify_legacy(lower, body, keys, key, at, tolerance)
    else:
        raise _unsigned(f"no {STANDARD_SIGNATURE_HEADER} header (nor {SIGNATURE_HEADER})")
    try:
        parsed = load_json(body)
    except DecodeError as exc:
        raise BusError(f"signed body: {exc.message}", reason=REASON_MALFORMED) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("deliveries"), list):
        raise BusError("signed body has no deliveries list", reason=REASON_MALFORMED)
    if department is not None and parsed.get("department") != department:
        raise BusError(
            f"request is for {parsed.get('department')!r}, not {department!r}",
            reason=REASON_WRONG_DEPARTMENT,
        )
    return parsed


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None


class WebhookOptions(BaseModel):
    """``options`` of a ``kind: webhook`` connector in the connectors file."""

    model_config = ConfigDict(extra="forbid")

    department: DepartmentCode
    """Whose inbox is delivered."""
    url: AnyHttpUrl
    """The department's endpoint (https in production)."""
    secret: SecretStr | None = None
    """Sign with HMAC-SHA256 and this shared secret instead of the bus's Ed25519 key:
    ``whsec_<base64 of 24-64 random bytes>`` (Standard Webhooks), or an older plain one."""
    key_file: Path | None = None
    """Ed25519 private key (PEM) to sign with; the bus's signing key when unset."""
    key_id: str | None = Field(default=None, pattern=KEY_ID_PATTERN)
    """Sent as the deprecated ``Bus-Key-Id`` (the bus's ``BUS_SIGNING_KEY_ID`` by default)."""
    timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds for one request, connecting included."""
    batch_size: int = Field(default=1, ge=1, le=1000)
    """Inbox records per request; 1 sends one event per request."""
    max_attempts: int = Field(default=8, ge=1)
    """Tries per batch, the first included, before it goes to the dead letters."""
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)
    max_retry_after: float = Field(default=300.0, ge=0)
    """Longest ``Retry-After`` honoured; a longer one is cut to this."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Static headers on every request, e.g. ``Authorization`` for the department's proxy."""

    @field_validator("headers")
    @classmethod
    def _no_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in value if k.lower() in _RESERVED_HEADERS)
        if clash:
            raise ValueError(f"set by the sink itself: {', '.join(clash)}")
        return value

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        if value is not None and not text:
            raise ValueError("may not be empty")
        if text.startswith(SECRET_PREFIX):
            try:
                raw = secret_bytes(text)
            except ConfigurationError as exc:
                raise ValueError(exc.message) from None
            low, high = SECRET_BYTES
            if not low <= len(raw) <= high:
                raise ValueError(f"a {SECRET_PREFIX} secret holds {low} to {high} bytes")
        return value

    @model_validator(mode="after")
    def _one_scheme(self) -> Self:
        if self.secret is not None and self.key_file is not None:
            raise ValueError("give secret (HMAC) or key_file (Ed25519), not both")
        return self


class WebhookSink(Sink):
    """POSTs a department's inbox to its endpoint, signed, one request at a time, in order.

    Guarantee: at-least-once. A batch whose 2xx was lost (timeout, crash before the offset
    commit) is sent again, so receivers de-duplicate by ``event_id`` (in ``headers`` and in
    the event). Replayed dead letters come later than newer records: the inbox order holds
    for everything delivered on its first pass.
    """

    kind = "webhook"
    guarantee: ClassVar[Guarantee] = Guarantee.AT_LEAST_ONCE
    Options: ClassVar[type[WebhookOptions]] = WebhookOptions

    def __init__(
        self,
        settings: Settings,
        *,
        department: str,
        url: str,
        signer: Signer | None = None,
        secret: str | bytes | None = None,
        key_id: str | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        max_retry_after: float = 300.0,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", f"webhook.{department}")
        super().__init__(settings, inbox_topic(settings, department), batch_size=batch_size,
                         **kwargs)  # fmt: skip
        self.department = department
        self.url = url
        # Logs and dead-letter headers name the endpoint without a token in its query or userinfo.
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        self.shown_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.extra_headers = dict(headers or {})
        if secret is not None:
            self.signing = _Signing(key_id or "shared", secret=secret_bytes(secret))
        else:
            if signer is None:
                from bus.agents.app import load_signer  # the bus's key, as certificates use

                signer = load_signer(settings)
            self.signing = _Signing(key_id or signer.key_id, signer=signer)
        self._http: httpx.AsyncClient | None = None
        self._in_backoff = False
        self._last_failure: ConnectorError | None = None

    @classmethod
    def from_options(cls, settings: Settings, name: str, options: WebhookOptions) -> WebhookSink:
        """The sink a connectors-file entry describes (``bus connect NAME``)."""
        from bus.domain.departments import Directory

        if Directory.load(settings.departments_file).get(options.department) is None:
            raise ConfigurationError(
                f"connector {name!r}: department {options.department!r} is not in the directory"
            )
        signer = None
        if options.key_file is not None:
            signer = Signer.from_file(options.key_file, options.key_id or settings.signing_key_id)
        return cls(
            settings,
            name=name,
            department=options.department,
            url=str(options.url),
            signer=signer,
            secret=options.secret.get_secret_value() if options.secret is not None else None,
            key_id=options.key_id,
            timeout=options.timeout,
            headers=options.headers,
            max_retry_after=options.max_retry_after,
            batch_size=options.batch_size,
            backoff=Backoff(
                initial=options.backoff_initial,
                maximum=options.backoff_max,
                attempts=options.max_attempts,
            ),
        )

    async def on_start(self) -> None:
        """Open the HTTP connection pool (redirects are not followed: a POST must not move)."""
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            headers={"User-Agent": "kunshan-bus-webhook/1", **self.extra_headers},
        )

    async def on_stop(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def body(self, batch: list[SinkRecord]) -> bytes:
        """The request body for ``batch`` (see the module docstring)."""
        deliveries = []
        for r in batch:
            assert r.event is not None
            deliveries.append({
                "cursor": r.offset,
                "event": json.loads(self.codec.to_json(r.event)),
                "headers": r.headers,
            })  # fmt: skip
        doc = {"department": self.department, "deliveries": deliveries}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def write(self, batch: list[SinkRecord]) -> None:
        """POST the batch once; a 2xx returns, anything else raises (retriable or not)."""
        self._in_backoff = False
        http = self._http
        if http is None:
            raise ConnectorError(f"{self.name}: write() before start()", reason="connector.state")
        body = self.body(batch)
        msg_id = webhook_id([str(r.event.event_id) for r in batch if r.event], self.shown_url)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            **self.signing.headers(msg_id, body, int(time.time())),
        }
        try:
            response = await http.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise self._failed(f"no answer within {self.timeout}s ({type(exc).__name__})",
                               "webhook.timeout", retriable=True) from exc  # fmt: skip
        except httpx.ConnectError as exc:
            raise self._failed(f"cannot connect: {exc}", "webhook.unreachable",
                               retriable=True) from exc  # fmt: skip
        except httpx.TransportError as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}", "webhook.transport",
                               retriable=True) from exc  # fmt: skip
        status = response.status_code
        if 200 <= status < 300:
            return
        retriable = status >= 500 or status in RETRIABLE_STATUS
        said = response.text[:300].strip()
        error = self._failed(
            f"answered {status}{': ' + said if said else ''}", f"webhook.http_{status}",
            retriable=retriable,
        )  # fmt: skip
        wait = _retry_after(response.headers.get("Retry-After"))
        if retriable and wait:
            # The receiver named its own pause; the back-off's pause comes on top of it.
            # Not tenacity or backoff: tries, delays and budget are connectors.base.Backoff's,
            # shared by every connector; either library would need a custom wait to keep its
            # proportional jitter, and neither reads Retry-After: only a second retry loop.
            await self.sleep(min(wait, self.max_retry_after))
        raise error

    def _failed(self, message: str, reason: str, *, retriable: bool) -> ConnectorError:
        error = ConnectorError(
            f"POST {self.shown_url} {message}", retriable=retriable, reason=reason
        )
        self._last_failure = error
        return error

    async def _deliver(self, tp: TopicPartition, batch: list[SinkRecord]) -> list[Out]:
        # A record this build cannot decode cannot become JSON; it waits in the dead letters
        # (replayable once the sink is upgraded) while the rest of the inbox goes on.
        letters: list[Out] = []
        bad = [r for r in batch if r.event is None]
        if bad:
            log.error("%s: %d undecodable records to dead letters", self.name, len(bad))
            letters += self._deadletters(bad, "schema.decode", bad[0].error or "no value")
            self.metrics.deliveries.labels(self.name, "deadlettered").inc(len(bad))
        good = [r for r in batch if r.event is not None]
        if good:
            self._last_failure = None
            letters += await super()._deliver(tp, good)
        return letters

    def _deadletters(self, batch: list[SinkRecord], reason: str, error: str) -> list[Out]:
        # "retries exhausted" says nothing an operator can act on; the last answer does, and
        # lets `bus deadletters replay --reason webhook.http_5` pick exactly these.
        if reason == "connector.retries_exhausted" and self._last_failure is not None:
            reason = self._last_failure.reason
        return super()._deadletters(batch, reason, error)

    def _on_retry(self, tries: int, exc: BaseException, delay: float) -> None:
        super()._on_retry(tries, exc, delay)
        self._in_backoff = True
        if self.stopping:
            self.abandon()

    def stop(self) -> None:
        """Stop; a batch waiting out its back-off is abandoned (uncommitted, sent on restart).

        Waiting out a budget of minutes would outlast any supervisor's stop timeout.
        """
        super().stop()
        if self._in_backoff:
            self.abandon()


__all__ = [
    "ED25519",
    "ED25519_VERSION",
    "HMAC_SHA256",
    "HMAC_VERSION",
    "ID_HEADER",
    "KEY_ID_HEADER",
    "SIGNATURE_HEADER",
    "STANDARD_SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookOptions",
    "WebhookSink",
    "public_key_from_text",
    "public_key_text",
    "secret_bytes",
    "signed_bytes",
    "standard_secret",
    "standard_signed_bytes",
    "verify_webhook",
    "webhook_id",
]
