"""The stageline side of ``actions`` and ``scale``: scheduled no-op actions run by worker processes.

Only public pieces are used, so the workload keeps working when the engine's internals
change: pipelines are created and executions started through ``app.engine.Engine``; the
workers are ``python -m bench.procs worker`` processes (``workers.service.Worker`` +
``workers.config.WorkerConfig`` with an in-process no-op ``commands`` runner); completion is
read back through ``Engine.execution``. Redis work is counted by command name, whatever the
keys, from ``INFO commandstats`` deltas less the driver's own commands (counted on its
connections): every EVAL/EVALSHA/FCALL is an append, every XRANGE/XREVRANGE a log read —
those a Lua script runs inside Redis included (commandstats counts them too). Each worker
process also counts what its own client sends; those round trips are reported next to them
(``sent``), so a read inside an append script and a read round trip can be told apart.

1. ``P`` PARALLEL pipelines, one stage of ``K`` Commands actions each; ``N / K`` executions
   are started beforehand (round-robin over the pipelines), so ``N`` actions wait.
2. ``W`` worker processes start, connect and wait at a gate; the driver opens the gate for all
   at once, and the clock starts.
3. The driver watches the newest execution of every pipeline, then every execution still
   running, until each one has Succeeded; the clock stops at the latest ``lastUpdateTime``
   of them (stamped by the worker when the execution ended), else at the pass that saw it.
4. Every execution is checked: Succeeded, with its K actions Succeeded.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    ExecutionMode,
    PipelineDeclaration,
    StageDeclaration,
)
from app.engine import Engine
from bench.common import PY, Proc, counting_client
from bench.context import Ctx, proc_cpu
from bench.profiling import spy

COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
ROLE = "arn:aws:iam::123456789012:role/stageline-bench"
APPEND_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")
READ_COMMANDS = ("xrange", "xrevrange")


def declaration(name: str, actions: int, mode: ExecutionMode = "PARALLEL") -> PipelineDeclaration:
    """One stage ``Build`` with ``actions`` parallel Commands actions."""
    return PipelineDeclaration(
        name=name,
        roleArn=ROLE,
        executionMode=mode,
        stages=[
            StageDeclaration(
                name="Build",
                actions=[
                    ActionDeclaration(
                        name=f"a{i}", actionTypeId=COMMANDS, runOrder=1, commands=[f"make a{i}"]
                    )
                    for i in range(actions)
                ],
            )
        ],
    )


# --- counting Redis commands -------------------------------------------------------------------


async def commandstats(redis: Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (``INFO commandstats``); on a Redis
    Cluster the sum over every master."""
    from app.store.connection import is_cluster

    out: dict[str, int] = {}
    if is_cluster(redis):
        from redis.asyncio.cluster import RedisCluster

        per_node: Any = await redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        if any(str(k).startswith("cmdstat_") for k in per_node):  # one master: one reply
            per_node = {"one": per_node}
        infos = list(per_node.values())
    else:
        infos = [await redis.info("commandstats")]
    for info in infos:
        for key, value in info.items():
            name = str(key).removeprefix("cmdstat_").lower()
            if isinstance(value, dict):
                out[name] = out.get(name, 0) + int(value.get("calls", 0))
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])
    return (total - idle) / hz, total / hz


# --- the workload ------------------------------------------------------------------------------


async def prepare(ctx: Ctx, engine: Engine, tag: str) -> list[tuple[str, str]]:
    """Create the pipelines and start the executions; ``[(pipeline, execution id)]``."""
    st = ctx.settings
    k = st.actions_per_execution
    names = [f"{tag}-{i}" for i in range(st.actions_pipelines)]
    for name in names:
        await engine.create_pipeline(declaration(name, k))
    executions = st.actions_n // k
    per = {
        name: executions // len(names) + (1 if i < executions % len(names) else 0)
        for i, name in enumerate(names)
    }
    started: list[tuple[str, str]] = []

    async def start_on(name: str) -> None:
        for _ in range(per[name]):
            started.append((name, await engine.start_execution(name, trigger_detail="bench")))

    await asyncio.gather(*(start_on(n) for n in names))
    return started


