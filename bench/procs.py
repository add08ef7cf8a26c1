"""Child processes the benchmarks start: ``python -m bench.procs serve|worker ...``.

Each prints ``READY <epoch seconds>`` on stdout once it is serving, and stops on SIGTERM.

- ``serve``: the HTTP API, ``serve(ServeConfig(...))``, by default without in-process workers.
- ``worker``: one worker process (``workers.service.Worker``) whose ``commands`` runner is an
  in-process trivial action instead of a shell: ``noop`` (succeeds at once) or ``hook``
  (records ``time.time()`` when the action starts into the Redis list ``bench:starts``,
  then fails, so the same stage can be retried again).
"""

from __future__ import annotations

import argparse
import contextlib
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
    from redis.asyncio import Redis

    from app.engine import Engine
    from app.store.keys import Keys
    from workers.config import WorkerConfig
    from workers.runner import ActionJob, ActionResult
    from workers.service import Worker

    redis = Redis.from_url(a.redis_url)
    hook_redis = Redis.from_url(a.redis_url)

    async def noop(job: ActionJob) -> ActionResult:
        return ActionResult(True, summary="noop")

    async def hook(job: ActionJob) -> ActionResult:
        started = time.time()
        await hook_redis.rpush("bench:starts", f"{job.actionExecutionId} {started:.6f}")
        return ActionResult(False, summary="hook", errorCode="BenchFailure", message="again")

    engine = Engine(redis, Keys(partitions=a.partitions))
    cfg = WorkerConfig(
        name=f"bench-{os.getpid()}",
        concurrency=a.concurrency,
        shutdown_grace_s=2.0,
    )
    worker = Worker(engine, cfg, runners={"commands": hook if a.runner == "hook" else noop})

    async with anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for _ in received:
                    worker.stop(now=True)
                    return

        tg.start_soon(signals)
        await tg.start(worker.run)
        _ready()
    await redis.aclose()
    await hook_redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.procs")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--redis-url", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--workers", action="store_true")
    w = sub.add_parser("worker")
    w.add_argument("--redis-url", required=True)
    w.add_argument("--partitions", type=int, default=16)
    w.add_argument("--concurrency", type=int, default=16)
    w.add_argument("--runner", choices=["noop", "hook"], default="noop")
    a = p.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_serve if a.what == "serve" else _worker, a)


if __name__ == "__main__":
    main()
