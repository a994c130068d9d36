"""A table recovery whose changelog partitions stop arriving is read again, not waited on.

The small Faust app of ``tests/integration/faust_app.py`` writes a table, and a second
instance recovers it with its changelog partitions left paused (the hang seen after a kill -9
hand-over). Its recovery watch seeks and resumes them; without the watch the recovery waits
for good (checked by hand with ``FAUST_APP_WATCH=0``: nothing recovered after minutes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.settings import Settings
from tests.integration import faust_app
from tests.integration.test_faust_metrics import FaustApp, _create_topic, _send, settled
from tests.integration.test_metrics import value

pytestmark = pytest.mark.integration


def test_a_recovery_whose_changelog_stays_paused_is_resumed_and_completes(
    settings: Settings, tmp_path: Path
) -> None:
    app_id = f"{settings.topic_prefix}.faustwatch"
    topic = f"{settings.topic_prefix}.watchwords"
    changelog = f"{app_id}-{faust_app.TABLE}-changelog"
    asyncio.run(_create_topic(settings, topic))
    records = [(f"k{i % 6}", f"word {i}") for i in range(30)]

    first = FaustApp(settings, app_id, topic, tmp_path / "first.log")
    with first.running():
        first.wait(settled, "the first app's rebalance done")
        asyncio.run(_send(settings, topic, records))
        first.wait(
            lambda s: (
                value(s, "faust_messages_sent_total", topic=changelog) == 30
                and value(s, "faust_commit_seconds_count") >= 1
            ),
            "30 changelog writes and a commit",
        )

    second = FaustApp(settings, app_id, topic, tmp_path / "second.log")
    second.env.update({"FAUST_APP_HOLD_CHANGELOG": "1", "FAUST_APP_STALL_S": "2"})
    with second.running():
        recovered = second.wait(
            lambda s: (
                settled(s)
                and value(s, "faust_table_recovered_records_total", table=faust_app.TABLE) == 30
            ),
            "the table recovered from its held changelog",
            timeout=120,
        )
        log = second.log()
    assert "holding [" in log, log[-3000:]  # the hang was made
    assert "sought again and resumed" in log, log[-3000:]  # and the watch undid it
    assert value(recovered, "faust_table_recovery_remaining_offsets", table=faust_app.TABLE) == 0
    assert value(recovered, "faust_table_recovery_resought_partitions_total") >= 1
