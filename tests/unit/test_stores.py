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
