"""Signed compliance certificates: round trip, tamper evidence, keys, serials, the golden
canonical form other verifiers reproduce, and the ``certificate`` CLI (in-process and as a
real process).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from bus.cli.certificate import certificate_app
from bus.domain.certificates import (
    FORMAT,
    SignedCertificate,
    Signer,
    UnsignedCertificate,
    Verifier,
    canonical_bytes,
    new_serial,
)
from bus.errors import BusError, ConfigurationError, ValidationFailed
from bus.schemas.certificate import CertificateIssued
from bus.schemas.events import model_for
from tests.unit.eventdata import REAL_USCCS, SUBJECT

ROOT = Path(__file__).resolve().parents[2]
NAME = "昆山花桥精密电子科技有限公司"
REQUEST_ID = "6f1c1d2e-8a4b-4c7e-9f00-1234567890ab"
REQUESTED_AT = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
SEED = bytes(range(32))

PENALTY_1 = {
    "case_number": "昆花综执罚决字〔2024〕第0012号",
    "agency": "ks.enforcement.huaqiao",
    "decided_on": date(2024, 5, 6),
    "state": "repaired",
}
PENALTY_2 = {
    "case_number": "昆周综执罚决字〔2025〕第0456号",
    "agency": "ks.enforcement.zhoushi",
    "decided_on": date(2025, 9, 18),
    "state": "revoked",
}

# The golden document: fixed key (from SEED), fixed content. If these change, every
# certificate ever issued stops verifying; change them only with a new FORMAT.
GOLDEN_SERIAL = "KS-2026-REQN3Z52HHEK"
GOLDEN_CANONICAL = (
    '{"enterprise_name":"昆山花桥精密电子科技有限公司","format":"gov.ks.bus.certificate/1",'
    '"issued_at":"2026-03-02T02:00:00Z","issuing_authority":"ks.bus","key_id":"ks-bus-golden",'
    '"period_end":"2025-12-31","period_start":"2023-01-01","purpose":"ipo",'
    '"record":[{"agency":"ks.enforcement.huaqiao","case_number":"昆花综执罚决字〔2024〕第0012号",'
    '"decided_on":"2024-05-06","state":"repaired"}],'
    '"request_event_id":"6f1c1d2e-8a4b-4c7e-9f00-1234567890ab","result":"record_found",'
    '"serial":"KS-2026-REQN3Z52HHEK","uscc":"91330100799655058B"}'
)
GOLDEN_SIGNATURE = (
    "jwxBOugBEuXCw+ZEKLgM1vGkyqBWPwkaQqFVRa1lhG13kQAJ5qu2d+0LrUnh4O5cpLTf9GLMihh4pPpYoqqtAg=="
)
GOLDEN_PUBLIC_KEY = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="


def draft(**changes: Any) -> UnsignedCertificate:
    fields: dict[str, Any] = {
        "uscc": SUBJECT,
        "enterprise_name": NAME,
        "serial": new_serial("ks.bus", REQUEST_ID, requested_at=REQUESTED_AT),
        "request_event_id": REQUEST_ID,
        "period_start": date(2023, 1, 1),
        "period_end": date(2025, 12, 31),
        "purpose": "ipo",
        "result": "record_found",
        "record": [PENALTY_1],
        "issuing_authority": "ks.bus",
        "issued_at": datetime(2026, 3, 2, 2, 0, tzinfo=UTC),
    }
    return UnsignedCertificate(**(fields | changes))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("ks-bus-2026-01")


@pytest.fixture(scope="module")
def other_signer() -> Signer:
    return Signer.generate("ks-bus-2026-02")


@pytest.fixture(scope="module")
def verifier(signer: Signer, other_signer: Signer) -> Verifier:
    """Trusts both keys, so a swapped key id fails on the signature, not on trust."""
    return Verifier(
        {signer.key_id: signer.public_key, other_signer.key_id: other_signer.public_key}
    )


@pytest.fixture(scope="module")
def certificate(signer: Signer) -> SignedCertificate:
    return signer.sign(draft(record=[PENALTY_1, PENALTY_2]))


def raw_of(cert: SignedCertificate) -> dict[str, Any]:
    return json.loads(cert.to_json_bytes())


def reason_of(exc: pytest.ExceptionInfo[BusError]) -> str:
    return exc.value.reason


# -- round trip ---------------------------------------------------------------------------


def test_sign_then_verify(signer: Signer, verifier: Verifier) -> None:
    cert = signer.sign(draft())
    assert cert.key_id == signer.key_id
    assert cert.format == FORMAT
    assert len(base64.b64decode(cert.signature)) == 64
    verifier.verify(cert)
    assert verifier.verify_bytes(cert.to_json_bytes()) == cert


def test_file_round_trip(signer: Signer, verifier: Verifier, tmp_path: Path) -> None:
    cert = signer.sign(draft())
    cert.write(tmp_path / "cert.json")
    assert verifier.verify_file(tmp_path / "cert.json") == cert
    text = (tmp_path / "cert.json").read_text(encoding="utf-8")
    assert NAME in text  # readable Chinese, not \\u escapes


def test_layout_and_member_order_do_not_matter(
    certificate: SignedCertificate, verifier: Verifier
) -> None:
    raw = raw_of(certificate)
    reordered = dict(reversed(list(raw.items())))
    verifier.verify_bytes(json.dumps(reordered, ensure_ascii=True).encode())
    verifier.verify_bytes(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode())


def test_a_clean_certificate_with_an_empty_record(signer: Signer, verifier: Verifier) -> None:
    cert = signer.sign(draft(result="clean", record=[]))
    assert verifier.verify_bytes(cert.to_json_bytes()).record == []


def test_signing_is_deterministic(signer: Signer) -> None:
    assert signer.sign(draft()).signature == signer.sign(draft()).signature


def test_signing_is_fast(signer: Signer) -> None:
    d = draft()
    start = time.perf_counter()
    for _ in range(1000):
        signer.sign(d)
    per_sign = (time.perf_counter() - start) / 1000
    assert per_sign < 1e-3, f"{per_sign * 1e6:.0f} µs per certificate"


# -- tamper evidence -----------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = raw
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[int(last) if isinstance(target, list) else last] = value

    return mutate


def _flip_signature(raw: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(raw["signature"]))
    sig[10] ^= 1
    raw["signature"] = base64.b64encode(bytes(sig)).decode()


def _drop_penalty(raw: dict[str, Any]) -> None:
    raw["record"].pop()


def _add_penalty(raw: dict[str, Any]) -> None:
    raw["record"].append({**raw["record"][0], "case_number": "昆花综执罚决字〔2026〕第0001号"})


def _swap_penalties(raw: dict[str, Any]) -> None:
    raw["record"].reverse()


# Each change leaves a well-formed certificate; only the signature can tell.
TAMPERING: dict[str, Mutation] = {
    "uscc": _set("uscc", REAL_USCCS[0]),
    "enterprise_name": _set("enterprise_name", NAME.replace("精密", "精工")),
    "serial": _set("serial", "KS-2026-REQN3Z52HHEM"),
    "request_event_id": _set("request_event_id", "6f1c1d2e-8a4b-4c7e-9f00-1234567890ac"),
    "period_start": _set("period_start", "2022-12-31"),
    "period_end": _set("period_end", "2026-01-01"),
    "purpose": _set("purpose", "financing"),
    "result": _set("result", "clean"),
    "record": _drop_penalty,
    "record.added": _add_penalty,
    "record.reordered": _swap_penalties,
    "record.0.case_number": _set("record.0.case_number", "昆花综执罚决字〔2024〕第0013号"),
    "record.0.agency": _set("record.0.agency", "ks.enforcement.zhoushi"),
    "record.0.decided_on": _set("record.0.decided_on", "2024-05-07"),
    "record.0.state": _set("record.0.state", "active"),
    "record.1.state": _set("record.1.state", "active"),
    "issuing_authority": _set("issuing_authority", "ks.finance"),
    "issued_at": _set("issued_at", "2026-03-02T02:00:01Z"),
    "key_id": _set("key_id", "ks-bus-2026-02"),  # the other trusted key
    "signature": _flip_signature,
    "issued_at.same_instant": _set("issued_at", "2026-03-02T10:00:00+08:00"),
    "enterprise_name.padded": _set("enterprise_name", f" {NAME}"),
}


def test_the_tampering_cases_cover_every_field() -> None:
    """A field added to the certificate must get a tampering case here."""
    covered = {name.split(".")[0] for name in TAMPERING}
    assert covered == set(SignedCertificate.model_fields) - {"format"}
    record_fields = {name.split(".")[2] for name in TAMPERING if name.startswith("record.0.")}
    assert record_fields == set(PENALTY_1)


@pytest.mark.parametrize("case", list(TAMPERING))
def test_any_change_to_a_file_breaks_the_signature(
    case: str, certificate: SignedCertificate, verifier: Verifier
) -> None:
    raw = raw_of(certificate)
    before = copy.deepcopy(raw)
    TAMPERING[case](raw)
    assert raw != before
    with pytest.raises(BusError) as exc:
        verifier.verify_bytes(json.dumps(raw, ensure_ascii=False).encode())
    assert reason_of(exc) == "certificate.bad_signature"
    assert certificate.serial in str(exc.value) or case == "serial"


@pytest.mark.parametrize(
    "case", [c for c in TAMPERING if c not in ("issued_at.same_instant", "enterprise_name.padded")]
)
def test_any_change_to_a_model_breaks_the_signature(
    case: str, certificate: SignedCertificate, verifier: Verifier
) -> None:
    raw = raw_of(certificate)
    TAMPERING[case](raw)
    altered = SignedCertificate.model_validate(raw)
    with pytest.raises(BusError) as exc:
        verifier.verify(altered)
    assert reason_of(exc) == "certificate.bad_signature"


def test_an_unknown_key_id(certificate: SignedCertificate, signer: Signer) -> None:
    stranger = Verifier({"ks-bus-2025-01": Signer.generate("x").public_key})
    with pytest.raises(BusError) as exc:
        stranger.verify_bytes(certificate.to_json_bytes())
    assert reason_of(exc) == "certificate.unknown_key"
    assert signer.key_id in str(exc.value)
    assert "ks-bus-2025-01" in str(exc.value)  # says which keys are trusted


def test_a_key_id_changed_to_an_untrusted_one(
    certificate: SignedCertificate, verifier: Verifier
) -> None:
    raw = raw_of(certificate) | {"key_id": "ks-bus-forged"}
    with pytest.raises(BusError) as exc:
        verifier.verify_bytes(json.dumps(raw).encode())
    assert reason_of(exc) == "certificate.unknown_key"


def test_the_wrong_key_under_the_right_id(certificate: SignedCertificate, signer: Signer) -> None:
    impostor = Verifier({signer.key_id: Signer.generate(signer.key_id).public_key})
    with pytest.raises(BusError) as exc:
        impostor.verify(certificate)
    assert reason_of(exc) == "certificate.bad_signature"


# -- malformed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (b"", None, "not JSON"),
        (b"certificate", None, "not JSON"),
        (b'{"uscc": ', None, "not JSON"),
        (b"\xff\xfe{}", None, "not UTF-8"),
        (b"[]", None, "JSON object"),
        (b'"KS-2026"', None, "JSON object"),
        (b'{"serial": NaN}', None, "NaN"),
    ],
)
def test_bytes_that_are_not_a_certificate(
    data: bytes, field: str | None, words: str, verifier: Verifier
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        verifier.verify_bytes(data)
    assert exc.value.reason == "certificate.malformed"
    assert exc.value.field == field
    assert words in str(exc.value)


def _without(path: str) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = raw
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        del target[last]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_without("enterprise_name"), "enterprise_name"),
        (_without("uscc"), "uscc"),
        (_without("signature"), "signature"),
        (_without("key_id"), "key_id"),
        (_without("issued_at"), "issued_at"),
        (_without("record.0.state"), "record.0.state"),
        (_set("uscc", "91330100799655058A"), "uscc"),  # check character wrong
        (_set("purpose", "curiosity"), "purpose"),
        (_set("issued_at", "2026-03-02T02:00:00"), "issued_at"),  # naive
        (_set("record.1.agency", "X"), "record.1.agency"),
        (_set("signature", "not base64!"), "signature"),
        (_set("signature", base64.b64encode(b"short").decode()), "signature"),
        (_set("format", "gov.ks.bus.certificate/2"), "format"),
        (_set("key_id", "a key"), "key_id"),
        (_set("period_end", "2022-01-01"), None),  # before period_start: the whole document
        (_set("extra_clause", "and also tax compliant"), "extra_clause"),
    ],
)
def test_a_malformed_certificate_names_the_field(
    mutate: Mutation, field: str | None, certificate: SignedCertificate, verifier: Verifier
) -> None:
    raw = raw_of(certificate)
    mutate(raw)
    with pytest.raises(ValidationFailed) as exc:
        verifier.verify_bytes(json.dumps(raw, ensure_ascii=False).encode())
    assert exc.value.reason == "certificate.malformed"
    assert exc.value.field == field
    if field:
        assert repr(field) in str(exc.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_set("enterprise_name", "昆山花桥\u202e司公限有技科"), "enterprise_name"),
        (_set("record.0.case_number", "昆花综执罚决字\x00〔2024〕"), "record.0.case_number"),
        (_set("serial", "KS-2026-\x1b[8m"), "serial"),
        (_set("period_start", "0001-01-01"), "period_start"),
        (_set("issued_at", "9999-12-31T23:59:59-01:00"), "issued_at"),  # used to overflow
    ],
)
def test_hostile_text_and_dates_are_malformed_not_signed_or_crashing(
    mutate: Mutation, field: str, certificate: SignedCertificate, verifier: Verifier
) -> None:
    raw = raw_of(certificate)
    mutate(raw)
    with pytest.raises(ValidationFailed) as exc:
        verifier.verify_bytes(json.dumps(raw, ensure_ascii=False).encode())
    assert (exc.value.reason, exc.value.field) == ("certificate.malformed", field)


def test_no_certificate_with_a_bidi_override_can_be_drafted() -> None:
    with pytest.raises(ValidationError) as exc:
        draft(enterprise_name="昆山\u202e司公限有")
    assert exc.value.errors()[0]["type"] == "schema.text"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32 levels"),
        (b'{"serial": ' + b"[" * 2000 + b"]" * 2000 + b"}", "deeper than 32 levels"),
        (b'{"serial": ' + b"7" * 5000 + b"}", "4300 digits"),
    ],
)
def test_hostile_json_is_malformed_not_a_crash(data: bytes, words: str, verifier: Verifier) -> None:
    """Anyone may ask the gateway to verify: these used to end in a 500."""
    with pytest.raises(ValidationFailed) as exc:
        verifier.verify_bytes(data)
    assert exc.value.reason == "certificate.malformed"
    assert words in str(exc.value)


def test_a_duplicated_member_is_refused(certificate: SignedCertificate, verifier: Verifier) -> None:
    text = certificate.to_json_bytes().decode().rstrip()
    doubled = text[:-1] + ', "result": "clean"}'
    with pytest.raises(ValidationFailed) as exc:
        verifier.verify_bytes(doubled.encode())
    assert exc.value.reason == "certificate.malformed"
    assert exc.value.field == "result"


def test_malformed_and_signature_errors_share_the_bus_root(verifier: Verifier) -> None:
    with pytest.raises(BusError):
        verifier.verify_bytes(b"{}")


def test_an_unreadable_certificate_file(verifier: Verifier, tmp_path: Path) -> None:
    with pytest.raises(BusError) as exc:
        verifier.verify_file(tmp_path / "nope.json")
    assert reason_of(exc) == "certificate.unreadable"


# -- the golden canonical form ---------------------------------------------------------------


def golden_signer() -> Signer:
    return Signer(Ed25519PrivateKey.from_private_bytes(SEED), "ks-bus-golden")


def golden_certificate() -> SignedCertificate:
    return golden_signer().sign(draft())


def test_golden_canonical_bytes() -> None:
    cert = golden_certificate()
    assert cert.serial == GOLDEN_SERIAL
    assert cert.signed_bytes() == GOLDEN_CANONICAL.encode("utf-8")
    raw = json.loads(cert.to_json_bytes())
    del raw["signature"]
    assert canonical_bytes(raw) == GOLDEN_CANONICAL.encode("utf-8")


def test_golden_signature() -> None:
    signer = golden_signer()
    assert base64.b64encode(signer.public_key.public_bytes_raw()).decode() == GOLDEN_PUBLIC_KEY
    assert golden_certificate().signature == GOLDEN_SIGNATURE
    # What a verifier elsewhere does: raw public key, canonical bytes, base64 signature.
    signer.public_key.verify(base64.b64decode(GOLDEN_SIGNATURE), GOLDEN_CANONICAL.encode())


LEGACY = Path(__file__).parent / "data" / "legacy-certificates"
LEGACY_NAMES = sorted(p.stem for p in LEGACY.glob("*.json"))


def test_there_are_legacy_certificates() -> None:
    assert len(LEGACY_NAMES) == 4


@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_certificates_signed_by_the_old_canonicaliser_still_verify(name: str) -> None:
    """Files signed before the canonical form came from a library: they verify, unchanged."""
    verifier = Verifier.from_paths([LEGACY / "ks-bus-2026-legacy.pub"])
    cert = verifier.verify_file(LEGACY / f"{name}.json")
    old = (LEGACY / f"{name}.signed").read_bytes()
    assert cert.signed_bytes() == old
    raw = json.loads((LEGACY / f"{name}.json").read_bytes())
    del raw["signature"]
    assert canonical_bytes(raw) == old


def old_canonical_bytes(document: dict[str, Any]) -> bytes:
    """The hand-written canonical form the bus signed with up to 0.1.0."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_TEXT = st.text(
    st.characters(exclude_categories=("Cs",)) | st.sampled_from('"\\/\b\t\u2028\ufeff😀𠀀'),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    name=_TEXT,
    case_number=_TEXT,
    state=_TEXT,
    micro=st.integers(0, 999_999),
    clean=st.booleans(),
)
def test_the_library_form_is_the_old_form_for_every_certificate(
    name: str, case_number: str, state: str, micro: int, clean: bool
) -> None:
    """Whatever text a certificate can hold, RFC 8785 bytes are the bytes signed before."""
    penalty = {**PENALTY_1, "case_number": case_number, "state": state}
    try:
        d = draft(
            enterprise_name=name,
            record=[] if clean else [penalty, PENALTY_2],
            result="clean" if clean else "record_found",
            issued_at=datetime(2026, 3, 2, 2, 0, 0, micro, tzinfo=UTC),
        )
    except ValidationError:
        reject()
    body = {**d.model_dump(mode="json"), "key_id": "ks-bus-2026-01"}
    assert canonical_bytes(body) == old_canonical_bytes(body)


