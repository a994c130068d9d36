"""State stores write only what changed, and a record rebuilt from its parts is the record."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

from bus.agents.stores import PartedStore, SeenStore
from bus.dev.samples import enterprise, penalty, registered
from bus.domain.record import EnterpriseRecord, TaskEntry, apply_part, encode_part


def test_parted_store_writes_changed_parts_and_rebuilds_the_record() -> None:
    rng = random.Random(8)
    firm = enterprise(rng)
    store: PartedStore[EnterpriseRecord] = PartedStore(
        "t.records", lambda uscc: EnterpriseRecord(uscc=uscc), encode_part, apply_part
    )
    record = EnterpriseRecord(uscc=firm.uscc)
    parts = set(record.apply(registered(firm, rng)))
    for n in range(3):
        parts |= set(record.apply(penalty(firm, rng, n=n + 1)))
    record.unrouted["e-1"] = {"event_type": "penalty.imposed", "event_id": "e-1"}
    store.put(1, firm.uscc, record, parts | {"unrouted:e-1"})
    outs = store.take_pending()
    assert store.take_pending() == []  # written once
    assert len(outs) == 5  # profile, three penalties, one parked event: not the whole record
    assert {o.partition for o in outs} == {1}
    # Rebuild from the changelog records, as a restore would.
    rebuilt = EnterpriseRecord(uscc=firm.uscc)
    for o in outs:
        _, _, part = (o.key or b"").decode().partition(PartedStore.SEP)
        apply_part(rebuilt, part, o.value)
    assert rebuilt == record
    # A removed part becomes a tombstone, and applying it removes the part again.
    del record.unrouted["e-1"]
    store.put(1, firm.uscc, record, {"unrouted:e-1"})
    [tombstone] = store.take_pending()
    assert tombstone.value is None
    apply_part(rebuilt, "unrouted:e-1", None)
    assert "e-1" not in rebuilt.unrouted


def test_a_record_written_before_the_case_engine_restores_without_its_cases() -> None:
    # Open cases and tasks used to live in the record; they are the case engine's now. An
    # upgraded worker restores such a changelog: the record's own parts, the rest skipped.
    rng = random.Random(9)
    firm = enterprise(rng)
    record = EnterpriseRecord(uscc=firm.uscc)
    record.apply(registered(firm, rng))
    old_profile = {
        **json.loads(encode_part(record, "profile") or b"{}"),
        "reviews": {"c": {"matter": "m"}},
        "closed_tasks": {"m|ks.tax|completed": 1},
    }
    task = TaskEntry(task_id="task-1", matter="m", case="c", assignee="ks.tax",
                     due_at=datetime.now(UTC))  # fmt: skip
    rebuilt = EnterpriseRecord(uscc=firm.uscc)
    apply_part(rebuilt, "profile", json.dumps(old_profile).encode())
    apply_part(rebuilt, "task:task-1", task.model_dump_json().encode())
    assert rebuilt == record


def test_seen_store_batches_ids_per_partition_and_forgets_dropped_ones() -> None:
    seen = SeenStore("t.seen")
    a, b, c = (bytes([i]) * 16 for i in range(3))
    seen.add(0, [a, b])
    seen.add(2, [c])
    assert seen.seen(0, a)
    assert not seen.seen(2, a)
    outs = sorted(seen.take_pending(), key=lambda o: o.partition or 0)
    assert [(o.partition, o.value) for o in outs] == [(0, a + b), (2, c)]
    seen.drop([0])
    assert not seen.seen(0, a)
    assert seen.seen(2, c)


def test_records_beyond_the_decoded_ones_are_held_as_bytes_and_come_back_the_same() -> None:
    rng = random.Random(10)
    store: PartedStore[EnterpriseRecord] = PartedStore(
        "t.records", lambda uscc: EnterpriseRecord(uscc=uscc), encode_part, apply_part, live=2
    )
    firms = [enterprise(rng) for _ in range(6)]
    made = {}
    for i, firm in enumerate(firms):
        record = EnterpriseRecord(uscc=firm.uscc)
        parts = set(record.apply(registered(firm, rng)))
        for n in range(i % 3):
            parts |= set(record.apply(penalty(firm, rng, n=n + 1)))
        record.unrouted[f"e-{i}"] = {"event_type": "penalty.imposed", "event_id": f"e-{i}"}
        store.put(i % 2, firm.uscc, record, parts | {f"unrouted:e-{i}"})
        made[firm.uscc] = record.model_copy(deep=True)
    store.take_pending()
    assert len(store._live) == 2, "only the two used last stay decoded"
    assert len(store) == 6
    for i, firm in enumerate(firms):
        again = store.get(i % 2, firm.uscc)
        assert again == made[firm.uscc]
        assert again is not made[firm.uscc]
    assert store.get(0, firms[1].uscc) is None, "a key lives in its own partition only"
    # A record decoded again and changed writes only its changed part, and keeps it.
    first = store.get(0, firms[0].uscc)
    assert first is not None
    parts = set(first.apply(penalty(firms[0], rng, n=9)))
    store.put(0, firms[0].uscc, first, parts)
    written = store.take_pending()
    assert [o.key for o in written] == [f"{firms[0].uscc}{PartedStore.SEP}{p}".encode()
                                        for p in sorted(parts)]  # fmt: skip
    for firm in firms[1:]:  # pushes the first out of the decoded ones
        store.get(firms.index(firm) % 2, firm.uscc)
    store.take_pending()
    assert (0, firms[0].uscc) not in store._live
    assert store.get(0, firms[0].uscc) == first
    # Dropping a partition forgets its records, decoded or not.
    store.drop([1])
    assert store.get(1, firms[1].uscc) is None
    assert len(store) == 3


def test_a_record_whose_every_part_is_removed_is_gone_as_after_a_restore() -> None:
    rng = random.Random(11)
    firm = enterprise(rng)
    store: PartedStore[EnterpriseRecord] = PartedStore(
        "t.records", lambda uscc: EnterpriseRecord(uscc=uscc), encode_part, apply_part, live=1
    )
    record = EnterpriseRecord(uscc=firm.uscc)
    record.unrouted["e-1"] = {"event_type": "penalty.imposed", "event_id": "e-1"}
    store.put(0, firm.uscc, record, {"unrouted:e-1"})
    store.take_pending()
    del record.unrouted["e-1"]
    store.put(0, firm.uscc, record, {"unrouted:e-1"})
    [tombstone] = store.take_pending()
    assert tombstone.value is None
    assert store.get(0, firm.uscc) is None
    assert len(store) == 0
