"""CPU time of the processes in a measurement, so a bench can say how much CPU an event costs.

Throughput ratios say how far the bus is from the raw loop; CPU per event says where the gap
is (the worker, or the broker the two share the machine with) and what a target leaves to
spend: at half the raw loop's throughput, a worker may spend twice the raw loop's CPU per event.

Processes are sampled from ``/proc`` (Linux) every ``interval`` seconds while a measurement
runs; :meth:`CpuSampler.between` interpolates to the exact start and end of the measured span
(record timestamps), so the start-up of a process before its first record is not counted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds that process ``pid`` (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class CpuSampler:
    """Samples the CPU time of named groups of processes in the background.

    ``async with CpuSampler({"worker": [pid], "broker": [pid]}) as cpu: ...`` then
    ``cpu.between(t0, t1)`` gives each group's CPU seconds in that wall-clock span. A process
    that has exited keeps its last reading.
    """

    def __init__(self, groups: Mapping[str, Sequence[int]], interval: float = 0.02) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.interval = interval
        self._times: list[float] = []
        self._samples: list[dict[str, float]] = []
        self._last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one reading now."""
        for pids in self.groups.values():
            for pid in pids:
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # exited
                    self._last[pid] = cpu_seconds(pid)
        self._times.append(time.time())
        self._samples.append(
            {name: sum(self._last.get(p, 0.0) for p in pids) for name, pids in self.groups.items()}
        )

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> CpuSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sample()

    def at(self, when: float) -> dict[str, float]:
        """Each group's CPU seconds at wall-clock time ``when``, interpolated between samples."""
        i = bisect.bisect_left(self._times, when)
        if i <= 0:
            return dict(self._samples[0])
        if i >= len(self._times):
            return dict(self._samples[-1])
        t0, t1 = self._times[i - 1], self._times[i]
        w = (when - t0) / (t1 - t0) if t1 > t0 else 1.0
        s0, s1 = self._samples[i - 1], self._samples[i]
        return {name: s0[name] + w * (s1[name] - s0[name]) for name in s0}

    def between(self, start: float, end: float) -> dict[str, float]:
        """Each group's CPU seconds from ``start`` to ``end`` (wall-clock, seconds)."""
        a, b = self.at(start), self.at(end)
        return {name: b[name] - a[name] for name in a}


def per_event(cpu: Mapping[str, float], events: int) -> str:
    """``worker 61 µs, broker 9 µs`` for the CPU of ``events`` events."""
    return ", ".join(f"{name} {seconds / events * 1e6:.0f} µs" for name, seconds in cpu.items())