@pytest.mark.parametrize(
    ("document", "old", "new"),
    [
        ({"n": 1.0}, b'{"n":1.0}', b'{"n":1}'),
        ({"n": 1e16}, b'{"n":1e+16}', b'{"n":10000000000000000}'),
        ({"n": 1e-7}, b'{"n":1e-07}', b'{"n":1e-7}'),
        ({"n": -0.0}, b'{"n":-0.0}', b'{"n":0}'),
        ({"\ue000": 1, "\U0001f600": 2}, '{"\ue000":1,"\U0001f600":2}'.encode(),
         '{"\U0001f600":2,"\ue000":1}'.encode()),
    ],
)  # fmt: skip
def test_where_the_old_and_the_library_form_differ(
    document: dict[str, Any], old: bytes, new: bytes
) -> None:
    """Only numbers and names beyond U+FFFF, which no certificate holds (module docstring)."""
    assert old_canonical_bytes(document) == old
    assert canonical_bytes(document) == new


@pytest.mark.parametrize("value", [1767225600, 1767225600.5])
def test_a_number_for_a_date_fails_on_the_signature_under_either_form(
    certificate: SignedCertificate, verifier: Verifier, value: float
) -> None:
    raw = raw_of(certificate) | {"issued_at": value}
    SignedCertificate.model_validate(raw)  # a lenient model takes Unix seconds for a date
    with pytest.raises(BusError) as exc:
        verifier.verify_bytes(json.dumps(raw, ensure_ascii=False).encode())
    assert reason_of(exc) == "certificate.bad_signature"


