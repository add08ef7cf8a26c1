"""Issue 12: Redis paused for longer than a running action's lease, then back.

While Redis is stopped (SIGSTOP) nothing can renew the lease; when it comes back every
lease looks expired to the partition owners. The reaper must not beat a live runner to it:
a lease seen expired is reaped only if its runner still has not renewed it a grace period
later (observed while Redis answers). The action ends Succeeded with its real result, no
WorkerLost, whether Redis resumes (SIGCONT) or is killed and restarted from its AOF.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.domain import events as ev
from app.domain.state import ExecutionState
from app.engine import Engine
from tests.redis_server import RedisServer
from tests.workers.helpers import (
    count,
    counted,
    latest,
    make_engine,
    pipeline,
    q,
    running,
    wait_file,
    wait_status,
)


async def _settled(engine: Engine, eid: str) -> ExecutionState:
    """Wait for the execution to end; the test's own reads retry while Redis comes back."""
    for _ in range(60):
        try:
            return await wait_status(engine, "paused", eid, "Succeeded", "Failed", within=60)
        except (RedisConnectionError, RedisTimeoutError):
            await anyio.sleep(0.5)
    raise AssertionError("Redis never came back")


pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(120)]

LEASE_S = 3.0
PAUSE_S = 2.5 * LEASE_S


@pytest.mark.parametrize("ends", ["while frozen", "after"])
@pytest.mark.parametrize("back", ["resumed", "restarted"])
async def test_redis_paused_longer_than_the_lease(
    redis_factory: type[RedisServer], tmp_path: Path, back: str, ends: str
) -> None:
    server = redis_factory(tmp_path / "redis", appendonly=True)
    server.start()
    client = Redis.from_url(server.url, socket_timeout=1.0)
    c = tmp_path / "runs"
    started, done, go = tmp_path / "started", tmp_path / "done", tmp_path / "go"
    if ends == "while frozen":
        go.touch()
    try:
        engine = make_engine(Redis.from_url(server.url))
        await engine.start()
        await engine.create_pipeline(
            pipeline(
                "paused",
                {
                    "Build": [
                        counted(
                            "b",
                            c,
                            f"touch {q(started)}; sleep 1; "
                            f"while [ ! -f {q(go)} ]; do sleep 0.05; done; "
                            f"echo real result; touch {q(done)}",
                        )
                    ],
                    "Deploy": [counted("dep", c)],
                },
            )
        )
        async with running(
            Redis.from_url(server.url, socket_timeout=1.0), lease_ttl_s=LEASE_S, reap_every_s=0.2
        ):
            eid = await engine.start_execution("paused")
            await wait_file(started)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)  # Redis frozen: no renewal, no result
            try:
                if ends == "while frozen":
                    await wait_file(done, within=10)  # the command ends while Redis is frozen
                await anyio.sleep(PAUSE_S)
            finally:
                if back == "resumed":
                    os.kill(server.proc.pid, signal.SIGCONT)
                else:  # killed while frozen, started again from its append-only file
                    server.kill()
                    server.start()
            if ends == "after":  # only the heartbeat stands between the reaper and the run
                await anyio.sleep(2 * LEASE_S)
                go.touch()
            x = await _settled(engine, eid)
        b = latest(x, "Build", "b")
        assert b.status == "Succeeded", b
        assert "real result" in (b.summary or ""), b
        assert x.status == "Succeeded", x
        assert count(c, "b") == 1 and count(c, "dep") == 1
        assert not [a for a in x.actions.values() if a.errorCode == ev.WORKER_LOST]
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        await client.aclose()
