"""The benches' CPU sampler: CPU per event is only as good as the CPU it attributes to a span."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from bench.cpu import CpuSampler, cpu_seconds, per_event

# Started, then blocked on stdin until told to go, then busy for 0.6 s of its own CPU time
# (not of the clock: on a loaded machine it gets a share of a core), then blocked again.
WAIT_BUSY_WAIT = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
print("idle", flush=True)
sys.stdin.readline()
"""

WORK_THEN_EXIT = """
import sys
print("ready", flush=True)
sys.stdin.readline()
sum(range(10**7))
print("done", flush=True)
sys.stdin.readline()
"""


async def _until(condition: Callable[[], bool], seconds: float = 60) -> None:
    """Polls ``condition`` until it holds; only a sampler that stopped sampling runs out."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the sampler took no reading in time"
        await asyncio.sleep(0.02)


async def test_sampler_attributes_cpu_to_the_span_it_was_spent_in() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WAIT_BUSY_WAIT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        await child.stdout.readline()  # its start-up is over
        async with CpuSampler({"child": [child.pid]}, interval=0.01) as cpu:
            # Each span is bounded by readings taken while the child was blocked, so however
            # late the background readings come on a busy machine, the spin falls in one span.
            started = time.time()
            cpu.sample()
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            await child.stdout.readline()  # the busy part is over
            # The background readings catch up with what the child spent.
            spent = cpu_seconds(child.pid)
            await _until(lambda: cpu.at(time.time())["child"] >= spent)
            cpu.sample()
            busy_until = time.time()
            await asyncio.sleep(0.4)
            idle_until = time.time()
            cpu.sample()
        busy = cpu.between(started, busy_until)["child"]
        idle = cpu.between(busy_until, idle_until)["child"]
        assert 0.55 <= busy <= 0.75, busy  # 0.6 s of spinning, in clock ticks
        assert idle < 0.02, idle
    finally:
        child.kill()
        await child.wait()


async def test_a_process_that_exits_keeps_its_last_reading() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORK_THEN_EXIT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    await child.stdout.readline()  # its start-up is over
    async with CpuSampler({"child": [child.pid]}, interval=0.01) as cpu:
        child.stdin.write(b"go\n")
        await child.stdout.readline()  # the work is done; it waits for its stdin to close
        await _until(lambda: cpu.between(0, time.time())["child"] > 0.05)  # read while alive
        child.stdin.close()
        await child.wait()
    spent = cpu.between(0, time.time() + 1)["child"]  # the last reading, taken after it exited
    assert spent > 0.05, spent


def test_per_event_is_in_microseconds() -> None:
    assert per_event({"worker": 0.6, "broker": 0.09}, 10_000) == "worker 60 µs, broker 9 µs"