@pytest.mark.parametrize(
    ("member", "value"),
    [('"enterprise_name": "\\ud800"', "\ud800"), ('"issued_at": 9007199254740993', 2**53 + 1)],
)
def test_values_rfc8785_cannot_express_are_malformed(
    certificate: SignedCertificate, verifier: Verifier, member: str, value: object
) -> None:
    with pytest.raises(ValueError, match=r"UTF-8|safe integer"):
        canonical_bytes({"x": value})
    text = json.dumps(raw_of(certificate), ensure_ascii=False)
    start = text.index(member.split(":")[0])
    end = text.index(",", start)
    with pytest.raises(ValidationFailed) as exc:
        verifier.verify_bytes((text[:start] + member + text[end:]).encode())
    assert exc.value.reason == "certificate.malformed"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_golden_signature_verifies_with_openssl(tmp_path: Path) -> None:
    """A non-Python verifier reading the .pub file (key_id line and all) accepts it."""
    golden_signer().save_public_key(tmp_path / "ks-bus-golden.pub")
    (tmp_path / "data").write_bytes(GOLDEN_CANONICAL.encode())
    (tmp_path / "sig").write_bytes(base64.b64decode(GOLDEN_SIGNATURE))
    args = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "ks-bus-golden.pub", "-rawin"]
    ok = subprocess.run(
        [*args, "-in", "data", "-sigfile", "sig"], cwd=tmp_path, capture_output=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "data").write_bytes(GOLDEN_CANONICAL.replace("2025-12-31", "2026-12-31").encode())
    bad = subprocess.run(
        [*args, "-in", "data", "-sigfile", "sig"], cwd=tmp_path, capture_output=True, timeout=30
    )
    assert bad.returncode != 0


