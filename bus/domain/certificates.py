"""Signed compliance certificates (合规证明): the document, signing, verification, serials.

The document
    A ``SignedCertificate`` is what gets signed, stored in a file and verified: the
    enterprise (``uscc``, ``enterprise_name``), every field of the ``certificate.issued``
    payload, and a ``format`` tag. The event payload does not carry the USCC (it is the
    envelope's ``subject``), so ``SignedCertificate.from_payload`` rebuilds the document
    from the subject and the payload, and ``to_payload`` goes back. Everything but
    ``signature`` is signed, including ``format`` (so a future layout can never be mistaken
    for this one) and ``key_id`` (so a signature cannot be re-attributed to another key).

The canonical byte form (what the Ed25519 signature covers)
    Take the document as a JSON object, remove the ``signature`` member, and serialise it
    as RFC 8785 (the JSON Canonicalization Scheme, JCS); ``canonical_bytes`` uses the
    ``rfc8785`` package for it. For this document that means:

    * members sorted by key, at every level (all keys are ASCII, so code-point order);
    * no whitespace at all: ``,`` between members and elements, ``:`` after keys;
    * strings verbatim in UTF-8 (no ``\\uXXXX`` for non-ASCII such as 中文); only ``"``,
      ``\\`` and U+0000..U+001F are escaped, as ``\\" \\\\ \\b \\f \\n \\r \\t`` or ``\\u00xx``
      (lower-case hex);
    * dates as ``YYYY-MM-DD``; instants in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` (``.ffffff``
      before the ``Z`` only when there are microseconds);
    * the document holds only strings, arrays and objects (no numbers, booleans or
      nulls), so any JCS library in any language reproduces it byte for byte.

    ``signature`` is the standard, padded base64 (88 characters) of the 64-byte pure
    Ed25519 (RFC 8032) signature of those bytes.

    Up to 0.1.0 the bus serialised with ``json.dumps(doc, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``. For every document the bus signs (strings,
    arrays and objects with ASCII keys) that is byte for byte the JCS form, so certificates
    signed then verify unchanged (tests/unit/data/legacy-certificates). The two differ only
    where no certificate has ever had a value: numbers (for ``1.0``, ``1e16``, ``1e-7`` and
    ``-0.0`` json.dumps wrote ``1.0``, ``1e+16``, ``1e-07``, ``-0.0`` and JCS writes ``1``,
    ``10000000000000000``, ``1e-7``, ``0``; JCS refuses integers beyond ±(2^53 - 1)) and
    member names beyond U+FFFF (JCS sorts them by UTF-16 code units). A file with a number
    where a date belongs fails on its signature under either form, as it always did.

Verifying a file
    ``Verifier.verify_bytes`` checks the signature over the *members as written in the
    file* (parsed, ``signature`` removed, re-serialised as above), not over a normalised
    model, so it accepts exactly what a verifier in another language accepts: any layout
    or member order, but not a value that merely means the same (``+08:00`` for ``Z``).
    Duplicate member names are refused, because parsers disagree on which one wins.

Public key files
    PEM ``SubjectPublicKeyInfo``, optionally preceded by a ``key_id: <id>`` line (OpenSSL and
    most PEM readers skip text before ``-----BEGIN``). Without that line the key id is the
    file name without ``.pub`` / ``.pem``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar

import rfc8785
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from bus.errors import BusError, ConfigurationError, DecodeError, ValidationFailed
from bus.schemas.certificate import (
    CertificateIssued,
    CertificatePurpose,
    CertificateResult,
    RecordedPenalty,
)
from bus.schemas.jsontext import check_json_depth
from bus.schemas.types import Day, DepartmentCode, Line, Uscc, UtcDatetime, out_of_order

FORMAT: Final = "gov.ks.bus.certificate/1"
"""The ``format`` tag of this document layout; a new layout gets a new tag."""

KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_KEY_ID_LINE = re.compile(r"^\s*key_id\s*:\s*(\S+)\s*$", re.IGNORECASE)

REASON_UNKNOWN_KEY = "certificate.unknown_key"
REASON_BAD_SIGNATURE = "certificate.bad_signature"
REASON_MALFORMED = "certificate.malformed"
REASON_UNREADABLE = "certificate.unreadable"
REASON_SIGNING_KEY = "config.signing_key"
REASON_PUBLIC_KEY = "config.public_key"

CHINA = timezone(timedelta(hours=8), "CST")
"""China Standard Time (no daylight saving), which decides the year in a serial."""

SERIAL_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford base32: no I, L, O, U, so a serial read out over the phone is unambiguous."""

