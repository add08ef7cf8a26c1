"""``stageline worker`` and signals: SIGTERM lets the running action finish (within the
grace) and exits 0; a second SIGTERM stops at once and hands the action back (WorkerLost)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from tests.redis_server import RedisServer
from tests.workers.conftest import StartWorker
from tests.workers.helpers import (
    latest,
    make_engine,
    pipeline,
    q,
    tracked,
    wait_action,
    wait_file,
    wait_status,
)

pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(90)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def _wait_exit(proc: subprocess.Popen[bytes] | None, timeout: float) -> int:
    assert proc is not None
    return proc.wait(timeout)


async def test_sigterm_finishes_the_running_action_then_a_second_one_hands_it_back(
    redis_factory: type[RedisServer], procs: StartWorker, tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    starts = tmp_path / "starts"
    try:
        engine = make_engine(client)
        await engine.start()
        pid_file = tmp_path / "pid"
        long = tmp_path / "long"  # once it exists, the action runs for 30 s
        slow = f"[ -f {q(long)} ] && exec sleep 30"
        await engine.create_pipeline(
            pipeline(
                "sig",
                {"Build": [tracked("b", starts, f"echo $$ > {q(pid_file)}; {slow}; sleep 1")]},
                mode="PARALLEL",
            )
        )
        # 1. one SIGTERM: the action finishes and is recorded; the process exits 0
        w1 = procs(server.url, "w1", shutdown_grace=20)
        eid = await engine.start_execution("sig")
        await wait_file(pid_file, 20)
        assert w1.proc is not None
        w1.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert _wait_exit(w1.proc, 20) == 0, w1.log()
        assert time.monotonic() - t0 < 15
        x = await wait_status(engine, "sig", eid, "Succeeded", "Failed")
        assert x.status == "Succeeded"
        assert "finishing running actions" in w1.log()

        # 2. SIGTERM twice: the action is cancelled and handed back as WorkerLost
        pid_file.unlink()
        long.touch()
        w2 = procs(server.url, "w2", shutdown_grace=20)
        eid2 = await engine.start_execution("sig")
        await wait_file(pid_file, 20)
        await wait_action(engine, "sig", eid2, "b", lambda a: a.worker == "w2", "started")
        assert w2.proc is not None
        w2.proc.send_signal(signal.SIGTERM)
        await anyio.sleep(0.2)
        w2.proc.send_signal(signal.SIGTERM)
        assert _wait_exit(w2.proc, 10) == 0, w2.log()
        x = await wait_status(engine, "sig", eid2, "Failed")
        assert latest(x, "Build", "b").errorCode == ev.WORKER_LOST
        action_pid = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while _alive(action_pid):  # its process group was killed
            assert time.monotonic() < deadline, "the action's process outlived the worker"
            await anyio.sleep(0.05)
    finally:
        await client.aclose()