# -- the event payload ---------------------------------------------------------------------


def test_payload_round_trip_through_an_event(
    certificate: SignedCertificate, verifier: Verifier
) -> None:
    payload = certificate.to_payload()
    assert isinstance(payload, CertificateIssued)
    assert payload.signature == certificate.signature
    request = model_for("certificate.requested")(
        event_type="certificate.requested",
        source="ks.finance",
        subject=certificate.uscc,
        payload={
            "period_start": date(2023, 1, 1),
            "period_end": date(2025, 12, 31),
            "purpose": "ipo",
            "requested_by": "ks.finance",
            "applicant": "张敏",
        },
    )
    issued = request.caused("certificate.issued", payload, source="ks.bus")
    rebuilt = SignedCertificate.from_payload(issued.payload, uscc=issued.subject)
    assert rebuilt == certificate
    verifier.verify(rebuilt)


def test_from_payload_with_another_subject_does_not_verify(
    certificate: SignedCertificate, verifier: Verifier
) -> None:
    rebuilt = SignedCertificate.from_payload(certificate.to_payload(), uscc=REAL_USCCS[0])
    with pytest.raises(BusError) as exc:
        verifier.verify(rebuilt)
    assert reason_of(exc) == "certificate.bad_signature"


# -- serial numbers ------------------------------------------------------------------------


