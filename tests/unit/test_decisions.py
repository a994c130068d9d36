"""Signed decisions: a matter whose outcome says ``issue: decision`` has the event it emits
signed; the decision verifies as a document or as the event delivered, and nothing else
passes for it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from bus.agents.simulate import Simulation, load_scenario
from bus.domain.certificates import Signer, Verifier
from bus.domain.decisions import SignedDecision, verify_decision_bytes
from bus.domain.matters import load_matters
from bus.errors import BusError, ConfigurationError, ValidationFailed
from bus.schemas.envelope import Envelope
from bus.schemas.events import model_for
from bus.streaming.codec import EventCodec

MATTERS = Path(str(resources.files("bus.domain.matters")))
codec = EventCodec()


def refused() -> tuple[Envelope, Verifier]:
    """The refused parallel approval's ``approval.decided`` as the bus published it, and a
    verifier that trusts the simulation's key."""
    sim = Simulation()
    try:
        sim.run(load_scenario(MATTERS / "scenarios" / "parallel-approval-refused.yaml"))
        (event,) = [e for e in sim.events if e.event_type == "approval.decided"]
        return event, Verifier({"simulation": sim.engine.signer.public_key})
    finally:
        sim.close()


def test_the_event_as_delivered_verifies_and_a_changed_one_does_not() -> None:
    event, verifier = refused()
    assert event.payload.key_id == "simulation"
    as_delivered = codec.to_json(event).encode()
    decision = verify_decision_bytes(verifier, as_delivered)
    assert (decision.event_id, decision.decision["decision"]) == (str(event.event_id), "refuse")
    document = SignedDecision.from_event(event)
    assert verify_decision_bytes(verifier, document.to_json_bytes()) == document

    for field, value in (("decision", "approve"), ("application_number", "KS-SP-2026-999999")):
        changed = json.loads(as_delivered)
        changed["payload"][field] = value
        with pytest.raises(BusError) as info:
            verify_decision_bytes(verifier, json.dumps(changed).encode())
        assert info.value.reason == "decision.bad_signature"
    later = json.loads(as_delivered)
    later["occurred_at"] = "2027-01-01T00:00:00Z"  # the same decision, dated otherwise
    with pytest.raises(BusError) as dated:
        verify_decision_bytes(verifier, json.dumps(later).encode())
    assert dated.value.reason == "decision.bad_signature"
    with pytest.raises(BusError) as stranger:
        verify_decision_bytes(Verifier({"x": Signer.generate("x").public_key}), as_delivered)
    assert stranger.value.reason == "decision.unknown_key"
    with pytest.raises(ValidationFailed) as cert:  # not a certificate, however it is signed
        verifier.verify_bytes(document.to_json_bytes())
    assert cert.value.reason == "certificate.malformed"


def test_an_unsigned_decision_names_the_missing_signature() -> None:
    unsigned = model_for("approval.decided")(
        event_type="approval.decided", source="ks.bus", subject="91320583MA1W0A0T3Y",
        payload={"application_number": "KS-SP-2026-000123", "decision": "approve",
                 "opinions": []},
    )  # fmt: skip
    verifier = Verifier({"x": Signer.generate("x").public_key})
    with pytest.raises(ValidationFailed) as info:
        verify_decision_bytes(verifier, codec.to_json(unsigned).encode())
    assert (info.value.reason, info.value.field) == ("decision.malformed", "payload.signature")


def test_a_signed_decision_is_the_event_an_outcome_emits(tmp_path: Path) -> None:
    (tmp_path / "notes.yaml").write_text(
        "name: notes\ntitle: Notes\ntrigger: approval.requested\nlead: ks.approval\n"
        "outcomes:\n  - result: noted\n    issue: decision\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match="a signed decision is the event the outcome"):
        load_matters(tmp_path)
