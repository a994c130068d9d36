"""Faust's table recovery, watched: a changelog partition that stops arriving is read again.

Faust 0.15 recovers a table by reading each active changelog partition to its end, and
waits until every one is there. Seen here after a kill -9 hand-over (docs/architecture.md):
three partitions of the case table's changelog, 15 to 18 records each, delivered nothing
for 1.7 minutes, the worker idle and its partitions undecided. Faust only logs "No event
received for active tp" (faust-streaming issues #21 and #74 report such hangs). The watch
does what Faust's recovery does when it starts: it seeks such a partition to the last
offset the recovery applied (its record is read again and skipped) and resumes fetching it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.sensors import Sensor
from faust.types import TP
from mode import Service

from bus.streaming.faust_metrics import recovery_of

log = logging.getLogger(__name__)

STALL_S = 15.0
"""How long an active changelog partition may deliver nothing before it is sought again."""

INTERVAL_S = 1.0


class RecoveryWatch(Sensor):
    """Seeks and resumes the active changelog partitions a recovery stopped receiving.

    A sensor, so that it starts with the app's first services: Faust starts an app's tasks
    and timers only after its first recovery.
    """

    def __init__(
        self,
        app: faust.App,
        stall_s: float = STALL_S,
        on_resought: Callable[[int], object] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.stall_s = stall_s
        self.on_resought = on_resought  # told how many partitions were sought again
        self._last: dict[TP, tuple[int, float]] = {}  # offset applied, since when

    async def check(self) -> dict[TP, int]:
        """Seek the partitions stalled for ``stall_s``; the offsets they were sought to."""
        recovery: Any = recovery_of(self.app)
        if not recovery.in_recovery:
            self._last.clear()
            return {}
        now = time.monotonic()
        stalled: dict[TP, int] = {}
        for key, remaining in recovery.active_remaining().items():
            tp = TP(key.topic, key.partition)  # Faust's own: its consumer asserts the type
            offset = recovery.active_offsets[tp]
            last = self._last.get(tp)
            if remaining <= 0 or last is None or last[0] != offset:
                self._last[tp] = (offset, now)
            elif now - last[1] >= self.stall_s:
                stalled[tp] = max(offset, 0)
                self._last[tp] = (offset, now)
        if stalled:
            log.warning("table recovery: %s received nothing for %.0f s; sought again and "
                        "resumed", _names(stalled), self.stall_s)  # fmt: skip
            consumer: Any = self.app.consumer
            await consumer.seek_wait(stalled)
            consumer.resume_partitions(stalled)
            if self.on_resought is not None:
                self.on_resought(len(stalled))
        return stalled

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(INTERVAL_S)
            try:
                await self.check()
            except Exception as exc:  # e.g. the partition was revoked meanwhile
                log.info("table recovery: watch skipped a round: %r", exc)


def _names(offsets: dict[TP, int]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in sorted(offsets.items()))


def watch_recovery(
    app: faust.App,
    stall_s: float = STALL_S,
    on_resought: Callable[[int], object] | None = None,
) -> RecoveryWatch:
    """Watch ``app``'s table recoveries for as long as it runs; ``on_resought`` counts."""
    watch = RecoveryWatch(app, stall_s, on_resought)
    app.sensors.add(watch)
    return watch


__all__ = ["STALL_S", "RecoveryWatch", "watch_recovery"]