def test_serial_is_deterministic_per_request() -> None:
    a = new_serial("ks.bus", REQUEST_ID, requested_at=REQUESTED_AT)
    assert a == GOLDEN_SERIAL
    assert new_serial("ks.bus", REQUEST_ID, requested_at=REQUESTED_AT) == a
    # one UUID, however it is spelled or typed
    assert new_serial("ks.bus", uuid.UUID(REQUEST_ID), requested_at=REQUESTED_AT) == a
    assert new_serial("ks.bus", REQUEST_ID.upper(), requested_at=REQUESTED_AT) == a
    # the same instant in another zone
    local = REQUESTED_AT.astimezone(timezone(timedelta(hours=8)))
    assert new_serial("ks.bus", REQUEST_ID, requested_at=local) == a


def test_serials_differ_between_requests_and_issuers() -> None:
    serials = {new_serial("ks.bus", uuid.uuid4(), requested_at=REQUESTED_AT) for _ in range(5000)}
    assert len(serials) == 5000
    other = new_serial("sz.bus", REQUEST_ID, requested_at=REQUESTED_AT)
    assert other.startswith("SZ-2026-")
    assert other[8:] != GOLDEN_SERIAL[8:]


def test_serial_shape() -> None:
    serial = new_serial("ks.bus", REQUEST_ID, requested_at=REQUESTED_AT)
    prefix, year, code = serial.split("-")
    assert (prefix, year, len(code)) == ("KS", "2026", 12)
    assert not set(code) & set("ILOU")
    assert 8 <= len(serial) <= 64  # what the certificate.issued schema allows


