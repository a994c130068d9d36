"""Subscriptions as data: loading, checking, and matching events to departments."""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from bus.agents.route import NOTIFY, Router, Subscription, load_subscriptions
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.departments import Directory
from bus.errors import ConfigurationError
from bus.settings import Settings
from bus.streaming.topics import inbox_topic

DIRECTORY = Directory.load()
RNG = random.Random(7)
FIRM = enterprise(RNG)
PROFILE = {**registered(FIRM, RNG).payload.model_dump(mode="json"), "status": "registered"}


def fine(amount: str = "5000", decided: date = date(2026, 3, 1)):  # type: ignore[no-untyped-def]
    event = penalty(FIRM, random.Random(8), decided_on=decided)
    return event.model_copy(
        update={"payload": event.payload.model_copy(update={"amount": Decimal(amount)})}
    )


def sub(where: dict, types: list[str] | None = None) -> Subscription:
    return Subscription(
        name="s", department="ks.credit", event_types=types or ["penalty.*"], where=where
    )


def test_the_shipped_subscriptions_load_and_name_real_departments() -> None:
    subs = load_subscriptions(None, DIRECTORY)
    assert len(subs) >= 10
    assert all(DIRECTORY.get(s.department) for s in subs)
    assert {"credit-penalties", "huaqiao-town-penalties"} <= {s.name for s in subs}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({}, True),
        ({"enterprise.town": FIRM.town}, True),
        ({"enterprise.town": "Nowhere"}, False),
        ({"enterprise.town": {"in": [FIRM.town, "Lujia"]}}, True),
        ({"enterprise.town": {"not_in": [FIRM.town]}}, False),
        ({"payload.amount": {"gte": 5000}}, True),
        ({"payload.amount": {"gt": 5000}}, False),
        ({"payload.amount": {"lt": 10000.5}}, True),
        ({"payload.decided_on": {"gte": "2026-01-01"}}, True),
        ({"payload.decided_on": {"lt": "2026-01-01"}}, False),
        ({"payload.publicity_until": {"exists": True}}, None),  # depends on the sample
        ({"payload.no_such_field": {"exists": False}}, True),
        ({"payload.no_such_field": "x"}, False),
        ({"source": {"contains": "enforcement"}}, True),
        ({"event_type": "penalty.revoked"}, False),
        ({"enterprise.registered_capital": {"gt": 0}}, True),
        ({"enterprise.status": "registered"}, True),
        ({"payload.amount": {"gte": "not a number"}}, False),
    ],
)
def test_conditions(where: dict, expected: bool | None) -> None:
    event = fine()
    got = sub(where).matches(event, PROFILE)
    if expected is None:
        expected = event.payload.publicity_until is not None
    assert got is expected


def test_every_condition_must_hold() -> None:
    event = fine("200000")
    both = {"enterprise.town": FIRM.town, "payload.amount": {"gte": 100000}}
    assert sub(both).matches(event, PROFILE)
    assert not sub({**both, "enterprise.town": "Elsewhere"}).matches(event, PROFILE)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "subs.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subscriptions:\n  - {name: a, department: ks.nobody, event_types: [penalty.*]}",
         "department 'ks.nobody' is not in the directory"),
        ("subscriptions:\n  - {name: a, department: ks.credit, event_types: [parking.*]}",
         "event type 'parking.*' matches no event type"),
        ("subscriptions:\n  - {name: a, department: ks.credit, event_types: [penalty.*],"
         " where: {town: Huaqiao}}", "subscriptions.0.where"),
        ("subscriptions:\n  - {name: a, department: ks.credit, event_types: [penalty.*],"
         " where: {payload.amount: {about: 3}}}", "one of eq, ne"),
        ("subscriptions:\n  - {name: a, department: ks.credit, event_types: [penalty.*]}\n"
         "  - {name: a, department: ks.tax, event_types: [penalty.*]}", "the name is used twice"),
        ("subscriptions:\n  - {name: a, department: ks.credit, event_types: [penalty.*],"
         " colour: red}", "subscriptions.0.colour"),
        ("subscriptions:\n  - {name: a, department: ks.credit, event_types: []}",
         "subscriptions.0.event_types"),
    ],
)  # fmt: skip
def test_bad_subscription_files_are_refused_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=r"subs\.yaml") as info:
        load_subscriptions(path, DIRECTORY)
    assert message in str(info.value)


def router(subs: list[Subscription]) -> Router:
    return Router(Settings(topic_prefix="x"), DIRECTORY, subs)


def test_recipients_are_notified_departments_and_matching_subscriptions() -> None:
    r = router([sub({"enterprise.town": FIRM.town}), sub({}, ["enterprise.*"])])
    event = fine()
    assert r.recipients(event, PROFILE, "ks.tax,ks.enforcement.huaqiao") == {
        "ks.tax": "notify",
        "ks.enforcement.huaqiao": "notify",
        "ks.credit": "s",
    }
    # A department named but not in the directory has no inbox: skipped, not a crash.
    assert r.recipients(event, {}, "ks.unknown") == {}