SERIAL_CHARS = 12
"""60 bits of digest: a collision is expected only after ~10^9 certificates of one issuer."""


def _signature_b64(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != value:
        raise ValueError("must be the padded base64 of a 64-byte Ed25519 signature")
    return value


KeyId = Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]
"""A signing key's name, e.g. ``ks-bus-2026-01``: safe in file names and headers."""

Signature = Annotated[str, AfterValidator(_signature_b64)]


class UnsignedCertificate(BaseModel):
    """Everything a certificate says, before a ``Signer`` adds ``key_id`` and ``signature``."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    format: Literal["gov.ks.bus.certificate/1"] = FORMAT
    uscc: Uscc
    enterprise_name: Line = Field(min_length=1, max_length=200)  # as the payload allows
    serial: Line = Field(min_length=8, max_length=64)
    request_event_id: Line
    period_start: Day
    period_end: Day
    purpose: CertificatePurpose
    result: CertificateResult
    record: list[RecordedPenalty] = Field(default_factory=list)
    issuing_authority: DepartmentCode
    issued_at: UtcDatetime

    @model_validator(mode="after")
    def _period_in_order(self) -> Self:
        if self.period_end < self.period_start:
            raise out_of_order("period_end", "period_end must not be before period_start")
        return self


class SignedCertificate(UnsignedCertificate):
    """The certificate as stored and shown: ``signature`` covers every other field."""

    key_id: KeyId
    signature: Signature

    @classmethod
    def from_payload(cls, payload: CertificateIssued, *, uscc: str) -> SignedCertificate:
        """The document behind a ``certificate.issued`` event; ``uscc`` is its subject."""
        return validate_document(cls, {**payload.model_dump(), "uscc": uscc})

    def to_payload(self) -> CertificateIssued:
        """The ``certificate.issued`` payload: every field but ``format`` and ``uscc``."""
        wanted = CertificateIssued.model_fields
        values = {k: getattr(self, k) for k in type(self).model_fields if k in wanted}
        return CertificateIssued(**values)

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers (see the module docstring)."""
        return canonical_bytes(self.model_dump(mode="json", exclude={"signature"}))

    def to_json_bytes(self, *, indent: int | None = 2) -> bytes:
        """The file form: readable JSON in field order (layout does not affect the signature)."""
        text = json.dumps(self.model_dump(mode="json"), ensure_ascii=False, indent=indent)
        return text.encode("utf-8") + b"\n"

    def write(self, path: Path | str) -> None:
        """Store the certificate as a JSON file."""
        Path(path).write_bytes(self.to_json_bytes())


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The RFC 8785 (JCS) bytes of a JSON-ready mapping: what a certificate signature covers.

    A kept JCS implementation rather than our own, so that verifiers elsewhere can rely on
    the standard. Raises ``rfc8785.CanonicalizationError`` (a ``ValueError``) for what JCS
    cannot express: unpaired surrogates, NaN, integers beyond ±(2^53 - 1).
    """
    return rfc8785.dumps(dict(document))


_M = TypeVar("_M", bound=BaseModel)


def validate_document(model: type[_M], data: object, noun: str = "certificate") -> _M:
    """Validate, turning pydantic's error into ``ValidationFailed`` naming the first field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        subject = f"field {where!r}" if where else "document"
        raise ValidationFailed(
            f"{noun} is malformed: {subject}: {first['msg']}{more}",
            field=where,
            reason=f"{noun}.malformed",
        ) from None


