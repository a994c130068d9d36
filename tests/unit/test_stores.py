"""State stores write only what changed, and a record rebuilt from its parts is the record."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from bus.agents.stores import PartedStore, SeenStore
from bus.record import EnterpriseRecord, TaskEntry, apply_part, encode_part
from bus.samples import enterprise, penalty, registered


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
    record.tasks["task-1"] = TaskEntry(
        task_id="task-1", matter="m", case="c", assignee="ks.tax", due_at=datetime.now(UTC)
    )
    store.put(1, firm.uscc, record, parts | {"task:task-1"})
    outs = store.take_pending()
    assert store.take_pending() == []  # written once
    assert len(outs) == 5  # profile, three penalties, one task: not the whole record each time
    assert {o.partition for o in outs} == {1}
    # Rebuild from the changelog records, as a restore would.
    rebuilt = EnterpriseRecord(uscc=firm.uscc)
    for o in outs:
        _, _, part = (o.key or b"").decode().partition(PartedStore.SEP)
        apply_part(rebuilt, part, o.value)
    assert rebuilt == record
    # A removed task becomes a tombstone, and applying it removes the task again.
    del record.tasks["task-1"]
    store.put(1, firm.uscc, record, {"task:task-1"})
    [tombstone] = store.take_pending()
    assert tombstone.value is None
    apply_part(rebuilt, "task:task-1", None)
    assert "task-1" not in rebuilt.tasks


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
