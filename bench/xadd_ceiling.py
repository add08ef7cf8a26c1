"""``xadd_ceiling``: redis-benchmark's own XADD rate on the same server (the physical ceiling).

redis-benchmark 7.0 has no built-in ``-t xadd`` test, so the command is given explicitly:
``XADD <key> * e <payload>`` with a tiny field and with a payload the size of a typical
stored event, 50 connections, without and with pipelining (``-P 16``).
"""

from __future__ import annotations

import csv
import io
import shutil
from typing import Any

from bench.common import Record, redis_host_port, run_cmd
from bench.context import Ctx

TYPICAL_PAYLOAD = "x" * 380  # the size of a typical stored event (see the memory benchmark)


KEY = "bench:ceiling"


async def _target(ctx: Ctx) -> tuple[str, int]:
    """Where redis-benchmark sends its XADDs: the private server, the ``--redis-url``
    server, or on a cluster the master holding the key's slot (one stream lives on one
    node: its ceiling is one master's)."""
    if ctx.cluster:
        r: Any = ctx.redis
        node = r.get_node_from_key(KEY)
        return str(node.host), int(node.port)
    if ctx.external_url:
        return redis_host_port(ctx.external_url)
    return "127.0.0.1", ctx.redis_port


async def _bench(ctx: Ctx, n: int, payload: str, pipeline: int) -> dict[str, Any]:
    host, port = await _target(ctx)
    args = [
        "redis-benchmark", "-h", host, "-p", str(port), "-n", str(n), "-c", "50",
        "-P", str(pipeline), "--csv", "XADD", KEY, "*", "e", payload,
    ]  # fmt: skip
    out = await run_cmd(args, limit_s=300)
    rows = list(csv.DictReader(io.StringIO(out)))
    if not rows:
        raise RuntimeError(f"redis-benchmark printed nothing: {out!r}")
    row = rows[-1]
    await ctx.redis.delete(KEY)
    return {
        "payload_bytes": len(payload),
        "pipeline": pipeline,
        "requests": n,
        "rps": float(row["rps"]),
        "p50_ms": float(row["p50_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]),
        "node": f"{host}:{port}",
    }


async def run(ctx: Ctx) -> Record:
    rec = Record(
        name="xadd_ceiling",
        what="redis-benchmark XADD on the same server (50 connections): the physical ceiling",
        unit="XADD/s",
        target="report",
    )
    if shutil.which("redis-benchmark") is None:
        rec.error = "redis-benchmark is not installed"
        return rec
    await ctx.fresh()
    n = ctx.settings.ceiling_requests
    runs = [
        await _bench(ctx, n, "v", 1),
        await _bench(ctx, n, TYPICAL_PAYLOAD, 1),
        await _bench(ctx, n * 4, TYPICAL_PAYLOAD, 16),
    ]
    rec.value = runs[1]["rps"]
    rec.figures = {"runs": runs, "typical_payload_unpipelined_rps": runs[1]["rps"]}
    ctx.shared["xadd_ceiling"] = runs[1]["rps"]
    rec.notes.append("value: XADD of a typical-size payload, no pipelining")
    return rec
