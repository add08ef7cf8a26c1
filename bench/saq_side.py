"""SAQ's side of the ``actions`` benchmark. Runs with the interpreter of ``bench/.venv-saq``
(SAQ installed there, nothing of stageline), so it imports only SAQ and the standard library.

    python saq_side.py enqueue --port P --n N
    python saq_side.py work --port P --concurrency C
    python saq_side.py verify --port P --n N

``work`` prints ``READY <epoch seconds>`` from SAQ's ``startup`` hook (just before the
worker's ``concurrency`` dequeue loops start), runs until SIGTERM, then prints
``EXECUTED <runs> <distinct jobs>``: how often the job function itself ran in this process,
and for how many different jobs. ``verify``
prints ``COMPLETE <n>``: how many of the N jobs SAQ stored with status ``complete``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from saq import Queue, Worker

EXECUTED: list[str] = []  # the key of every job run, repeats included


async def noop(ctx: dict[str, Any]) -> None:
    EXECUTED.append(ctx["job"].key)


def _queue(port: int) -> Queue:
    return Queue.from_url(f"redis://127.0.0.1:{port}/0")


async def enqueue(port: int, n: int) -> None:
    q = _queue(port)
    started = time.perf_counter()
    for i in range(n):
        await q.enqueue("noop", key=f"j{i}")
    took = time.perf_counter() - started
    print(f"ENQUEUED {n} {took:.6f}")
    await q.disconnect()


async def startup(ctx: dict[str, Any]) -> None:
    sys.stdout.write(f"READY {time.time():.6f}\n")
    sys.stdout.flush()


async def work(port: int, concurrency: int) -> None:
    q = _queue(port)
    w = Worker(q, functions=[noop], concurrency=concurrency, startup=startup)
    try:
        await w.start()  # returns on SIGTERM (SAQ's own signal handlers)
    finally:
        sys.stdout.write(f"EXECUTED {len(EXECUTED)} {len(set(EXECUTED))}\n")
        sys.stdout.flush()
        await q.disconnect()


async def verify(port: int, n: int) -> None:
    q = _queue(port)
    statuses: dict[str, int] = {}
    keys = [f"j{i}" for i in range(n)]
    for i in range(0, n, 500):
        for job in await q.jobs(keys[i : i + 500]):
            status = "missing" if job is None else str(job.status.value)
            statuses[status] = statuses.get(status, 0) + 1
    print(f"COMPLETE {statuses.get('complete', 0)} {json.dumps(statuses)}")
    await q.disconnect()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("enqueue", "verify"):
        e = sub.add_parser(name)
        e.add_argument("--port", type=int, required=True)
        e.add_argument("--n", type=int, required=True)
    w = sub.add_parser("work")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--concurrency", type=int, default=10)
    a = p.parse_args()
    if a.what == "enqueue":
        asyncio.run(enqueue(a.port, a.n))
    elif a.what == "verify":
        asyncio.run(verify(a.port, a.n))
    else:
        asyncio.run(work(a.port, a.concurrency))


if __name__ == "__main__":
    main()
