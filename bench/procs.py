"""Child processes the benchmarks start: ``python -m bench.procs serve|worker ...``.

Each prints ``READY <epoch seconds>`` on stdout once it is serving, and stops on SIGTERM.

- ``serve``: the HTTP API, ``serve(ServeConfig(...))``, by default without in-process workers.
- ``worker``: one worker process (``workers.service.Worker``) whose ``commands`` runner is an
  in-process trivial action instead of a shell: ``noop`` (succeeds at once) or ``hook``
  (records ``time.time()`` when the action starts into the Redis list ``bench:starts``,
  then fails, so the same stage can be retried again). With ``--gate KEY`` it connects and
  builds everything, then waits for an item on the Redis list ``KEY`` (BLPOP) before it starts
  the worker: the driver releases several processes at one moment. Its Redis client counts
  the commands it sends; on SIGUSR1 it prints ``COUNTS <json>`` (per command, since the gate
  opened).
- ``cold``: a fresh process loads one pipeline (``Engine.pipeline``) and answers
  GetPipelineState (``app.queries.get_pipeline_state``); prints ``COLD <json>`` with both
  times (imports and connecting excluded) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time

import anyio


def _ready() -> None:
    sys.stdout.write(f"READY {time.time():.6f}\n")
    sys.stdout.flush()


async def _serve(a: argparse.Namespace) -> None:
    from app.api.server import ServeConfig, serve

    cfg = ServeConfig(
        host="127.0.0.1",
        port=a.port,
        redis_url=a.redis_url,
        workers=a.workers,
        log_level="warning",
    )
    async with anyio.create_task_group() as tg:
        await tg.start(serve, cfg)
        _ready()


async def _worker(a: argparse.Namespace) -> None:
    from app.engine import Engine
    from bench.common import counting_client, plain_client
    from workers.config import WorkerConfig
    from workers.runner import ActionJob, ActionResult
    from workers.service import Worker

    # the worker's commands, as it sends them (on a cluster node: the cluster client)
    redis, counts = await counting_client(a.redis_url)
    hook_redis = await plain_client(a.redis_url)
    since: dict[str, int] = {}

    async def noop(job: ActionJob) -> ActionResult:
        return ActionResult(True, summary="noop")

    async def hook(job: ActionJob) -> ActionResult:
        started = time.time()
        await hook_redis.rpush("bench:starts", f"{job.actionExecutionId} {started:.6f}")
        return ActionResult(False, summary="hook", errorCode="BenchFailure", message="again")

    if a.partitions is None:
        engine = Engine(redis)  # the engine's own default layout
    else:
        from app.store.keys import Keys

        engine = Engine(redis, Keys(partitions=a.partitions))
    cfg = WorkerConfig(
        name=f"bench-{os.getpid()}",
        concurrency=a.concurrency,
        shutdown_grace_s=2.0,
    )
    worker = Worker(engine, cfg, runners={"commands": hook if a.runner == "hook" else noop})

    gate = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(
                signal.SIGTERM, signal.SIGINT, signal.SIGUSR1
            ) as received:
                async for sig in received:
                    if sig == signal.SIGUSR1:  # the commands sent since the gate opened
                        now = {k: v - since.get(k, 0) for k, v in counts.items()}
                        sys.stdout.write(f"COUNTS {json.dumps(now)}\n")
                        sys.stdout.flush()
                        continue
                    gate.cancel()
                    worker.stop(now=True)
                    return

        tg.start_soon(signals)
        if a.gate:
            with gate:
                await redis.ping()
                sys.stdout.write("GATE\n")
                sys.stdout.flush()
                # BLPOP in 1-s rounds: a cluster client times a reply out (socket_timeout)
                while await redis.blpop([a.gate], timeout=1) is None:
                    pass
            if gate.cancel_called:
                return
        since.update(counts)
        await tg.start(worker.run)
        _ready()
    await redis.aclose()
    await hook_redis.aclose()


async def _cold(a: argparse.Namespace) -> None:
    import resource

    from app import queries as q
    from app.engine import Engine
    from bench.common import plain_client

    redis = await plain_client(a.redis_url)
    await redis.ping()
    engine = Engine(redis)
    t0 = time.perf_counter()
    state = await engine.pipeline(a.pipeline)
    t1 = time.perf_counter()
    answer = json.dumps(q.get_pipeline_state(state))
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "load_s": t1 - t0,
        "state_s": t2 - t1,
        "total_s": t2 - t0,
        "answer_bytes": len(answer),
        "peak_rss_bytes": rss,
    }
    sys.stdout.write(f"COLD {json.dumps(out)}\n")
    await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.procs")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--redis-url", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--workers", action="store_true")
    w = sub.add_parser("worker")
    w.add_argument("--redis-url", required=True)
    w.add_argument("--partitions", type=int, default=None, help="default: the engine's")
    w.add_argument("--concurrency", type=int, default=16)
    w.add_argument("--runner", choices=["noop", "hook"], default="noop")
    w.add_argument("--gate", default=None, help="wait for an item on this Redis list first")
    k = sub.add_parser("cold")
    k.add_argument("--redis-url", required=True)
    k.add_argument("--pipeline", required=True)
    a = p.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run({"serve": _serve, "worker": _worker, "cold": _cold}[a.what], a)


if __name__ == "__main__":
    main()
