"""taskiq's side of the ``actions`` benchmark. Runs with the interpreter of
``bench/.venv-taskiq`` (taskiq + taskiq-redis installed there, nothing of stageline), so it
imports only those and the standard library.

    python taskiq_side.py enqueue --port P --n N
    python taskiq_side.py work --port P --concurrency C [--prefetch K]

The broker is taskiq-redis' ``RedisStreamBroker``: one Redis stream, one consumer group,
XREADGROUP in batches, an XACK per message after its result is handled (taskiq's default
``WHEN_SAVED``; no result backend). ``work`` runs one receiver in this process
(``taskiq.api.run_receiver_task``, ``max_async_tasks`` = C), prints ``READY <epoch
seconds>`` right after the broker's startup (the consumer group exists, reading starts),
runs until SIGTERM, then prints ``EXECUTED <runs> <distinct jobs>``: how often the task
function itself ran in this process, and for how many different tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from taskiq import Context, TaskiqDepends
from taskiq.api import run_receiver_task
from taskiq_redis import RedisStreamBroker

EXECUTED: list[str] = []  # the task id of every run, repeats included
STREAM = "taskiq"
GROUP = "taskiq"


def _broker(port: int) -> RedisStreamBroker:
    # consumer_id="0": the group (created by the worker) starts at the stream's first entry,
    # so jobs enqueued before the worker starts are read too
    return RedisStreamBroker(
        f"redis://127.0.0.1:{port}/0",
        queue_name=STREAM,
        consumer_group_name=GROUP,
        consumer_id="0",
    )


broker: RedisStreamBroker | None = None


def _task_broker(port: int) -> RedisStreamBroker:
    global broker
    broker = _broker(port)

    @broker.task(task_name="noop")
    async def noop(context: Context = TaskiqDepends()) -> None:  # noqa: B008 (taskiq's way)
        EXECUTED.append(context.message.task_id)

    return broker


async def enqueue(port: int, n: int) -> None:
    b = _task_broker(port)
    await b.startup()
    task = b.find_task("noop")
    assert task is not None
    started = time.perf_counter()
    for _ in range(n):
        await task.kiq()
    took = time.perf_counter() - started
    print(f"ENQUEUED {n} {took:.6f}")
    await b.shutdown()


async def work(port: int, concurrency: int, prefetch: int) -> None:
    b = _task_broker(port)
    b.is_worker_process = True
    await b.startup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"READY {time.time():.6f}\n")
    sys.stdout.flush()
    receiver = asyncio.create_task(
        run_receiver_task(b, max_async_tasks=concurrency, max_prefetch=prefetch)
    )
    try:
        await stop.wait()
    finally:
        # the count first: the driver stops the worker once every job is done
        sys.stdout.write(f"EXECUTED {len(EXECUTED)} {len(set(EXECUTED))}\n")
        sys.stdout.flush()
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(receiver, 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(b.shutdown(), 5)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--n", type=int, required=True)
    w = sub.add_parser("work")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--concurrency", type=int, default=16)
    w.add_argument("--prefetch", type=int, default=0)
    a = p.parse_args()
    if a.what == "enqueue":
        asyncio.run(enqueue(a.port, a.n))
    else:
        asyncio.run(work(a.port, a.concurrency, a.prefetch))


if __name__ == "__main__":
    main()