def test_inbox_records_keep_the_event_bytes_and_say_why() -> None:
    r = router([sub({})])
    event = fine()
    headers = [*event.kafka_headers(), (NOTIFY, b"ks.tax"), ("bus.reason", b"x")]
    outs = r.outs(event, b"AVRO", headers, PROFILE, "ks.tax")
    assert [(o.topic, o.partition, o.value) for o in outs] == [
        (inbox_topic(r.settings, "ks.tax"), 0, b"AVRO"),
        (inbox_topic(r.settings, "ks.credit"), 0, b"AVRO"),
    ]
    assert dict(outs[1].headers)["bus.route"] == b"s"
    assert dict(outs[1].headers)["event_id"] == str(event.event_id).encode()
    assert not any(k in ("bus.reason", NOTIFY) for k, _ in outs[0].headers)


def test_an_event_waits_only_when_a_subscription_reads_the_enterprise() -> None:
    event = fine()
    assert router([sub({"enterprise.town": "Huaqiao"})]).must_wait(event, registered=False)
    assert not router([sub({"enterprise.town": "Huaqiao"})]).must_wait(event, registered=True)
    assert not router([sub({"payload.amount": {"gt": 1}})]).must_wait(event, registered=False)


def test_before_the_registration_only_subscriptions_on_the_enterprise_wait() -> None:
    r = router([sub({"enterprise.town": FIRM.town}), sub({}, ["penalty.*"]).model_copy(
        update={"department": "ks.tax", "name": "t"})])  # fmt: skip
    event = fine()
    assert r.recipients(event, {}, "ks.amr", registered=False) == {
        "ks.amr": "notify",
        "ks.tax": "t",
    }
    assert r.recipients(event, PROFILE, "ks.amr", deferred=True) == {"ks.credit": "s"}


def test_a_parked_event_is_its_own_changelog_part() -> None:
    from bus.domain.record import EnterpriseRecord, apply_part, encode_part

    event = fine()
    record = EnterpriseRecord(uscc=FIRM.uscc)
    key = str(event.event_id)
    record.unrouted[key] = event.model_dump(mode="json")
    value = encode_part(record, f"unrouted:{key}")
    assert value is not None
    assert key.encode() in value
    assert b'"unrouted"' not in (encode_part(record, "profile") or b"")  # not in the profile
    restored = EnterpriseRecord(uscc=FIRM.uscc)
    apply_part(restored, f"unrouted:{key}", value)
    assert restored.unrouted == record.unrouted
    record.unrouted.clear()
    assert encode_part(record, f"unrouted:{key}") is None  # routed: a tombstone
    apply_part(restored, f"unrouted:{key}", None)
    assert restored.unrouted == {}


_VALUES = [None, "Huaqiao", "huaqiao", "", 0, 5, 100000, 100000.0, 99999.5, True, False,
           Decimal("100000"), Decimal("100000.00"), Decimal("99999.99"), date(2026, 3, 1),
           "2026-03-01", "abc", ["x"], {"a": 1}]  # fmt: skip
_CONDITIONS = [
    "Huaqiao", 100000, 100000.0, Decimal("1E5"), True, None, "2026-03-01",
    *({op: v} for op in ("eq", "ne", "gt", "gte", "lt", "lte")
      for v in ("Huaqiao", 100000, 99999.5, Decimal("100000"), "2026-03-01", True)),
    {"in": ["Huaqiao", 100000]}, {"not_in": ["Huaqiao"]}, {"exists": True}, {"exists": False},
    {"contains": "qiao"},
]  # fmt: skip


@pytest.mark.parametrize("cond", _CONDITIONS, ids=repr)
def test_compiled_conditions_decide_as_the_reference_does(cond: object) -> None:
    # Routing compiles each condition once with fast paths for text and numbers; for every
    # kind of value a payload or profile can hold, the answer is the reference's.
    from bus.agents.route import _test
    from bus.domain.conditions import holds

    test = _test(cond)
    for actual in _VALUES:
        assert test(actual) == holds(actual, cond), (cond, actual)


@pytest.mark.parametrize("registered", [True, False])
@pytest.mark.parametrize("deferred", [False, True])
def test_the_index_leaves_out_only_subscriptions_that_cannot_match(
    registered: bool, deferred: bool
) -> None:
    # Routing narrows an event type's subscriptions by the path most of them test (the
    # town); for every town, an unknown one, none and a non-text value, the recipients are
    # those of evaluating every subscription in the file's order.
    from bus.dev.samples import TOWNS

    router = Router(Settings(), DIRECTORY, load_subscriptions(None, DIRECTORY))
    assert any(i.get is not None for i in router._index.values())  # the shipped file indexes

    def reference(event, profile):  # type: ignore[no-untyped-def]
        to: dict[str, str] = {}
        for s in router.by_type.get(event.event_type, ()):
            if deferred != s.needs_enterprise and (deferred or not registered):
                continue
            if s.department not in to and s.matches(event, profile):
                to[s.department] = s.name
        return to

    event = fine("150000")
    for town in [*TOWNS, "Elsewhere", "", None, 7]:
        profile = {**PROFILE, "town": town}
        got = router.recipients(event, profile, None, registered=registered, deferred=deferred)
        assert got == reference(event, profile), town
        assert list(got) == list(reference(event, profile))  # same order
