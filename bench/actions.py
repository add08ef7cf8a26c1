"""``actions``: actions completed end to end per second by one worker process, vs arq.

stageline: ``P`` PARALLEL pipelines with one stage of ``K`` Commands actions; ``N / K``
executions are started beforehand (the events, dispatch entries included, appended through
the real store), so ``N`` actions are scheduled and waiting. Then one worker process
(``workers.service.Worker`` with an in-process no-op ``commands`` runner) starts; the clock
runs from its READY line to the moment the driver sees every pipeline's log complete
(every action Started and Succeeded, every stage and execution Succeeded: ``2K + 2`` more
events per execution). Afterwards a fresh projection of each pipeline is folded from the log and
checked (every action Succeeded).

arq (own virtual environment ``bench/.venv-arq``): ``N`` no-op jobs are enqueued
beforehand, then ``arq``'s worker starts in a subprocess; the clock runs from its
``on_startup`` hook to the moment its queue is empty (a job leaves the queue in the same
transaction that stores its result). arq runs at its defaults (``max_jobs=10``,
``poll_delay=0.5``) and tuned (``max_jobs`` = our concurrency, short ``poll_delay``); the
ratio is taken against the best arq figure.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

from app.domain import commands as c
from app.domain.state import fold
from app.store.eventstore import EventStore
from app.store.keys import Keys
from bench.common import BENCH, PY, Proc, Record, run_cmd
from bench.context import Ctx, proc_cpu
from bench.gen import Sim, one_stage_declaration
from bench.profiling import spy

ARQ_VENV = BENCH / ".venv-arq"
ARQ_PY = ARQ_VENV / "bin" / "python"
ARQ_SIDE = BENCH / "arq_side.py"


def ensure_arq(ctx: Ctx) -> str:
    """Create ``bench/.venv-arq`` with arq on first use; arq's version."""
    if not ARQ_PY.exists():
        ctx.log("creating bench/.venv-arq (python3 -m venv + pip install arq)")
        subprocess.run(["python3", "-m", "venv", str(ARQ_VENV)], check=True)
        subprocess.run(
            [str(ARQ_VENV / "bin" / "pip"), "install", "-q", "arq"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    out = subprocess.run(
        [str(ARQ_PY), "-c", "import importlib.metadata as m; print(m.version('arq'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


async def _ours(ctx: Ctx) -> dict[str, Any]:
    st = ctx.settings
    await ctx.fresh()
    k = st.actions_per_execution
    executions = st.actions_n // k
    n = executions * k
    store = EventStore(ctx.redis, Keys())
    sims = [
        Sim(store, one_stage_declaration(f"act-{i}", actions=k), seed=i)
        for i in range(st.actions_pipelines)
    ]
    for i in range(executions):
        sim = sims[i % len(sims)]
        sim.do(c.StartExecution(executionId=_uuid(), triggerDetail="bench"), api=True)
    for sim in sims:
        await sim.flush()
    start_len = {s.name: s.state.version for s in sims}
    # still to come per execution: K x Started, K x Succeeded, StageSucceeded, ExecutionSucceeded
    per_exec = 2 * k + 2
    expected = {
        s.name: start_len[s.name] + per_exec * len(s.state.executions) for s in sims
    }
    logs = [store.keys.sequence(s.name) for s in sims]  # each pipeline's event counter

    worker = Proc(
        [
            PY, "-m", "bench.procs", "worker", "--redis-url", ctx.redis_url,
            "--concurrency", str(st.concurrency), "--runner", "noop",
        ]
    )
    cpu_redis0 = await ctx.redis_cpu()
    t0 = await worker.start()
    try:
        async with spy(ctx, worker.pid, "actions-worker"):
            t1 = await _wait(ctx, logs, sum(expected.values()), limit_s=300)
        cpu_worker = proc_cpu(worker.pid)
    finally:
        await worker.stop()
    cpu_redis = await ctx.redis_cpu() - cpu_redis0
    took = t1 - t0

    # fold fresh projections from the log and check every action succeeded
    f0 = time.perf_counter()
    ok = 0
    events = 0
    for s in sims:
        state = fold(s.name, await store.read(s.name))
        events += state.version
        for x in state.executions.values():
            ok += sum(1 for a in x.actions.values() if a.status == "Succeeded")
    fold_s = time.perf_counter() - f0
    if ok != n:
        raise RuntimeError(f"only {ok} of {n} actions succeeded")
    appended = sum(expected.values()) - sum(start_len.values())
    cmd_bytes = 0
    for s in sims:  # command ids kept per pipeline (the runner's start ids)
        cmd_bytes += int(await ctx.redis.memory_usage(store.keys.commands(s.name), samples=0) or 0)
    return {
        "actions": n,
        "pipelines": len(sims),
        "actions_per_execution": k,
        "concurrency": st.concurrency,
        "seconds": took,
        "actions_per_s": n / took,
        "events_appended_by_worker": appended,
        "events_per_s": appended / took,
        "worker_cpu_s_per_1k_actions": (cpu_worker or 0) / n * 1000,
        "redis_cpu_s_per_1k_actions": cpu_redis / n * 1000,
        "verify_fold_s": fold_s,
        "verify_fold_events": events,
        "command_id_table_bytes_per_action": cmd_bytes / n,
    }


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


async def _wait(ctx: Ctx, counters: list[str], total: int, *, limit_s: float) -> float:
    deadline = time.monotonic() + limit_s
    while True:
        pipe = ctx.redis.pipeline(transaction=False)
        for key in counters:
            pipe.get(key)
        lens = [int(v or 0) for v in await pipe.execute()]
        now = time.time()
        if sum(lens) >= total:
            return now
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {sum(lens)} of {total} events")
        await asyncio.sleep(0.002)


async def _arq(ctx: Ctx, n: int, max_jobs: int, poll_delay: float) -> dict[str, Any]:
    await ctx.fresh()
    port = str(ctx.redis_port)
    out = await run_cmd([str(ARQ_PY), str(ARQ_SIDE), "enqueue", "--port", port, "--n", str(n)])
    enqueue_s = float(out.split()[2])
    queued = await ctx.redis.zcard("arq:queue")
    if queued != n:
        raise RuntimeError(f"arq: {queued} of {n} jobs queued")
    worker = Proc(
        [
            str(ARQ_PY), str(ARQ_SIDE), "work", "--port", port,
            "--max-jobs", str(max_jobs), "--poll-delay", str(poll_delay),
        ]
    )
    cpu_redis0 = await ctx.redis_cpu()
    t0 = await worker.start()
    try:
        async with spy(ctx, worker.pid, f"actions-arq-{max_jobs}"):
            deadline = time.monotonic() + 300
            while True:
                left = await ctx.redis.zcard("arq:queue")
                now = time.time()
                if left == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"arq timed out with {left} jobs left")
                await asyncio.sleep(0.002)
        cpu_worker = proc_cpu(worker.pid)
    finally:
        await worker.stop()
    cpu_redis = await ctx.redis_cpu() - cpu_redis0
    took = now - t0
    results = 0
    async for _ in ctx.redis.scan_iter(match="arq:result:*", count=1000):
        results += 1
    return {
        "jobs": n,
        "max_jobs": max_jobs,
        "poll_delay_s": poll_delay,
        "seconds": took,
        "jobs_per_s": n / took,
        "results_stored": results,
        "enqueue_jobs_per_s": n / enqueue_s,
        "worker_cpu_s_per_1k_jobs": (cpu_worker or 0) / n * 1000,
        "redis_cpu_s_per_1k_jobs": cpu_redis / n * 1000,
    }


async def run(ctx: Ctx) -> Record:
    st = ctx.settings
    rec = Record(
        name="actions",
        what="actions completed end to end per second (scheduled -> run by one worker process "
        "-> result in the log and projection), trivial in-process action",
        unit="actions/s",
        target=">= 10x arq jobs/s",
        baseline_what="arq no-op jobs/s, one worker process, best of the configurations tried",
    )
    version = await asyncio.to_thread(ensure_arq, ctx)
    ours = await _ours(ctx)
    ctx.log(f"actions: stageline {ours['actions_per_s']:.0f} actions/s")
    arq_runs = []
    for n, max_jobs, poll in ((st.arq_default_n, 10, 0.5), (st.arq_n, st.concurrency, 0.01)):
        r = await _arq(ctx, n, max_jobs, poll)
        ctx.log(f"actions: arq max_jobs={max_jobs} poll_delay={poll}: {r['jobs_per_s']:.0f} jobs/s")
        arq_runs.append(r)
    best = max(arq_runs, key=lambda r: r["jobs_per_s"])
    rec.value = ours["actions_per_s"]
    rec.baseline = best["jobs_per_s"]
    rec.ratio = rec.value / rec.baseline
    rec.passed = rec.ratio >= 10
    rec.figures = {
        "stageline": ours,
        "arq": {"version": version, "python": sys.version.split()[0], "runs": arq_runs},
    }
    return rec
