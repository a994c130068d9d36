"""The example connector of docs/connectors.md: the contract, its own rules, and the page.

``DirectorySource`` runs the whole source contract; the tests below add what is particular
to it (files moved to done/, ids for lines without one, bad lines passed on for ingest to
judge), that ``bus connect`` runs it from a connectors file, and that the code shown on the
docs page is exactly the file in the repository.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from bus.dev.processes import settings_env
from bus.errors import ConfigurationError
from bus.schemas.envelope import Envelope
from bus.settings import Settings
from bus.streaming.codec import EventCodec
from connectors import registry
from connectors.base import Source
from connectors.contract import SourceContract, TopicWatcher, sample_events
from connectors.example import DirectorySource

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def drop(folder: Path, name: str, lines: list[str]) -> Path:
    """Write a file the way writers are told to: under another name, then rename."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{name}.part"
    part.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return part.replace(folder / name)


def jsonl(events: list[Envelope], *, without_id: Collection[int] = ()) -> list[str]:
    """Events as JSON lines; the (0-based) positions in ``without_id`` lose their event_id."""
    lines = []
    for i, e in enumerate(events):
        obj = json.loads(EventCodec.to_json(e))
        if i in without_id:
            del obj["event_id"]
        lines.append(json.dumps(obj, ensure_ascii=False))
    return lines


class TestDirectorySource(SourceContract):
    files = 0

    @property
    def inbox(self) -> Path:
        return self.tmp_path / "inbox"

    def make_connector(self, settings: Settings, **kwargs: Any) -> Source:
        return DirectorySource(settings, self.inbox, poll_seconds=0.05, batch_size=5, **kwargs)

    async def feed(self, n: int) -> list[str]:
        self.inbox.mkdir(parents=True, exist_ok=True)
        if n == 0:
            return []
        self.files += 1
        name = f"{self.files:04d}-penalties.jsonl"
        events = sample_events(n)
        every_third = set(range(0, n, 3))  # these get their id from the file name and line
        drop(self.inbox, name, jsonl(events, without_id=every_third))
        return [
            str(DirectorySource.event_id(name, i + 1)) if i in every_third else str(e.event_id)
            for i, e in enumerate(events)
        ]


async def run_until_done(source: DirectorySource, names: list[str]) -> None:
    task = asyncio.create_task(source.serve())
    deadline = time.monotonic() + 20
    try:
        while not all((source.done / n).exists() for n in names):
            assert time.monotonic() < deadline, "files not moved to done/"
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
    finally:
        source.stop()
        await asyncio.wait_for(task, 5)


async def test_a_file_is_moved_to_done_only_after_it_was_published(
    settings: Settings, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    events = sample_events(4)
    drop(inbox, "a.jsonl", jsonl(events))
    drop(inbox, "b.jsonl.part", jsonl(sample_events(2)))  # still being written: left alone
    source = DirectorySource(settings, inbox, poll_seconds=0.05)
    async with TopicWatcher(settings, settings.topic("ingress")) as ingress:
        await run_until_done(source, ["a.jsonl"])
        await ingress.settle(0.3)
    assert sorted(ingress.ids()) == sorted(str(e.event_id) for e in events)
    assert sorted(p.name for p in inbox.iterdir()) == ["b.jsonl.part", "done"]
    assert (source.done / "a.jsonl").read_text().count("\n") == 4


async def test_a_line_that_is_not_an_event_goes_on_as_it_is_and_the_rest_follows(
    settings: Settings, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    good = sample_events(2)
    lines = jsonl(good)
    drop(inbox, "mixed.jsonl", [lines[0], "{not json", "", "[1, 2]", lines[1]])
    source = DirectorySource(settings, inbox, poll_seconds=0.05)
    async with TopicWatcher(settings, settings.topic("ingress")) as ingress:
        await run_until_done(source, ["mixed.jsonl"])
        await ingress.settle(0.3)
    values = sorted(r.value or b"" for r in ingress.records)
    assert b"{not json" in values
    assert b"[1, 2]" in values
    assert len(values) == 4, "the blank line is skipped, every other line published"
    assert {str(e.event_id) for e in good} <= set(ingress.ids())


def test_ids_for_lines_without_one_depend_on_file_and_line_only() -> None:
    assert DirectorySource.event_id("a.jsonl", 3) == DirectorySource.event_id("a.jsonl", 3)
    assert DirectorySource.event_id("a.jsonl", 3) != DirectorySource.event_id("a.jsonl", 4)
    assert DirectorySource.event_id("a.jsonl", 3) != DirectorySource.event_id("b.jsonl", 3)


def test_the_registry_builds_it_from_a_connectors_file(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "connectors.yaml"
    config.write_text(
        "connectors:\n"
        "  - name: tax-inbox\n"
        "    kind: directory\n"
        "    options: {folder: /srv/tax/outbox, poll_seconds: 0.5}\n"
        "  - name: typo\n"
        "    kind: directory\n"
        "    options: {folder: /srv/x, poll_second: 1}\n"
    )
    source = registry.build(settings, registry.find(config, "tax-inbox"))
    assert isinstance(source, DirectorySource)
    assert source.name == "tax-inbox"
    assert source.folder == Path("/srv/tax/outbox")
    assert source.poll_seconds == 0.5
    with pytest.raises(ConfigurationError, match=r"options\.poll_second"):
        registry.build(settings, registry.find(config, "typo"))


@pytest.mark.e2e
async def test_bus_connect_runs_it_until_sigterm(settings: Settings, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    config = tmp_path / "connectors.yaml"
    config.write_text(
        f"connectors:\n  - name: inbox\n    kind: directory\n"
        f"    options: {{folder: '{inbox}', poll_seconds: 0.1}}\n"
    )
    env = {**os.environ, **settings_env(settings), "BUS_CONNECTORS_FILE": str(config)}
    log = tmp_path / "connect.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bus.cli", "connect", "inbox",
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    events = sample_events(3)
    try:
        async with TopicWatcher(settings, settings.topic("ingress")) as ingress:
            deadline = time.monotonic() + 30
            while not inbox.is_dir():  # on_start made it: the connector is up
                assert proc.returncode is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
            drop(inbox, "today.jsonl", jsonl(events))
            await ingress.wait_count(3, 30)
            while not (inbox / "done" / "today.jsonl").exists():
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert code == 0, log.read_text()
    assert sorted(ingress.ids()) == sorted(str(e.event_id) for e in events)


def test_the_docs_page_shows_the_example_exactly() -> None:
    """The walkthrough's code blocks, put together, are the file the tests run."""
    page = (ROOT / "docs" / "connectors.md").read_text(encoding="utf-8")
    start, end = "<!-- example:start -->", "<!-- example:end -->"
    assert start in page
    assert end in page
    section = page.split(start, 1)[1].split(end, 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    shown = "\n\n".join(b.strip("\n") for b in blocks) + "\n"
    actual = (ROOT / "connectors" / "example.py").read_text(encoding="utf-8")
    actual = re.sub(r"\n{3,}", "\n\n", actual)  # the page splits at blank lines: one or two
    assert shown == actual, "docs/connectors.md and connectors/example.py have drifted apart"


def test_the_docs_page_shows_the_example_test_class_exactly() -> None:
    page = (ROOT / "docs" / "connectors.md").read_text(encoding="utf-8")
    assert inspect.getsource(TestDirectorySource) in page
