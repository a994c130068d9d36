"""The case engine on Faust under kill -9, rebalance and a zombie worker, on Apache Kafka.

Two real worker processes of ``bench/cases.py`` in one group; triggers published at a steady
rate; one worker SIGKILLed three times at random moments (restarted each time), then one
frozen (SIGSTOP) past its session timeout and woken (SIGCONT). Then ``decisions`` is read with
``read_committed`` and ``read_uncommitted``. What each guarantee gave, and why: the section
"The case engine on Faust" of docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from bench.cases import fault_run
from tests.conftest import TestBroker

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(broker: TestBroker) -> str:
    """Apache Kafka's bootstrap address: the guarantees under test are Kafka's own."""
    if broker.engine not in ("kafka", "external"):
        pytest.skip("needs Apache Kafka (BUS_TEST_BROKER=kafka): transactions and rebalances")
    return broker.bootstrap.removeprefix("kafka://").replace(";", ",")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_every_trigger_has_one_decision_after_kills_and_a_zombie(
    kafka: str, tmp_path: Path, guarantee: str
) -> None:
    seed = random.randrange(1 << 16)
    result = asyncio.run(
        fault_run(kafka, tmp_path, guarantee=guarantee, count=4000, rate=200, kills=3, seed=seed)
    )
    print(f"seed {seed}\n{result.summary()}")
    assert result.kills == 3, result.summary()
    assert result.pauses == 1, result.summary()
    # What we rely on, under either guarantee: nothing lost, and a decision id never names two
    # different documents, so consumers drop copies by id.
    assert result.lost == set(), result.summary()
    assert result.committed.conflicting == set(), result.summary()
    assert result.uncommitted.conflicting == set(), result.summary()
