"""The benches' CPU sampler: CPU per event is only as good as the CPU it attributes to a span."""

from __future__ import annotations

import asyncio
import sys
import time

from bench.cpu import CpuSampler, cpu_seconds, per_event

# Busy for 0.6 s of its own CPU time, not of the clock: on a loaded machine the child gets a
# share of a core, and a wall-clock spin would spend less CPU than the test expects.
BUSY_THEN_IDLE = """
import time
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
print("idle", flush=True)
time.sleep(30)
"""


async def test_sampler_attributes_cpu_to_the_span_it_was_spent_in() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BUSY_THEN_IDLE, stdout=asyncio.subprocess.PIPE
    )
    try:
        async with CpuSampler({"child": [child.pid]}, interval=0.01) as cpu:
            started = time.time()
            assert child.stdout is not None
            await child.stdout.readline()  # the busy part is over
            busy_until = time.time()
            await asyncio.sleep(0.4)
            idle_until = time.time()
        busy = cpu.between(started, busy_until)["child"]
        idle = cpu.between(busy_until + 0.05, idle_until)["child"]
        assert 0.35 <= busy <= 1.0, busy  # interpreter start-up plus 0.6 s of spinning
        assert idle < 0.05, idle
        assert cpu_seconds(child.pid) >= busy - 0.02
    finally:
        child.kill()
        await child.wait()


async def test_a_process_that_exits_keeps_its_last_reading() -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "sum(range(10**7))")
    async with CpuSampler({"child": [child.pid]}, interval=0.01) as cpu:
        await child.wait()
        await asyncio.sleep(0.05)
    spent = cpu.between(0, time.time() + 1)["child"]
    assert spent > 0.05, spent


def test_per_event_is_in_microseconds() -> None:
    assert per_event({"worker": 0.6, "broker": 0.09}, 10_000) == "worker 60 µs, broker 9 µs"
