"""``stageline serve`` with an audit key: the API and its in-process workers tag every entry
they write (a whole run through boto3: create, start, the runner and orchestrator's events),
and ``audit verify`` with the key authenticates all of them."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from app.api.server import ServeConfig
from app.audit import verify
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.api_helpers import client, run_stageline, wait_for
from tests.audit.conftest import other_db
from workers.config import WorkerConfig

KEY = b"serve-audit-key-0123456789abcdef0123"
PARTITIONS = 4
ROLE = "arn:aws:iam::123456789012:role/stageline-keyed"
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}

pytestmark = pytest.mark.timeout(120)


def test_serve_and_its_workers_tag_every_entry(real_redis_url: str) -> None:
    url = other_db(real_redis_url, 5)

    async def flush() -> None:
        r = Redis.from_url(url)
        await r.flushdb()
        await r.aclose()

    anyio.run(flush)
    cfg = ServeConfig(
        port=0,
        redis_url=url,
        partitions=PARTITIONS,
        log_level="warning",
        worker=WorkerConfig(name="keyed", block_ms=200, shutdown_grace_s=2.0),
        audit_key=KEY,
    )
    assert "serve-audit-key" not in repr(cfg)  # the key is kept out of reprs (and logs)
    with run_stageline(cfg) as srv:
        cp = client(srv.url)
        cp.create_pipeline(
            pipeline={
                "name": "tagged",
                "roleArn": ROLE,
                "stages": [
                    {
                        "name": "Build",
                        "actions": [{"name": "b", "actionTypeId": COMMANDS, "commands": ["true"]}],
                    }
                ],
            }
        )
        cp.start_pipeline_execution(name="tagged")

        def succeeded() -> Any:
            runs = cp.list_pipeline_executions(pipelineName="tagged")["pipelineExecutionSummaries"]
            return runs and runs[0]["status"] == "Succeeded"

        wait_for(succeeded, timeout=60, what="the execution to succeed")

    async def check() -> None:
        redis = Redis.from_url(url)
        try:
            store = EventStore(redis, Keys(partitions=PARTITIONS))
            raw = await store.read_raw("tagged")
            assert len(raw) > 5 and all(len(r.tag) == 64 for r in raw)
            report = await verify(store, None, key=KEY)
            assert report.ok, report.all_problems()
            (p,) = report.pipelines
            assert p.tagged == len(raw) and p.unkeyed == 0
            wrong = await verify(store, None, key=b"w" * 32)
            assert not wrong.ok and wrong.all_problems()[0].kind == "tag"
        finally:
            await redis.flushdb()
            await redis.aclose()

    anyio.run(check)