def test_serial_year_is_the_request_year_in_china() -> None:
    new_year_eve = datetime(2025, 12, 31, 17, 0, tzinfo=UTC)  # 01:00 on 1 January in Kunshan
    assert new_serial("ks.bus", REQUEST_ID, requested_at=new_year_eve).startswith("KS-2026-")


def test_serial_needs_an_aware_instant() -> None:
    with pytest.raises(ValidationFailed) as exc:
        new_serial("ks.bus", REQUEST_ID, requested_at=datetime(2026, 3, 2, 9, 30))
    assert exc.value.field == "requested_at"


# -- keys ------------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A careless umask (0000): the key must still come out 0600."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_private_key_file_is_0600(tmp_path: Path, open_umask: None) -> None:
    signer = Signer.generate("ks-bus-2026-01")
    signer.save(tmp_path / "key.pem")
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    loaded = Signer.from_file(tmp_path / "key.pem", "ks-bus-2026-01")
    assert loaded.public_key_pem() == signer.public_key_pem()
    assert loaded.sign(draft()).signature == signer.sign(draft()).signature


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    first = Signer.generate("k1")
    first.save(path)
    with pytest.raises(ConfigurationError):
        Signer.generate("k1").save(path)
    assert Signer.from_file(path, "k1").public_key_pem() == first.public_key_pem()
    path.chmod(0o644)
    second = Signer.generate("k1")
    second.save(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Signer.from_file(path, "k1").public_key_pem() == second.public_key_pem()


def _ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _encrypted_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist"),
        (b"not a key", "not a PEM private key"),
        (_ec_pem(), "not an Ed25519 key"),
        (_encrypted_pem(), "encrypted"),
    ],
)
def test_a_bad_signing_key_file(content: bytes | None, words: str, tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError) as exc:
        Signer.from_file(path, "ks-bus-2026-01")
    assert words in str(exc.value)
    assert str(path) in str(exc.value)


