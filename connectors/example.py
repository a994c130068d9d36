"""An inbox folder as a source: the connector docs/connectors.md builds step by step.

Many department systems cannot speak Kafka or HTTP but can write a file into a shared
folder. ``DirectorySource`` publishes every JSON-lines file that appears there, one event
per line, and moves the file to ``done/`` once the broker has all of it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from bus.settings import Settings
from connectors.base import Guarantee, Source

NAMESPACE = uuid.UUID("6f1c44a2-3b51-4c1e-9a57-0d3c1e2f8b90")
"""Fixed, so the same file and line give the same event id on every machine, every run."""


class DirectorySource(Source):
    """Publishes each ``*.jsonl`` file dropped into ``folder``, then moves it to ``done/``.

    Guarantee: effectively-once. A file is moved only after ``produce`` returned, so a crash
    in between publishes it again on restart; every line keeps its ``event_id`` (or gets
    one derived from the file name and line number), so the second copy has no effect.
    Writers must give each file a new name (a timestamp in it) and write it under another
    name first (``x.jsonl.part``), then rename it: a rename is atomic, a half-written file
    is never read.
    """

    guarantee = Guarantee.EFFECTIVELY_ONCE
    kind = "directory"

    class Options(BaseModel):
        """What ``bus connect`` reads from the connectors file."""

        model_config = ConfigDict(extra="forbid")

        folder: Path
        pattern: str = "*.jsonl"
        poll_seconds: float = Field(default=2.0, gt=0)
        batch_size: int = Field(default=500, ge=1, le=10_000)

    def __init__(
        self,
        settings: Settings,
        folder: Path,
        *,
        pattern: str = "*.jsonl",
        poll_seconds: float = 2.0,
        batch_size: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.folder = folder
        self.done = folder / "done"
        self.pattern = pattern
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size

    @classmethod
    def from_options(cls, settings: Settings, name: str, options: Options) -> Self:
        """Build from a checked ``Options`` (how ``bus connect`` makes one)."""
        return cls(
            settings,
            options.folder,
            pattern=options.pattern,
            poll_seconds=options.poll_seconds,
            batch_size=options.batch_size,
            name=name,
        )

    async def on_start(self) -> None:
        """Make the folders, so a writer can start dropping files before the first one."""
        self.done.mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        """Publish what is there, oldest name first; wait for more; until stopped."""
        while not self.stopping:
            files = sorted(p for p in self.folder.glob(self.pattern) if p.is_file())
            for path in files:
                if self.stopping:
                    return
                await self.publish_file(path)
            if not files:
                await self.sleep(self.poll_seconds)

    async def publish_file(self, path: Path) -> None:
        """Publish every line of ``path`` in batches, then move it to ``done/``."""
        data = await asyncio.to_thread(path.read_bytes)  # do not block the loop on a slow disk
        events = [
            self.to_event(path.name, n, line)
            for n, line in enumerate(data.splitlines(), 1)
            if line.strip()
        ]
        for i in range(0, len(events), self.batch_size):
            if self.stopping:
                return  # not moved: the next run starts this file again, with the same ids
            await self.produce(events[i : i + self.batch_size])
        await asyncio.to_thread(path.replace, self.done / path.name)

    @staticmethod
    def event_id(file_name: str, line: int) -> uuid.UUID:
        """The id of a line that brought none: the same for the same file and line."""
        return uuid.uuid5(NAMESPACE, f"{file_name}:{line}")

    def to_event(self, file_name: str, line: int, raw: bytes) -> dict[str, Any] | bytes:
        """One line as an event; a line that is not a JSON object goes as it is.

        Ingest, not the connector, judges events: a bad line ends in the dead-letter topic
        with its reason, where operators already look, and the rest of the file goes on.
        """
        try:
            event = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(event, dict):
            return raw
        event.setdefault("event_id", str(self.event_id(file_name, line)))
        return event
