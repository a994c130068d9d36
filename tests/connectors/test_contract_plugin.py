"""The contract suite as an integrator uses it: from the package, in a project of their own.

A folder outside this repository gets a conftest that loads ``connectors.contract`` as a plugin
and two sinks: one that keeps the contract and one that drops every other record. pytest runs
there in a process of its own, on the session's broker through ``BUS_TEST_BROKER``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import TestBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow("a pytest run of its own: eight contract tests on Kafka"),
]

CONFTEST = 'pytest_plugins = ["connectors.contract"]\n'

SINKS = '''
from typing import Any

from bus.settings import Settings
from connectors.base import Guarantee, Sink, SinkRecord
from connectors.contract import SinkContract


class MemorySink(Sink):
    """Keeps what it is given, in memory: at-least-once."""

    guarantee = Guarantee.AT_LEAST_ONCE

    def __init__(self, settings: Settings, topic: str, outside: dict[str, Any], **kw: Any) -> None:
        super().__init__(settings, topic, batch_wait=0.05, **kw)
        self.outside = outside

    async def write(self, batch: list[SinkRecord]) -> None:
        if self.outside["broken"]:
            raise ConnectionError("the outside system is down")
        self.outside["got"].extend(self.keep(batch))

    def keep(self, batch: list[SinkRecord]) -> list[str]:
        return [r.event_id for r in batch]


class LossySink(MemorySink):
    """Claims at-least-once, yet drops every other record: what the contract must catch."""

    def keep(self, batch: list[SinkRecord]) -> list[str]:
        return [r.event_id for r in batch if r.offset % 2 == 0]


class Kept(SinkContract):
    sink_class: type[MemorySink] = MemorySink

    async def setup_outside(self) -> None:
        self.outside_state = {"got": [], "broken": False}

    def make_connector(self, settings: Settings, **kwargs: Any) -> Sink:
        return self.sink_class(settings, self.sink_topic(settings), self.outside_state, **kwargs)

    async def received(self) -> list[str]:
        return list(self.outside_state["got"])

    async def break_outside(self) -> None:
        self.outside_state["broken"] = True

    async def heal_outside(self) -> None:
        self.outside_state["broken"] = False


class TestMemorySink(Kept):
    pass


class TestLossySink(Kept):
    sink_class = LossySink
'''


def test_an_integrators_project_runs_the_contract_from_the_package(
    broker: TestBroker, tmp_path: Path
) -> None:
    project = tmp_path / "my-connector"
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_sinks.py").write_text(textwrap.dedent(SINKS))
    report = tmp_path / "report.xml"
    env = {**os.environ, "BUS_TEST_BROKER": broker.bootstrap, "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--strict-markers", f"--junitxml={report}", "--rootdir", str(project), str(project),
         "-k", "TestMemorySink or offset_order or guarantee"],  # the lossy sink: two suffice
        cwd=project, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name')}"] = (
            "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
        )
    kept = {k: v for k, v in outcomes.items() if k.startswith("TestMemorySink.")}
    lossy = {k: v for k, v in outcomes.items() if k.startswith("TestLossySink.")}
    assert len(kept) == 6, (kept, done.stdout[-3000:])
    assert set(kept.values()) == {"passed"}, (kept, done.stdout[-3000:])
    assert lossy["TestLossySink.test_writes_every_record_in_offset_order"] == "failed"
    assert lossy["TestLossySink.test_guarantee_is_declared_and_documented"] == "passed"
    assert done.returncode == 1  # some tests failed: the lossy sink's
