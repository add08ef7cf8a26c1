"""Issue 12: Redis full (maxmemory reached) while an action runs never loses its result.

Lease renewals and the result's append are refused with OOM while memory is full; the
running command is not touched, and the result is written as soon as Redis accepts writes
again (here within the lease): the action ends Succeeded with its real result, no
WorkerLost.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
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

pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(90)]


async def test_redis_full_while_an_action_runs_then_freed(
    redis_factory: type[RedisServer], tmp_path: Path
) -> None:
    server = redis_factory(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    c = tmp_path / "runs"
    started, go = tmp_path / "started", tmp_path / "go"
    try:
        engine = make_engine(client)
        await engine.start()
        await engine.create_pipeline(
            pipeline(
                "full",
                {
                    "Build": [
                        counted(
                            "b",
                            c,
                            f"touch {q(started)}; while [ ! -f {q(go)} ]; do sleep 0.05; done; "
                            "echo real result",
                        )
                    ],
                    "Deploy": [counted("dep", c)],
                },
            )
        )
        # a lease longer than the outage: the result must simply wait for Redis
        async with running(client, lease_ttl_s=12.0, reap_every_s=0.2):
            eid = await engine.start_execution("full")
            await wait_file(started)
            await client.config_set("maxmemory", "1")  # every write is refused from now on
            with pytest.raises(Exception, match="maxmemory"):
                await client.set("probe", "x")
            go.touch()  # the action finishes while Redis is full
            await anyio.sleep(4.0)  # renewals and the result's append keep being refused
            await client.config_set("maxmemory", "0")  # memory freed
            x = await wait_status(engine, "full", eid, "Succeeded", "Failed", within=40)
        b = latest(x, "Build", "b")
        assert b.status == "Succeeded", b
        assert b.errorCode != ev.WORKER_LOST
        assert x.status == "Succeeded"
        assert count(c, "b") == 1 and count(c, "dep") == 1
        assert not [a for a in x.actions.values() if a.errorCode == ev.WORKER_LOST]
    finally:
        await client.config_set("maxmemory", "0")
        await client.aclose()