def _check_key_id(key_id: str, *, reason: str) -> str:
    if not _KEY_ID.match(key_id):
        raise ConfigurationError(
            f"key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            reason=reason,
        )
    return key_id


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` readable by the owner only; 0600 is set at creation, never later."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigurationError(
            f"{path} exists; refusing to overwrite a signing key", reason=REASON_SIGNING_KEY
        ) from None
    try:
        os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Signer:
    """An Ed25519 private key and its ``key_id``; load once, sign many (~50 µs each)."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigurationError(
                f"a signer needs an Ed25519 key, got {type(private_key).__name__}",
                reason=REASON_SIGNING_KEY,
            )
        self.key_id = _check_key_id(key_id, reason=REASON_SIGNING_KEY)
        self._key = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()

    @classmethod
    def generate(cls, key_id: str) -> Signer:
        """A fresh random key (for ``keygen``, tests and throw-away demos)."""
        return cls(Ed25519PrivateKey.generate(), key_id)

    @classmethod
    def from_file(cls, path: Path | str, key_id: str) -> Signer:
        """Load an unencrypted PKCS8 PEM Ed25519 key; ``ConfigurationError`` says what is wrong."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigurationError(
                f"signing key file {path} does not exist (make one with "
                "`bus certificate keygen --out PATH --key-id ID`)",
                reason=REASON_SIGNING_KEY,
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read signing key file {path}: {exc.strerror or exc}",
                reason=REASON_SIGNING_KEY,
            ) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigurationError(
                f"signing key file {path} is encrypted; the bus expects an unencrypted PKCS8 "
                "PEM key protected by file permissions (0600) or a secret store",
                reason=REASON_SIGNING_KEY,
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise ConfigurationError(
                f"signing key file {path} is not a PEM private key "
                "(expected -----BEGIN PRIVATE KEY-----, PKCS8, Ed25519)",
                reason=REASON_SIGNING_KEY,
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(
                f"signing key file {path} holds a {type(key).__name__.lstrip('_')}, "
                "not an Ed25519 key",
                reason=REASON_SIGNING_KEY,
            )
        return cls(key, key_id)

    def sign_bytes(self, data: bytes) -> bytes:
        """A raw Ed25519 signature of ``data`` (webhook bodies and other non-certificates)."""
        return self._key.sign(data)

    def save(self, path: Path | str, *, overwrite: bool = False) -> None:
        """Write the private key (PKCS8 PEM, unencrypted) with mode 0600."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(Path(path), pem, overwrite=overwrite)

    def public_key_pem(self) -> str:
        """The public key as PEM ``SubjectPublicKeyInfo``, for verifiers."""
        return _public_pem(self.public_key)

    def public_key_file_text(self) -> str:
        """The ``.pub`` file: a ``key_id:`` line, then the PEM (see the module docstring)."""
        return f"key_id: {self.key_id}\n{self.public_key_pem()}"

    def save_public_key(self, path: Path | str) -> None:
        """Write the ``.pub`` file verifiers load (world-readable is fine)."""
        Path(path).write_text(self.public_key_file_text(), encoding="ascii")

    def verifier(self) -> Verifier:
        """A verifier that trusts this signer's key (tests, self-checks)."""
        return Verifier({self.key_id: self.public_key})

    def sign(self, draft: UnsignedCertificate) -> SignedCertificate:
        """Sign ``draft`` with this key; the result carries ``key_id`` and ``signature``."""
        body = draft.model_dump(mode="json")
        body["key_id"] = self.key_id
        signature = self._key.sign(canonical_bytes(body))
        body["signature"] = base64.b64encode(signature).decode("ascii")
        return SignedCertificate.model_validate(body)


def _read_public_key(path: Path) -> tuple[str, Ed25519PublicKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read public key file {path}: {getattr(exc, 'strerror', None) or exc}",
            reason=REASON_PUBLIC_KEY,
        ) from None
    if "PRIVATE KEY-----" in text:
        raise ConfigurationError(
            f"{path} is a private key; give verifiers the public key ({path}.pub)",
            reason=REASON_PUBLIC_KEY,
        )
    head = text.partition("-----BEGIN")[0]
    key_id = None
    for line in head.splitlines():
        if m := _KEY_ID_LINE.match(line):
            key_id = m.group(1)
    if key_id is None:
        key_id = path.name.removesuffix(".pub").removesuffix(".pem")
    try:
        key = serialization.load_pem_public_key(text[len(head) :].encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ConfigurationError(
            f"{path} is not a PEM public key (expected -----BEGIN PUBLIC KEY-----)",
            reason=REASON_PUBLIC_KEY,
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(
            f"{path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 public key",
            reason=REASON_PUBLIC_KEY,
        )
    return _check_key_id(key_id, reason=REASON_PUBLIC_KEY), key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValidationFailed(
                f"certificate is malformed: member {key!r} appears twice",
                field=key,
                reason=REASON_MALFORMED,
            )
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValidationFailed(f"certificate is malformed: {name} is not JSON", reason=REASON_MALFORMED)


def read_document(data: bytes, noun: str) -> dict[str, Any]:
    """Parse a signed document's bytes as JSON, strictly: one object, no duplicate member,
    no NaN, UTF-8 only. Raises ``ValidationFailed`` (reason ``<noun>.malformed``)."""
    malformed = f"{noun}.malformed"
    try:
        check_json_depth(data)
    except DecodeError as exc:
        raise ValidationFailed(f"{noun} is malformed: {exc.message}", reason=malformed) from None
    try:
        raw = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"{noun} is malformed: not UTF-8 text ({exc.reason} at byte {exc.start})",
            reason=malformed,
        ) from None
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"{noun} is malformed: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})",
            reason=malformed,
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of over 4300 digits
        raise ValidationFailed(f"{noun} is malformed: not JSON ({exc})", reason=malformed) from None
    if not isinstance(raw, dict):
        raise ValidationFailed(
            f"{noun} is malformed: expected a JSON object, got {type(raw).__name__}",
            reason=malformed,
        )
    return raw


class Verifier:
    """The public keys a reader trusts, by ``key_id``; checks certificates against them."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key_id, key in (keys or {}).items():
            self.add(key_id, key)

    @classmethod
    def from_paths(cls, paths: Iterable[Path | str]) -> Verifier:
        """Trust the keys in these ``.pub`` files, and every ``*.pub`` in these directories."""
        verifier = cls()
        for p in map(Path, paths):
            if p.is_dir():
                files = sorted(p.glob("*.pub"))
                if not files:
                    raise ConfigurationError(
                        f"directory {p} holds no *.pub public key files",
                        reason=REASON_PUBLIC_KEY,
                    )
            else:
                files = [p]
            for f in files:
                verifier.add(*_read_public_key(f))
        return verifier

    def add(self, key_id: str, key: Ed25519PublicKey) -> None:
        """Trust ``key`` under ``key_id``; one id naming two different keys is refused."""
        _check_key_id(key_id, reason=REASON_PUBLIC_KEY)
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(
                f"key {key_id!r} is not an Ed25519 public key", reason=REASON_PUBLIC_KEY
            )
        known = self._keys.get(key_id)
        if known is not None and known != key:
            raise ConfigurationError(
                f"key id {key_id!r} is given for two different public keys",
                reason=REASON_PUBLIC_KEY,
            )
        self._keys[key_id] = key

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        """The trusted public keys by id (e.g. to check webhook signatures)."""
        return dict(self._keys)

    @property
    def key_ids(self) -> list[str]:
        """The trusted key ids, sorted."""
        return sorted(self._keys)

    def _check(
        self,
        key_id: str,
        serial: str,
        signature: str,
        signed: bytes,
        noun: str = "certificate",
    ) -> None:
        key = self._keys.get(key_id)
        if key is None:
            trusted = ", ".join(self.key_ids) or "none"
            raise BusError(
                f"{noun} {serial} is signed with key {key_id!r}, which is not trusted "
                f"here (trusted keys: {trusted})",
                reason=f"{noun}.unknown_key",
            )
        try:
            key.verify(base64.b64decode(signature), signed)
        except InvalidSignature:
            raise BusError(
                f"the signature of {noun} {serial} does not match its content: it was "
                f"altered after signing, or not signed with key {key_id!r}",
                reason=f"{noun}.bad_signature",
            ) from None

    def check_document(self, raw: dict[str, Any], noun: str) -> None:
        """Check the signature of a parsed signed document (``read_document``) as written."""
        unsigned = {k: v for k, v in raw.items() if k != "signature"}
        try:
            signed = canonical_bytes(unsigned)
        except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
            # e.g. an unpaired surrogate (\\ud800-\\udfff) or an integer JCS cannot hold
            raise ValidationFailed(
                f"{noun} is malformed: no canonical form ({exc})", reason=f"{noun}.malformed"
            ) from None
        self._check(
            str(raw.get("key_id")), str(raw.get("serial")), str(raw.get("signature")), signed, noun
        )

    def verify(self, certificate: SignedCertificate) -> None:
        """Raise ``BusError`` (``certificate.unknown_key`` / ``.bad_signature``) unless valid."""
        self._check(
            certificate.key_id,
            certificate.serial,
            certificate.signature,
            certificate.signed_bytes(),
        )

    def verify_bytes(self, data: bytes) -> SignedCertificate:
        """Check a certificate file's bytes; the signature covers the members as written.

        Raises ``ValidationFailed`` (``certificate.malformed``, ``field`` names the member)
        for anything that is not a well-formed certificate, then ``BusError`` as ``verify``.
        """
        raw = read_document(data, "certificate")
        certificate = validate_document(SignedCertificate, raw)
        self.check_document(raw, "certificate")
        return certificate

    def verify_file(self, path: Path | str) -> SignedCertificate:
        """Read and check a certificate file (see ``verify_bytes``)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BusError(
                f"cannot read certificate file {path}: {exc.strerror or exc}",
                reason=REASON_UNREADABLE,
            ) from None
        return self.verify_bytes(data)


def new_serial(
    issuing_authority: str, request_event_id: str | uuid.UUID, *, requested_at: datetime
) -> str:
    """The serial of the certificate answering one request: ``KS-2026-7G3M9QK2XW4P``.

    Derived, not counted: the first segment of the issuer's code, the year (China time)
    the request was made, and 12 Crockford-base32 characters of SHA-256 over
    ``"<issuing_authority>\\n<request event id>"``. Processing the same request again (an
    at-least-once redelivery, a replay) gives the same serial, so duplicates are
    recognisable downstream; no counter has to be shared between partitions or survive
    a rebalance; and serials do not reveal how many certificates were issued. The year
    comes from the request, not the issuing time, so a retry across New Year keeps it.
    """
    if requested_at.tzinfo is None or requested_at.utcoffset() is None:
        raise ValidationFailed(
            "requested_at must be timezone-aware (the request event's occurred_at)",
            field="requested_at",
        )
    request_id = str(request_event_id).strip()
    with contextlib.suppress(ValueError):  # one spelling per UUID: lower case, dashes
        request_id = str(uuid.UUID(request_id))
    digest = hashlib.sha256(f"{issuing_authority}\n{request_id}".encode()).digest()
    n = int.from_bytes(digest[:8], "big") >> (64 - 5 * SERIAL_CHARS)
    chars = "".join(SERIAL_ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(SERIAL_CHARS)))
    prefix = issuing_authority.split(".", 1)[0].upper()
    return f"{prefix}-{requested_at.astimezone(CHINA).year}-{chars}"


__all__ = [
    "FORMAT",
    "REASON_BAD_SIGNATURE",
    "REASON_MALFORMED",
    "REASON_UNKNOWN_KEY",
    "REASON_UNREADABLE",
    "SignedCertificate",
    "Signer",
    "UnsignedCertificate",
    "Verifier",
    "canonical_bytes",
    "new_serial",
    "read_document",
    "validate_document",
]