def test_a_bad_key_id_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Signer.generate("two words")


def test_verifier_from_files_and_directories(
    tmp_path: Path, signer: Signer, other_signer: Signer, certificate: SignedCertificate
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    signer.save_public_key(keys / "anything.pub")  # key id from the key_id line
    (keys / "ks-bus-2026-02.pub").write_text(other_signer.public_key_pem())  # from the name
    (keys / "README").write_text("not a key")
    v = Verifier.from_paths([keys])
    assert v.key_ids == ["ks-bus-2026-01", "ks-bus-2026-02"]
    v.verify(certificate)
    assert Verifier.from_paths([keys / "anything.pub"]).key_ids == ["ks-bus-2026-01"]


def test_verifier_refuses_bad_key_files(tmp_path: Path, signer: Signer) -> None:
    signer.save(tmp_path / "private.pem")
    with pytest.raises(ConfigurationError, match="private key"):
        Verifier.from_paths([tmp_path / "private.pem"])
    (tmp_path / "junk.pub").write_text("junk")
    with pytest.raises(ConfigurationError, match="not a PEM public key"):
        Verifier.from_paths([tmp_path / "junk.pub"])
    with pytest.raises(ConfigurationError, match="cannot read"):
        Verifier.from_paths([tmp_path / "missing.pub"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigurationError, match=r"no \*\.pub"):
        Verifier.from_paths([empty])


def test_one_key_id_for_two_keys_is_refused(signer: Signer) -> None:
    v = Verifier({signer.key_id: signer.public_key})
    v.add(signer.key_id, signer.public_key)  # the same key again is fine
    with pytest.raises(ConfigurationError):
        v.add(signer.key_id, Signer.generate("x").public_key)


# -- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def issued(tmp_path: Path, signer: Signer, certificate: SignedCertificate) -> tuple[Path, Path]:
    """A certificate file and the issuer's .pub file."""
    certificate.write(tmp_path / "cert.json")
    signer.save_public_key(tmp_path / "issuer.pub")
    return tmp_path / "cert.json", tmp_path / "issuer.pub"


def _tamper_file(path: Path) -> Path:
    raw = json.loads(path.read_bytes())
    raw["result"] = "clean"
    raw["record"] = []
    out = path.with_name("tampered.json")
    out.write_text(json.dumps(raw, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(certificate_app, name="certificate")
    return app


def test_cli_verify_in_process(issued: tuple[Path, Path], certificate: SignedCertificate) -> None:
    cert, pub = issued
    runner = CliRunner()
    ok = runner.invoke(_cli(), ["certificate", "verify", str(cert), "--public-key", str(pub)])
    assert ok.exit_code == 0, ok.output
    expected = (
        certificate.serial,
        certificate.uscc,
        NAME,
        "2023-01-01 to 2025-12-31",
        "record_found, 2 penalties",
        "ks.bus",
        "2026-03-02T02:00:00Z",
        "ks-bus-2026-01",
    )
    for text in expected:
        assert text in ok.stdout
    bad = runner.invoke(_cli(), ["certificate", "verify", str(_tamper_file(cert)), "-k", str(pub)])
    assert bad.exit_code == 1
    assert "certificate.bad_signature" in bad.stderr
    none = runner.invoke(
        _cli(), ["certificate", "verify", str(cert)], env={"BUS_CERT_PUBLIC_KEYS": ""}
    )
    assert none.exit_code == 2
    assert "BUS_CERT_PUBLIC_KEYS" in none.stderr


def test_cli_keygen_in_process(tmp_path: Path, open_umask: None) -> None:
    out = tmp_path / "ks-bus-2026-01.pem"
    result = CliRunner().invoke(
        _cli(), ["certificate", "keygen", "--out", str(out), "--key-id", "ks-bus-2026-01"]
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = CliRunner().invoke(
        _cli(), ["certificate", "keygen", "--out", str(out), "--key-id", "ks-bus-2026-01"]
    )
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.stderr


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    return subprocess.run(
        [sys.executable, "-m", "bus.cli.certificate", *args],
        cwd=ROOT,
        env=full_env | (env or {}),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def test_cli_verify_as_a_process(issued: tuple[Path, Path], certificate: SignedCertificate) -> None:
    cert, pub = issued
    ok = _run("verify", str(cert), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert f"valid certificate {certificate.serial}" in ok.stdout
    assert NAME in ok.stdout
    assert certificate.uscc in ok.stdout

    bad = _run("verify", str(_tamper_file(cert)), "--public-key", str(pub))
    assert bad.returncode == 1
    assert "INVALID certificate.bad_signature" in bad.stderr
    assert bad.stdout == ""

    (cert.parent / "junk.json").write_text('{"uscc": "91330100799655058B"}')
    junk = _run("verify", str(cert.parent / "junk.json"), "--public-key", str(pub))
    assert junk.returncode == 1
    assert "certificate.malformed" in junk.stderr


def test_cli_keys_from_the_environment(
    issued: tuple[Path, Path], tmp_path: Path, other_signer: Signer
) -> None:
    cert, pub = issued
    other_signer.save_public_key(tmp_path / "other.pub")
    keys = f"{tmp_path / 'other.pub'}{os.pathsep}{pub}"
    assert _run("verify", str(cert), env={"BUS_CERT_PUBLIC_KEYS": keys}).returncode == 0
    only_other = _run(
        "verify", str(cert), env={"BUS_CERT_PUBLIC_KEYS": str(tmp_path / "other.pub")}
    )
    assert only_other.returncode == 1
    assert "certificate.unknown_key" in only_other.stderr


def test_cli_keygen_then_verify_as_processes(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "issuer.pem"
    key.parent.mkdir()
    made = _run("keygen", "--out", str(key), "--key-id", "ks-bus-2027-01")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "issuer.pem.pub").read_text().startswith("key_id: ks-bus-2027-01\n")
    Signer.from_file(key, "ks-bus-2027-01").sign(draft()).write(tmp_path / "cert.json")
    ok = _run("verify", str(tmp_path / "cert.json"), "--public-key", str(key.parent))
    assert ok.returncode == 0, ok.stderr
    assert "ks-bus-2027-01" in ok.stdout
