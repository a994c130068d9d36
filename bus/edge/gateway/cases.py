"""The gateway's index of case parties: who may read a case, without reading the case.

The case engine records the parties of every case it opens (requester, assignees,
supervisors) on ``state.case-parties``; departments the bus notified of a case are known from
their inboxes. An outsider's request is then answered from memory, whatever the case's size.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

from aiokafka import ConsumerRecord

from bus.edge.gateway.index import TopicIndex
from bus.settings import Settings
from bus.streaming.topics import CASE_PARTIES

log = logging.getLogger(__name__)

RECENT = 10_000
"""Cases remembered per gateway as published through it, for the moment before the bus acts."""


class CaseIndex(TopicIndex):
    """Parties by correlation id, plus what this gateway's callers published a moment ago."""

    topic_name = CASE_PARTIES.name

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._parties: dict[str, frozenset[str]] = {}
        self._published: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Take one case's parties; a record that is not a JSON list is logged and skipped."""
        key = (record.key or b"").decode(errors="replace")
        try:
            names = json.loads(record.value or b"null")
            if not isinstance(names, list):
                raise ValueError("not a list")
        except ValueError:
            log.warning("case parties of %r: not a JSON list; skipped", key[:128])
            return
        self._parties[key] = frozenset(str(n) for n in names)

    def published(self, department: str, correlation_id: str) -> None:
        """``department`` published an event of this case through this gateway."""
        self._published[(department, correlation_id)] = None
        self._published.move_to_end((department, correlation_id))
        while len(self._published) > RECENT:
            self._published.popitem(last=False)

    async def named(self, department: str, correlation_id: str) -> bool:
        """Whether the bus named ``department`` a party of this case."""
        await self.ready()
        return department in self._parties.get(correlation_id, ())

    def recently_published(self, department: str, correlation_id: str) -> bool:
        """Whether ``department`` published an event of this case through this gateway lately."""
        return (department, correlation_id) in self._published


__all__ = ["CaseIndex"]