async def _succeeded(engine: Engine, ids: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``ids`` are no longer InProgress (raises if one ended otherwise)."""
    sem = asyncio.Semaphore(16)

    async def one(item: tuple[str, str]) -> tuple[str, str] | None:
        async with sem:
            _, x = await engine.execution(*item)
        if x.status == "InProgress":
            return None
        if x.status != "Succeeded":
            raise RuntimeError(f"execution {item[1]} of {item[0]} ended {x.status}")
        return item

    return {r for r in await asyncio.gather(*(one(i) for i in ids)) if r is not None}


async def _wait_all(engine: Engine, started: list[tuple[str, str]], *, limit_s: float) -> float:
    """Until every execution in ``started`` has Succeeded; the time (epoch s) it was seen."""
    deadline = time.monotonic() + limit_s
    newest: dict[str, tuple[str, str]] = {}
    for item in started:
        newest[item[0]] = item
    tails = list(newest.values())
    while len(await _succeeded(engine, tails)) < len(tails):  # cheap: one per pipeline
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the newest executions")
        await asyncio.sleep(0.02)
    pending = list(started)
    while True:
        done = await _succeeded(engine, pending)
        now = time.time()
        pending = [i for i in pending if i not in done]
        if not pending:
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {len(pending)} executions still running")
        await asyncio.sleep(0.005)


async def run(ctx: Ctx, *, workers: int, tag: str) -> dict[str, Any]:
    """The workload with ``workers`` worker processes; its figures."""
    st = ctx.settings
    await ctx.fresh()
    redis, own = await counting_client(ctx.redis_url, ctx.cluster)
    try:
        engine = Engine(redis, concurrency_limit=max(1000, st.actions_n))
        await engine.start()
        t = time.perf_counter()
        started = await prepare(ctx, engine, tag)
        prepare_s = time.perf_counter() - t
        n = len(started) * st.actions_per_execution

        gate = f"bench:gate:{uuid.uuid4().hex}"
        procs = [
            Proc(
                [
                    PY,
                    "-m",
                    "bench.procs",
                    "worker",
                    "--redis-url",
                    ctx.redis_url,
                    "--concurrency",
                    str(st.concurrency),
                    "--runner",
                    "noop",
                    "--gate",
                    gate,
                ]
            )
            for _ in range(workers)
        ]
        try:
            await asyncio.gather(*(p.start(word="GATE") for p in procs))
            cpu0 = [proc_cpu(p.pid) or 0.0 for p in procs]
            stats0 = await commandstats(ctx.redis)
            own0 = dict(own)
            redis_cpu0 = await ctx.redis_cpu()
            m0 = machine_cpu()
            me0 = time.process_time()
            t0 = time.time()
            await ctx.redis.rpush(gate, *["go"] * workers)
            async with spy(ctx, procs[0].pid, f"{tag}-worker"):
                t1 = await _wait_all(engine, started, limit_s=300)
            cpu1 = [proc_cpu(p.pid) or 0.0 for p in procs]
            for p in procs:
                assert p.proc is not None
                p.proc.send_signal(signal.SIGUSR1)
            stats1 = await commandstats(ctx.redis)
            own1 = dict(own)
            redis_cpu = await ctx.redis_cpu() - redis_cpu0
            m1 = machine_cpu()
            me = time.process_time() - me0
            sent: collections.Counter[str] = collections.Counter()
            for p in procs:
                sent.update(json.loads(await p.wait_printed("COUNTS")))
        finally:
            await asyncio.gather(*(p.stop() for p in procs))
        # every execution Succeeded (checked while waiting), with every action Succeeded; the
        # clock stops at the last execution's lastUpdateTime (its end, stamped by the worker
        # on this machine's clock) rather than at the driver's pass that noticed it
        ok = 0
        last = 0.0
        for name, eid in started:
            _, x = await engine.execution(name, eid)
            ok += sum(1 for a in x.actions.values() if a.status == "Succeeded")
            last = max(last, float(getattr(x, "lastUpdateTime", 0.0) or 0.0))
        if ok != n:
            raise RuntimeError(f"only {ok} of {n} actions succeeded")
        ended = last if t0 < last <= t1 else t1
        took = ended - t0
    finally:
        await redis.aclose()

    # what the workers sent (their clients' counts) and what Redis ran (INFO commandstats:
    # with the commands Lua scripts run inside Redis, less the driver's own commands)
    server = delta(stats1, stats0)
    mine = delta(own1, own0)
    ran = {k: v - mine.get(k, 0) for k, v in server.items()}
    ran = {k: v for k, v in ran.items() if v > 0 and k not in ("info", "rpush")}
    appends = sum(ran.get(c, 0) for c in APPEND_COMMANDS)
    reads = sum(ran.get(c, 0) for c in READ_COMMANDS)
    worker_cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    busy = m1[0] - m0[0]
    wall_all = m1[1] - m0[1]
    cores = os.cpu_count() or 1
    top_sent = sorted(sent.items(), key=lambda kv: -kv[1])[:10]
    top_ran = sorted(ran.items(), key=lambda kv: -kv[1])[:12]
    return {
        "workers": workers,
        "actions": n,
        "executions": len(started),
        "pipelines": st.actions_pipelines,
        "actions_per_execution": st.actions_per_execution,
        "concurrency_per_worker": st.concurrency,
        "prepare_s": prepare_s,
        "seconds": took,
        "seconds_until_seen": t1 - t0,
        "clock_stopped_at": "lastUpdateTime" if ended == last else "seen",
        "actions_per_s": n / took,
        # INFO commandstats (less the driver's commands): what Redis ran, scripts' insides too
        "appends_per_action": appends / n,
        "log_reads_per_action": reads / n,
        "xrange_per_action": ran.get("xrange", 0) / n,
        "calls_per_action": {k: v / n for k, v in top_ran},
        "driver_commands_subtracted": sum(mine.values()),
        # what the worker processes sent (their clients' counts): round trips
        "sent": {
            "appends_per_action": sum(sent.get(c, 0) for c in APPEND_COMMANDS) / n,
            "log_reads_per_action": sum(sent.get(c, 0) for c in READ_COMMANDS) / n,
            "round_trips_per_action": sum(sent.values()) / n,
            "per_action": {k: v / n for k, v in top_sent},
        },
        "cpu": {
            "workers_s": sum(worker_cpu),
            "per_worker_s": worker_cpu,
            "workers_ms_per_action": sum(worker_cpu) / n * 1000,
            "redis_s": redis_cpu,
            "redis_ms_per_action": redis_cpu / n * 1000,
            "driver_s": me,
            "machine_busy_cores": busy / took if took else None,
            "machine_cores": cores,
            "machine_busy_fraction": busy / wall_all if wall_all else None,
            "other_s": busy - sum(worker_cpu) - redis_cpu - me,
        },
    }
