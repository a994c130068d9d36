"""CPU that Faust's monitor hooks cost per event: Faust's own ``Monitor`` against the bus's.

    python -m bench.faust_monitor                 # 200 000 events, best of 5 rounds each

Calls, for each event, the hooks Faust calls on the path of one event through an agent:
the consumer fetching it (``track_tp_end_offset``), the stream taking it and handing it to the
agent (``on_message_in``, ``on_stream_event_in``), the agent finishing it
(``on_stream_event_out``, ``on_message_out``), and one changelog record sent and acknowledged
(``on_send_initiated``, ``on_send_completed``). No broker: the process CPU of the hooks alone,
which is what ``bus.streaming.faust_metrics`` adds to a Faust agent (the bench.cases runs with
``--faust-metrics`` show it in a whole worker, where broker noise is larger than it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from bus.streaming.faust_metrics import FaustMetrics, FaustMonitor


class _Message:
    """What the hooks read of a consumer message."""

    time_in: float | None = None
    time_out: float | None = None
    time_total: float | None = None


class _Metadata:
    topic = "bench-counts-changelog"


def per_event(monitor: Monitor, stream: Any, events: int) -> float:
    """CPU seconds per event for the hooks of ``events`` events."""
    tp = TP("bench.words", 0)
    message, metadata = _Message(), _Metadata()
    changelog = "bench-counts-changelog"
    start = time.process_time()
    for offset in range(events):
        monitor.track_tp_end_offset(tp, offset)
        monitor.on_message_in(tp, offset, message)  # type: ignore[arg-type]
        state = monitor.on_stream_event_in(tp, offset, stream, None)  # type: ignore[arg-type]
        sent = monitor.on_send_initiated(None, changelog, None, 8, 8)  # type: ignore[arg-type]
        monitor.on_send_completed(None, sent, metadata)  # type: ignore[arg-type]
        monitor.on_stream_event_out(tp, offset, stream, None, state)  # type: ignore[arg-type]
        monitor.on_message_out(tp, offset, message)  # type: ignore[arg-type]
    return (time.process_time() - start) / events


async def run(events: int, rounds: int) -> dict[str, float]:
    app = faust.App("bench-monitor", broker="kafka://127.0.0.1:1", store="memory://")
    stream = app.stream(app.topic("bench.words"), prefix="count")
    monitors: dict[str, Monitor] = {
        "faust Monitor": Monitor(),
        "bus FaustMonitor": FaustMonitor(app, FaustMetrics(CollectorRegistry())),
    }
    best = {name: float("inf") for name in monitors}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits both alike
        for name, monitor in monitors.items():
            best[name] = min(best[name], per_event(monitor, stream, events))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    best = asyncio.run(run(args.events, args.rounds))
    base = best["faust Monitor"]
    for name, seconds in best.items():
        print(f"{name:18} {seconds * 1e6:6.2f} µs per event ({(seconds - base) * 1e6:+.2f})")


if __name__ == "__main__":
    main()
