"""``idle``: what one idle worker process costs (its reads of the partitions' streams).

One worker process (``python -m bench.procs worker``, no work at all) on a store laid out
in 16 partitions (the benchmarks' layout) and in 128 (a new store's default). Once it owns
every partition (a few seconds after it starts), for ``IDLE_S`` seconds: its CPU, the
server's (every master's on a cluster) and the commands it sent per second (its own
client's counts: ``COUNTS`` on SIGUSR1). On one redis-server the owners share one blocking
``XREAD`` and the runners one blocking ``XREADGROUP``; on a Redis Cluster a blocking read
of several slots is not possible, so the owners' reads are a pipelined non-blocking
``XREAD`` per stream, backing off while nothing comes (``workers/service.py``).
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

from app.store.eventstore import EventStore
from app.store.keys import Keys
from bench.common import PY, Proc, Record
from bench.context import Ctx, proc_cpu

IDLE_S = 10.0
SETTLE_S = 4.0  # ownership: the process takes every partition within a few seconds
LAYOUTS = (16, 128)


async def _sent(proc: Proc) -> dict[str, int]:
    assert proc.proc is not None
    before = len(proc.stdout_lines)
    proc.proc.send_signal(signal.SIGUSR1)
    for _ in range(500):
        if len(proc.stdout_lines) > before and proc.printed("COUNTS") is not None:
            break
        await asyncio.sleep(0.01)
    counts: dict[str, int] = json.loads(await proc.wait_printed("COUNTS"))
    return counts


async def _one(ctx: Ctx, partitions: int) -> dict[str, Any]:
    await ctx.fresh()
    r: Any = ctx.redis
    await r.delete(Keys().config())  # fresh() recorded the benchmarks' 16 partitions
    await EventStore(r, Keys(partitions=partitions)).ensure_config()
    worker = Proc(
        [
            PY, "-m", "bench.procs", "worker", "--redis-url", ctx.redis_url,
            "--partitions", str(partitions), "--runner", "noop",
        ]
    )  # fmt: skip
    await worker.start()
    try:
        await asyncio.sleep(SETTLE_S)
        sent0 = await _sent(worker)
        cpu0 = proc_cpu(worker.pid) or 0.0
        redis0 = await ctx.redis_cpu()
        await asyncio.sleep(IDLE_S)
        cpu = (proc_cpu(worker.pid) or 0.0) - cpu0
        redis_cpu = await ctx.redis_cpu() - redis0
        sent1 = await _sent(worker)
    finally:
        await worker.stop()
    sent = {k: v - sent0.get(k, 0) for k, v in sent1.items() if v - sent0.get(k, 0) > 0}
    top = sorted(sent.items(), key=lambda kv: -kv[1])[:8]
    return {
        "partitions": partitions,
        "seconds": IDLE_S,
        "worker_cpu_percent": cpu / IDLE_S * 100,
        "redis_cpu_percent": redis_cpu / IDLE_S * 100,
        "commands_per_s": sum(sent.values()) / IDLE_S,
        "per_s": {k: v / IDLE_S for k, v in top},
    }


async def run(ctx: Ctx) -> Record:
    rec = Record(
        name="idle",
        what="CPU of one idle worker process (% of a core) at 128 partitions "
        f"({', '.join(map(str, LAYOUTS))} measured)",
        unit="% core",
        target="report",
    )
    runs = {str(p): await _one(ctx, p) for p in LAYOUTS}
    rec.value = runs[str(LAYOUTS[-1])]["worker_cpu_percent"]
    rec.figures = {"by_partitions": runs, "cluster": ctx.cluster}
    rec.notes.append(
        "; ".join(
            f"{p} partitions: worker {x['worker_cpu_percent']:.1f}%, redis "
            f"{x['redis_cpu_percent']:.1f}%, {x['commands_per_s']:.0f} commands/s"
            for p, x in runs.items()
        )
    )
    return rec
