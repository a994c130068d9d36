"""How Faust's state becomes the ``faust_`` series: recovery per table, commits that count.

The Faust objects are real (an app, its tables and their recovery, never started); their state
is set as Faust sets it during a recovery. The live series are checked on Kafka in
tests/integration/test_faust_metrics.py.
"""

from __future__ import annotations

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from bus.streaming.faust_metrics import FaustMetrics, FaustMonitor, observe


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def app_with_tables() -> tuple[faust.App, FaustMonitor, CollectorRegistry]:
    app = faust.App("unit-faust-metrics", broker="kafka://127.0.0.1:1", store="memory://")
    app.Table("cases", default=int, partitions=3)
    app.Table("tasks", default=int, partitions=3)
    registry = CollectorRegistry()
    return app, observe(app, registry), registry


async def test_remaining_offsets_are_summed_per_table_while_recovering() -> None:
    app, monitor, registry = app_with_tables()
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    cases, tasks = app.tables["cases"], app.tables["tasks"]
    # as Faust's recovery leaves it after reading the highwaters and the start offsets
    for table, partition, highwater, offset in [
        (cases, 0, 99, 9), (cases, 1, 49, 48), (tasks, 2, 10, 10)
    ]:  # fmt: skip
        tp = TP(table.changelog_topic.get_topic_name(), partition)
        recovery.add_active(table, tp)
        recovery.active_highwaters[tp] = highwater
        recovery.active_offsets[tp] = offset
    recovery.in_recovery = True
    monitor.sample_recovery()
    assert sample(registry, "faust_table_recovery_in_progress") == 1
    assert sample(registry, "faust_table_recovery_remaining_offsets", table="cases") == 91
    assert sample(registry, "faust_table_recovery_remaining_offsets", table="tasks") == 0
    # every table has a recovered-records series from the first sample, so increase() works
    assert sample(registry, "faust_table_recovered_records_total", table="tasks") == 0

    recovery.in_recovery = False
    monitor.sample_recovery()
    assert sample(registry, "faust_table_recovery_in_progress") == 0
    assert sample(registry, "faust_table_recovery_remaining_offsets", table="cases") == 0


async def test_changelog_records_fetched_during_recovery_are_counted_for_their_table() -> None:
    app, monitor, registry = app_with_tables()
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    cases = app.tables["cases"]
    changelog = TP(cases.changelog_topic.get_topic_name(), 0)
    recovery.add_active(cases, changelog)
    app.in_recovery = True
    for offset in range(5):
        monitor.track_tp_end_offset(changelog, offset)
    monitor.track_tp_end_offset(TP("some.input", 0), 7)  # not a changelog
    app.in_recovery = False
    monitor.track_tp_end_offset(changelog, 5)  # a standby's read, after recovery
    assert sample(registry, "faust_table_recovered_records_total", table="cases") == 5


async def test_only_commits_that_committed_offsets_are_timed() -> None:
    app = faust.App("unit-faust-commits", broker="kafka://127.0.0.1:1", store="memory://")
    registry = CollectorRegistry()
    monitor = FaustMonitor(app, FaustMetrics(registry))
    empty = monitor.on_commit_initiated(None)  # type: ignore[arg-type]
    monitor.on_commit_completed(None, empty)  # type: ignore[arg-type]
    assert sample(registry, "faust_commit_seconds_count") == 0
    real = monitor.on_commit_initiated(None)  # type: ignore[arg-type]
    monitor.on_tp_commit({TP("cases", 0): 42})
    monitor.on_commit_completed(None, real)  # type: ignore[arg-type]
    assert sample(registry, "faust_commit_seconds_count") == 1


def test_observe_installs_the_monitor_with_a_prefix() -> None:
    app = faust.App("unit-faust-prefix", broker="kafka://127.0.0.1:1", store="memory://")
    registry = CollectorRegistry()
    monitor = observe(app, registry, prefix="cases")
    assert app.monitor is monitor
    assert monitor.interval == 1.0
    assert sample(registry, "cases_rebalances_total") == 0
    assert sample(registry, "faust_rebalances_total") is None
