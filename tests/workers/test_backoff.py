"""workers/backoff.py: jittered delays, a bounded log rate, and stops that are not ignored.

Issue 12: a worker pointed at a dead Redis logged twice a second forever and ignored
SIGTERM and the first SIGINT. The last tests run the real ``stageline worker`` against a
port nobody listens on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redis_server import free_port
from workers.backoff import Backoff, retry_until, sleep_or_stop

DOWN = RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_jittered_and_capped() -> None:
    lo = Backoff("x", base_s=0.1, max_s=2.0, rng=lambda: 0.0)
    hi = Backoff("x", base_s=0.1, max_s=2.0, rng=lambda: 1.0)
    lows, highs = [], []
    for _ in range(12):
        lo.failures += 1
        hi.failures += 1
        lows.append(lo.next_delay())
        highs.append(hi.next_delay())
    assert all(d == pytest.approx(0.05) for d in lows)  # never a busy loop
    assert highs[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert highs[5:] == pytest.approx([2.0] * 7)  # capped
    with pytest.raises(ValueError):
        Backoff("x", base_s=0, max_s=1)
    huge = Backoff("x", base_s=0.1, max_s=2.0, rng=lambda: 1.0)
    huge.failures = 10_000
    assert huge.next_delay() == pytest.approx(2.0)


def test_log_rate_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b = Backoff("orchestrator", log_every_s=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="stageline.worker"):
        for _ in range(6000):  # 10 minutes of failures, ten a second
            b.record(DOWN)
            clock.now += 0.1
        b.reset()
    lines = [r.getMessage() for r in caplog.records]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 20 <= len(warnings) <= 21  # one at the start, then one per 30 s
    assert "Redis unavailable" in lines[0] and "Connection refused" in lines[0]
    assert "still unavailable after 30 s" in lines[1] and "300 failures" in lines[1]
    assert lines[-1].startswith("orchestrator: Redis reachable again after 600.0 s (6000")
    assert all("\n" not in m for m in lines)
    assert all(r.exc_info is None for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stageline.worker"):
        b.reset()  # no outage: nothing to say
        b.record(DOWN)  # a new outage starts with a fresh line
    assert len(caplog.records) == 1 and "Redis unavailable" in caplog.records[0].getMessage()


async def test_wait_returns_false_at_once_when_stopped() -> None:
    stop = anyio.Event()
    b = Backoff("x", stop=stop, base_s=30, max_s=60)
    stop.set()
    with anyio.fail_after(1):
        assert await b.wait(DOWN) is False


async def test_stop_interrupts_a_long_wait() -> None:
    stop = anyio.Event()
    b = Backoff("x", stop=stop, base_s=30, max_s=60)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_set_after, stop, 0.05)
        t0 = anyio.current_time()
        with anyio.fail_after(2):
            assert await b.wait(DOWN) is False
        assert anyio.current_time() - t0 < 1


async def test_sleep_or_stop() -> None:
    assert await sleep_or_stop(0.01, None) is True
    stop = anyio.Event()
    assert await sleep_or_stop(0.01, stop) is True
    stop.set()
    with anyio.fail_after(1):
        assert await sleep_or_stop(60, stop) is False


async def test_retry_until_succeeds_after_failures() -> None:
    calls = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 4:
            raise DOWN

    b = Backoff("start", base_s=0.001, max_s=0.002)
    assert await retry_until(flaky, "start", anyio.Event(), backoff=b) is True
    assert len(calls) == 4 and b.failures == 0


async def test_retry_until_gives_up_on_stop_even_mid_call() -> None:
    stop = anyio.Event()

    async def never() -> None:
        raise DOWN

    async def hangs() -> None:
        await anyio.sleep(3600)  # e.g. a connect to a host that drops packets

    for fn in (never, hangs):
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_after, stop, 0.1)
            with anyio.fail_after(2):
                assert await retry_until(fn, "start", stop) is False


async def test_retry_until_lets_other_errors_through() -> None:
    async def broken() -> None:
        raise ValueError("partitions mismatch")

    with pytest.raises(ValueError, match="partitions"):
        await retry_until(broken, "start", anyio.Event())


async def _set_after(event: anyio.Event, seconds: float) -> None:
    await anyio.sleep(seconds)
    event.set()


# --- the real worker command --------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_with_unreachable_redis_exits_on_the_first_signal(
    sig: signal.Signals, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--redis-url",
             f"redis://127.0.0.1:{free_port()}/0", "--name", "w-dead"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "Redis unavailable" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the worker never reported the outage"
            time.sleep(0.05)
        time.sleep(3)  # let it retry for a while
        proc.send_signal(sig)
        t0 = time.monotonic()
        code = proc.wait(10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert took < 2.0, f"exit took {took:.2f} s\n{text}"
    assert code == 0, text
    assert "Traceback" not in text
    outage_lines = [line for line in text.splitlines() if "Redis" in line and "unavailable" in line]
    assert 1 <= len(outage_lines) <= 2, text  # not twice a second
