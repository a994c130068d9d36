"""CPU per event of the agents' own work, without a broker: where the pipeline's time goes.

Feeds ``--events`` penalties (over 500 registered enterprises; ``--unregistered``: none
registered) through ``IngestAgent.process`` and then, as canonical records,
``CorrelateAgent.process`` (with its changelog encoding), in batches of 500, in one process,
and prints process-CPU microseconds per event for each. What it leaves out is the Kafka
client and the broker: compare with ``bench.pipeline`` to see their share.

    python -m bench.hotpath                       # worker settings: garbage collector tuned
    python -m bench.hotpath --default-gc          # Python's default collector thresholds
    python -m bench.hotpath --no-recent           # correlate decodes every event again
    python -m bench.hotpath --profile             # and the top of a cProfile, by own time
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from aiokafka.structs import ConsumerRecord

from bus.agents.app import RECENT_EVENTS, Context, tune_gc
from bus.agents.correlate import CorrelateAgent
from bus.agents.ingest import IngestAgent
from bus.agents.out import Out
from bus.dev.samples import penalties, registrations
from bus.domain.departments import Directory
from bus.settings import Settings
from bus.streaming.codec import EventCodec, Recent

BATCH = 500


Headers = list[tuple[str, bytes]]


def _record(
    topic: str, offset: int, key: bytes, value: bytes, headers: Headers
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, int(time.time() * 1000), 0, key, value, None,
                          len(key), len(value), headers)  # fmt: skip


def _canonical(outs: list[Out]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        _record(o.topic, i, o.key or b"", o.value or b"", o.headers) for i, o in enumerate(outs)
    ]


async def main(args: argparse.Namespace) -> None:
    """Time both agents' ``process`` over the same events."""
    s = Settings(app_id="hot", topic_prefix="hot", data_dir=Path(tempfile.mkdtemp()),
                 metrics_port=0, web_port=0)  # fmt: skip
    ctx = Context(s, EventCodec(), Directory.load(None),
                  recent=Recent(0 if args.no_recent else RECENT_EVENTS))  # fmt: skip
    ingest, correlate = IngestAgent(ctx), CorrelateAgent(ctx)
    codec = ctx.codec
    if not args.unregistered:  # registered (and their tasks created) before the clock starts
        regs = [_record("hot.ingress", i, e.subject.encode(), codec.encode(e), e.kafka_headers())
                for i, e in enumerate(registrations(seed=1))]  # fmt: skip
        await correlate.process(_canonical(await ingest.process(regs)))
        for store in (*ingest.stores, *correlate.stores):
            store.take_pending()
    events = penalties(args.events, seed=1)
    raw = [_record("hot.ingress", i, e.subject.encode(), codec.encode(e), e.kafka_headers())
           for i, e in enumerate(events)]  # fmt: skip
    if not args.default_gc:
        tune_gc()
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    spent = {"ingest": 0.0, "correlate": 0.0}
    for i in range(0, len(raw), BATCH):  # interleaved, as in a worker running both
        t0 = time.process_time()
        outs = await ingest.process(raw[i : i + BATCH])
        ingest.seen.take_pending()
        t1 = time.process_time()
        canonical = _canonical(outs)
        t2 = time.process_time()
        await correlate.process(canonical)
        for store in correlate.stores:
            store.take_pending()
        spent["ingest"] += t1 - t0
        spent["correlate"] += time.process_time() - t2
    if profile:
        profile.disable()
    n = len(raw)
    per = {agent: 1e6 * seconds / n for agent, seconds in spent.items()}
    print(f"{n} penalties: ingest {per['ingest']:.1f} µs/event, "
          f"correlate {per['correlate']:.1f} µs/event (with its changelog)")  # fmt: skip
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--unregistered", action="store_true")
    p.add_argument("--default-gc", action="store_true")
    p.add_argument("--no-recent", action="store_true")
    p.add_argument("--profile", action="store_true")
    asyncio.run(main(p.parse_args()))
