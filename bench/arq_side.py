"""arq's side of the ``actions`` benchmark. Runs with the interpreter of ``bench/.venv-arq``
(arq installed there, nothing of stageline), so it imports only arq and the standard library.

    python arq_side.py enqueue --port P --n N
    python arq_side.py work --port P --max-jobs C --poll-delay S

``work`` prints ``READY <epoch seconds>`` from arq's ``on_startup`` hook (just before arq's
poll loop starts), runs until SIGTERM, then prints ``EXECUTED <runs> <distinct jobs>``: how
often the job function itself ran in this process, and for how many different jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

EXECUTED: list[str] = []  # the id of every job run, repeats included


async def noop(ctx: dict[str, Any]) -> None:
    EXECUTED.append(ctx["job_id"])


async def enqueue(port: int, n: int) -> None:
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))
    started = time.perf_counter()
    for i in range(n):
        await pool.enqueue_job("noop", _job_id=f"j{i}")
    took = time.perf_counter() - started
    print(f"ENQUEUED {n} {took:.6f}")
    await pool.aclose()


async def on_startup(ctx: dict[str, Any]) -> None:
    sys.stdout.write(f"READY {time.time():.6f}\n")
    sys.stdout.flush()


def work(port: int, max_jobs: int, poll_delay: float) -> None:
    w = Worker(
        functions=[noop],
        redis_settings=RedisSettings(host="127.0.0.1", port=port),
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        on_startup=on_startup,
        handle_signals=True,
        keep_result=60,
    )
    try:
        w.run()
    finally:
        sys.stdout.write(f"EXECUTED {len(EXECUTED)} {len(set(EXECUTED))}\n")
        sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--n", type=int, required=True)
    w = sub.add_parser("work")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--max-jobs", type=int, default=10)
    w.add_argument("--poll-delay", type=float, default=0.5)
    a = p.parse_args()
    if a.what == "enqueue":
        asyncio.run(enqueue(a.port, a.n))
    else:
        work(a.port, a.max_jobs, a.poll_delay)


if __name__ == "__main__":
    main()
