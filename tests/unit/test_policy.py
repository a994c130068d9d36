"""The policy beside the directory: reserved identities, bound fields, who acts on a decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.domain.departments import Directory
from bus.domain.policy import Policy
from bus.edge.gateway.keys import issue_key
from bus.errors import AuthorisationError, ConfigurationError
from bus.schemas.envelope import Envelope
from tests.unit.eventdata import build

H, Z = "ks.enforcement.huaqiao", "ks.enforcement.zhoushi"
POLICY = Directory.load().policy


def check(event: Envelope, owner: str | None) -> None:
    """Every check the policy makes: the stateless ones, then ownership."""
    POLICY.check(event)
    found = POLICY.decision_of(event)
    if found is not None:
        POLICY.authorise_act(event, found[0], owner)


def refused(event: Envelope, owner: str | None = None) -> AuthorisationError:
    with pytest.raises(AuthorisationError) as info:
        check(event, owner)
    return info.value


def imposed(source: str = H, agency: str = H) -> Envelope:
    event = build("penalty.imposed", source=source)
    return event.model_copy(update={"payload": event.payload.model_copy(update={"agency": agency})})


def test_the_bus_identity_is_reserved() -> None:
    exc = refused(build("certificate.issued"))
    assert (exc.reason, exc.field) == ("auth.reserved_source", "source")


def test_a_department_named_in_the_payload_must_be_the_publisher() -> None:
    exc = refused(imposed(source=Z, agency=H))
    assert (exc.reason, exc.field) == ("auth.bound_field", "payload.agency")
    assert H in str(exc)
    assert Z in str(exc)
    request = build("certificate.requested")
    forged = request.model_copy(
        update={"payload": request.payload.model_copy(update={"requested_by": "ks.tax"})}
    )
    assert refused(forged).field == "payload.requested_by"
    POLICY.check(imposed())  # its own name: fine


def test_only_the_owner_revokes_and_the_credit_office_repairs_for_anyone() -> None:
    revoked = build("penalty.revoked", source=Z)
    exc = refused(revoked, owner=H)
    assert (exc.reason, exc.field) == ("auth.not_owner", "payload.case_number")
    assert f"belongs to {H}" in str(exc)
    act, _ = POLICY.decision_of(revoked) or pytest.fail("penalty.revoked is an act")
    POLICY.authorise_act(build("penalty.revoked", source=H), act, H)
    repaired = build("penalty.repaired", source="ks.credit")
    act, _ = POLICY.decision_of(repaired) or pytest.fail("penalty.repaired is an act")
    POLICY.authorise_act(repaired, act, H)  # delegated by the policy


def test_acting_on_a_decision_the_bus_never_saw_is_refused_with_its_own_reason() -> None:
    exc = refused(build("penalty.revoked", source=H), owner=None)
    assert exc.reason == "auth.unknown_decision"


def test_nobody_takes_over_another_bureaus_case_number() -> None:
    assert refused(imposed(source=Z, agency=Z), owner=H).reason == "auth.not_owner"
    act, _ = POLICY.decision_of(imposed()) or pytest.fail("penalty.imposed is an act")
    POLICY.authorise_act(imposed(), act, None)  # a new decision: its publisher owns it


def test_decisions_are_keyed_by_enterprise_type_and_number() -> None:
    a = POLICY.decision_of(build("penalty.revoked"))
    b = POLICY.decision_of(imposed())
    assert a is not None
    assert b is not None
    assert a[1] == b[1]  # the revocation finds the imposition's owner
    other = build("penalty.revoked", subject="91320583MA1MGJKL4B")
    assert (POLICY.decision_of(other) or (None, ""))[1] != a[1]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("bound_fields: {penalty.fined: [agency]}", "unknown event type 'penalty.fined'"),
        ("bound_fields: {penalty.imposed: [agent]}", "has no payload field 'agent'"),
        ("acts: {penalty.revoked: {decision: penalty.imposed, key: case_no, allowed: [owner]}}",
         "has no payload field 'case_no'"),
        ("acts: {penalty.revoked: {decision: penalty.imposed, key: case_number, "
         "allowed: [owner, ks.nobody]}}", "'ks.nobody' is not in the directory"),
        ("reserved: [ks.nobody]", "'ks.nobody' is not in the directory"),
        ("acts: {penalty.revoked: {decision: penalty.imposed, key: case_number}}", "allowed"),
    ],
)  # fmt: skip
def test_a_wrong_policy_file_names_the_entry(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        Directory.load(policy=path)
    assert problem in str(info.value)
    assert str(path) in str(info.value)


def test_an_empty_policy_file_refuses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("")
    assert Directory.load(policy=path).policy == Policy()


def test_no_key_is_issued_for_the_bus_identity(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        issue_key(tmp_path / "keys.json", "ks.bus")
    assert info.value.reason == "auth.reserved_source"
    assert not (tmp_path / "keys.json").exists()
