"""``growth``: one pipeline with a long history vs a fresh one, side by side in one run.

Two PARALLEL pipelines with the same declaration (one stage, one Commands action):
``growth-big`` gets ``H`` past executions (10,000 in ``--quick``, 100,000 in ``--full``),
every tenth of them failed and retried (FAILED_ACTIONS) once; ``growth-fresh`` none. The
history is made in this process through the engine, without workers: ``Engine.start_execution``,
the action completed directly with ``CompleteAction`` through ``engine.repo.execute``, the
retry through ``Engine.retry_stage`` (applied with ``ApplyStageRetry`` when no worker does
it), a few executions at a time. Its dispatch entries are then dropped (workers running all
along would have consumed them as it was made; every reaction was decided while it was
written) and one worker process runs until a probe execution on each pipeline has Succeeded
(at most ``growth_settle_s``), then one snapshot period more (an owner writes the snapshots
of the pipelines it saw every ``snapshot_every_s``, not when it stops; workers running all
along would have written them). Then, for the fresh
pipeline and then the big one:

1. StartPipelineExecution latency: ``M`` executions started one at a time through
   ``Engine.start_execution`` (this process's engine, its cache warm), p50 / p99;
2. new actions/s: one worker process (gated, as in ``actions``) runs those ``M`` actions;
   the clock runs from the gate to the last execution seen Succeeded (the worker's first
   load of the pipeline included: that is part of what history costs), or, when that takes
   longer than the budget (``growth_budget_s``), to the budget's end, counting what was done
   by then (``time_boxed``);
3. snapshot bytes once that worker has stopped (the last one it wrote): every key
   matching ``*snap*`` whose name holds the pipeline's name, by ``MEMORY USAGE`` and by
   the bytes of its value (``STRLEN``, or ``HSTRLEN`` over a hash's fields);
4. cold load, alternating between the two pipelines: a fresh process
   (``python -m bench.procs cold``) times ``Engine.pipeline`` + ``queries.get_pipeline_state``
   (imports and connecting excluded), best and median of ``R`` runs; peak RSS.

Every figure is reported as big / fresh; the target is every ratio <= 1.2 (snapshot bytes
independent of history). The value shown is the worst ratio.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from app.domain import commands as c
from app.engine import Engine
from bench import workload
from bench.common import PY, Proc, Record, counting_client, percentiles, run_cmd
from bench.context import Ctx, proc_cpu
from bench.profiling import spy
from workers.config import WorkerConfig

BIG = "growth-big"
FRESH = "growth-fresh"
STAGE = "Build"


async def _in_progress(engine: Engine, name: str, eid: str) -> list[str]:
    _, x = await engine.execution(name, eid)
    return [a.actionExecutionId for a in x.actions.values() if a.status == "InProgress"]


async def _complete(engine: Engine, name: str, eid: str, aid: str, ok: bool) -> None:
    await engine.repo.execute(
        name,
        c.CompleteAction(
            executionId=eid,
            actionExecutionId=aid,
            succeeded=ok,
            summary="1 command succeeded" if ok else "command failed",
            errorCode=None if ok else "CommandFailed",
            message=None if ok else "'make' exited with code 2",
        ),
    )


async def _past_execution(engine: Engine, name: str, failed: bool) -> None:
    eid = await engine.start_execution(name, trigger_detail="bench-history")
    for aid in await _in_progress(engine, name, eid):
        await _complete(engine, name, eid, aid, not failed)
    if not failed:
        return
    await engine.retry_stage(name, STAGE, eid, "FAILED_ACTIONS")
    again = await _in_progress(engine, name, eid)
    if not again:  # the retry is applied by a worker's reaction; there is none here
        await engine.repo.execute(name, c.ApplyStageRetry(executionId=eid, stageName=STAGE))
        again = await _in_progress(engine, name, eid)
    if not again:
        raise RuntimeError(f"history: the retry of {eid} scheduled nothing")
    for aid in again:
        await _complete(engine, name, eid, aid, True)


async def generate(ctx: Ctx, engine: Engine, name: str, executions: int, lanes: int) -> float:
    """``executions`` past executions on ``name``, ``lanes`` at a time; seconds taken."""
    t0 = time.perf_counter()
    next_i = 0
    step = max(1, executions // 5)

    async def lane() -> None:
        nonlocal next_i
        while next_i < executions:
            i = next_i
            next_i += 1
            await _past_execution(engine, name, failed=i % 10 == 9)
            if (i + 1) % step == 0:
                rate = (i + 1) / (time.perf_counter() - t0)
                ctx.log(f"growth: history {i + 1:,}/{executions:,} ({rate:.0f} executions/s)")

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return time.perf_counter() - t0


async def _snapshot_bytes(ctx: Ctx, name: str) -> dict[str, Any]:
    keys: list[str] = []
    async for k in ctx.redis.scan_iter(match="*snap*", count=1000):
        key = k.decode() if isinstance(k, bytes) else str(k)
        if name in key:
            keys.append(key)
    memory = 0
    value = 0
    for key in keys:
        memory += int(await ctx.redis.memory_usage(key, samples=0) or 0)
        kind = await ctx.redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind == "string":
            value += int(await ctx.redis.strlen(key))
        elif kind == "hash":
            for f in await ctx.redis.hkeys(key):
                value += int(await ctx.redis.hstrlen(key, f))
    return {"keys": len(keys), "memory_usage_bytes": memory, "value_bytes": value}


def _worker(ctx: Ctx, gate: str) -> Proc:
    return Proc(
        [
            PY, "-m", "bench.procs", "worker", "--redis-url", ctx.redis_url,
            "--concurrency", str(ctx.settings.concurrency), "--runner", "noop", "--gate", gate,
        ]
    )  # fmt: skip


async def _settle(ctx: Ctx, engine: Engine) -> dict[str, Any]:
    """Let a worker react to the history once, as workers running all along would have.

    The history was written without workers, so its events and queued runs still wait for
    their reactions in whatever queues the core keeps. One worker runs until a probe
    execution started on each pipeline now has Succeeded (it comes after the history), or
    until ``growth_settle_s`` has passed, and one snapshot period more (its owners write the
    snapshots every ``snapshot_every_s``, not when they stop), then stops."""
    budget = ctx.settings.growth_settle_s
    # Workers running all along would have taken in (and trimmed) the history's dispatch
    # entries as it was made; the history is complete (every reaction was decided while it
    # was written), so they are dropped here rather than replayed by one worker at once.
    keys = engine.keys
    for p in range(keys.partitions):
        await ctx.redis.xtrim(keys.events(p), maxlen=0, approximate=False)
        await ctx.redis.xtrim(keys.run(p), maxlen=0, approximate=False)
    gate = f"bench:gate:{uuid.uuid4().hex}"
    worker = _worker(ctx, gate)
    await worker.start(word="GATE")
    t0 = time.perf_counter()
    try:
        await ctx.redis.rpush(gate, "go")
        probes = [
            (n, await engine.start_execution(n, trigger_detail="probe")) for n in (BIG, FRESH)
        ]
        async with spy(ctx, worker.pid, "growth-settle-worker"):
            _, done = await _wait(engine, probes, budget)
        probes_s = time.perf_counter() - t0
        if done == len(probes):  # the snapshots a worker running all along would have written
            await asyncio.sleep(WorkerConfig().snapshot_every_s + 0.5)
    finally:
        await worker.stop(wait_s=120)
    took = time.perf_counter() - t0
    if done < len(probes):
        ctx.log(f"growth: the history was not settled within {budget:.0f}s")
    return {"s": took, "probes_s": probes_s, "settled": done == len(probes), "budget_s": budget}


async def _phase(ctx: Ctx, engine: Engine, name: str) -> dict[str, Any]:
    """Start M executions (timed), then run them with one worker process."""
    st = ctx.settings
    lat: list[float] = []
    started: list[tuple[str, str]] = []
    for _ in range(st.growth_new):
        t = time.perf_counter()
        eid = await engine.start_execution(name, trigger_detail="bench")
        lat.append((time.perf_counter() - t) * 1000)
        started.append((name, eid))

    gate = f"bench:gate:{uuid.uuid4().hex}"
    worker = _worker(ctx, gate)
    await worker.start(word="GATE")
    try:
        cpu0 = proc_cpu(worker.pid) or 0.0
        t0 = time.time()
        await ctx.redis.rpush(gate, "go")
        async with spy(ctx, worker.pid, f"growth-{name}-worker"):
            t1, done = await _wait(engine, started, st.growth_budget_s)
        cpu = (proc_cpu(worker.pid) or 0.0) - cpu0
    finally:
        stop0 = time.perf_counter()
        await worker.stop(wait_s=120)
        stop_s = time.perf_counter() - stop0
    took = t1 - t0
    return {
        "start_ms": percentiles(lat),
        "new_actions": len(started),
        "new_actions_done": done,
        "time_boxed": done < len(started),
        "new_actions_s": took,
        "new_actions_per_s": done / took,
        "worker_cpu_ms_per_action": cpu / done * 1000 if done else None,
        "worker_stop_s": stop_s,
    }


async def _wait(
    engine: Engine, started: list[tuple[str, str]], budget_s: float
) -> tuple[float, int]:
    """Until every execution in ``started`` Succeeded, or ``budget_s`` passed: (when, how many).

    Executions finish roughly in start order, so each pass looks at the oldest 16 still
    running (cheap next to the worker); at the end of the budget one pass counts them all."""
    deadline = time.monotonic() + budget_s
    pending = list(started)
    seen = time.time()
    while pending and time.monotonic() < deadline:
        finished = await workload._succeeded(engine, pending[:16])
        if finished:
            seen = time.time()
            pending = [i for i in pending if i not in finished]
        else:
            await asyncio.sleep(0.01)
    if pending:  # out of time: how many did finish by now
        seen = time.time()
        pending = [i for i in pending if i not in await workload._succeeded(engine, pending)]
    return seen, len(started) - len(pending)


async def _cold(ctx: Ctx, name: str) -> dict[str, Any]:
    out = await run_cmd(
        [PY, "-m", "bench.procs", "cold", "--redis-url", ctx.redis_url, "--pipeline", name]
    )
    for line in out.splitlines():
        if line.startswith("COLD "):
            result: dict[str, Any] = json.loads(line[5:])
            return result
    raise RuntimeError(f"cold load of {name}: no result in {out[-500:]!r}")


def _ratio(big: float, fresh: float) -> float | None:
    """big / fresh; None when it cannot be taken (fresh is 0 and big is not)."""
    if fresh <= 0:
        return 1.0 if big <= 0 else None
    return big / fresh


async def run(ctx: Ctx) -> Record:
    st = ctx.settings
    rec = Record(
        name="growth",
        what=f"a pipeline with {st.history:,} past executions (every tenth failed and retried) "
        "vs a fresh one: start p50, new actions/s, snapshot bytes, cold load (worst ratio)",
        unit="x",
        target="every ratio <= 1.2",
    )
    await ctx.fresh()
    redis, _ = await counting_client(ctx.redis_url, ctx.cluster)
    try:
        engine = Engine(redis, concurrency_limit=max(1000, 2 * st.growth_new))
        await engine.start()
        for name in (BIG, FRESH):
            await engine.create_pipeline(workload.declaration(name, 1))
        gen_s = await generate(ctx, engine, BIG, st.history, st.history_lanes)
        settle = await _settle(ctx, engine)
        ctx.log(
            f"growth: a worker reacted to the history for {settle['s']:.1f}s "
            f"(probes done after {settle['probes_s']:.1f}s)"
        )
        big_state = await engine.pipeline(BIG)
        history_events = getattr(big_state, "version", None)
        past = len(getattr(big_state, "executions", None) or {}) or None
        phases: dict[str, dict[str, Any]] = {}
        for label, name in (("fresh", FRESH), ("big", BIG)):
            phases[label] = await _phase(ctx, engine, name)
            ctx.log(
                f"growth: {label}: start p50 {phases[label]['start_ms']['p50']:.2f} ms, "
                f"{phases[label]['new_actions_per_s']:.0f} new actions/s"
            )
    finally:
        await redis.aclose()
    snaps = {"fresh": await _snapshot_bytes(ctx, FRESH), "big": await _snapshot_bytes(ctx, BIG)}
    all_snap = 0
    async for k in ctx.redis.scan_iter(match="*snap*", count=1000):
        all_snap += int(await ctx.redis.memory_usage(k, samples=0) or 0)
    colds: dict[str, list[dict[str, Any]]] = {"fresh": [], "big": []}
    for _ in range(st.growth_cold_runs):
        for label, name in (("fresh", FRESH), ("big", BIG)):
            colds[label].append(await _cold(ctx, name))
    cold = {
        label: {
            "best_s": min(r["total_s"] for r in runs),
            "median_s": statistics.median(r["total_s"] for r in runs),
            "load_s_median": statistics.median(r["load_s"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_bytes"] for r in runs) / 2**20,
            "answer_bytes": runs[0]["answer_bytes"],
        }
        for label, runs in colds.items()
    }
    f, b = phases["fresh"], phases["big"]
    ratios = {
        "start_p50": _ratio(b["start_ms"]["p50"], f["start_ms"]["p50"]),
        "start_p99": _ratio(b["start_ms"]["p99"], f["start_ms"]["p99"]),
        "new_actions_slowdown": _ratio(f["new_actions_per_s"], b["new_actions_per_s"]),
        "snapshot_bytes": _ratio(snaps["big"]["memory_usage_bytes"],
                                 snaps["fresh"]["memory_usage_bytes"]),
        "cold_load": _ratio(cold["big"]["median_s"], cold["fresh"]["median_s"]),
    }  # fmt: skip
    judged = {k: v for k, v in ratios.items() if k != "start_p99"}
    worst = max((v if v is not None else float("inf")) for v in judged.values())
    rec.value = worst if worst != float("inf") else None
    rec.ratio = rec.value
    rec.passed = worst <= 1.2
    if rec.value is None:
        rec.notes.append("a ratio could not be taken (nothing done on the big pipeline)")
    if not settle["settled"]:
        rec.notes.append(
            f"the history's backlog was not worked off within {settle['budget_s']:.0f}s: "
            "the big pipeline's new actions waited behind it"
        )
    if not snaps["big"]["keys"] and not snaps["fresh"]["keys"]:
        rec.notes.append("no *snap* keys for either pipeline: snapshot ratio taken as 1")
    rec.notes.append(
        ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} -" for k, v in ratios.items())
    )
    rec.figures = {
        "history": {
            "executions": st.history,
            "executions_in_state": past,
            "events": history_events,
            "generate_s": gen_s,
            "generate_executions_per_s": st.history / gen_s,
            "lanes": st.history_lanes,
            "settle": settle,
        },
        "ratios_big_over_fresh": ratios,
        "fresh": {**f, "snapshot": snaps["fresh"], "cold": cold["fresh"]},
        "big": {**b, "snapshot": snaps["big"], "cold": cold["big"]},
        "all_snap_keys_memory_bytes": all_snap,
        "cold_runs": colds,
    }
    return rec
