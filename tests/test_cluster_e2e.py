"""End to end on a real 3-master Redis Cluster: ``stageline serve --redis-url <one node>``
detects the cluster and runs every path there, driven by boto3 like tests/test_api_e2e.py.

The flows are the very tests of tests/test_api_e2e.py (imported: pytest runs them again with
this module's ``live`` server): the retry flow (FAILED_ACTIONS while a sibling runs, then
ALL_ACTIONS), the automatic stage retry, a custom job through PollForJobs and
PutJob*Result, a manual approval. Then ``stageline audit verify`` checks the cluster's log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from app.api.server import ServeConfig
from app.cli import main as cli_main
from app.store.connection import connect, is_cluster
from app.store.eventstore import EventStore
from app.store.keys import Keys
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline
from tests.conftest import flushed_cluster
from tests.test_api_e2e import (
    PARTITIONS,
    _worker_config,
    commands,
    marks,
    pipeline,
    stage,
    unique,
    wait_status,
)
from tests.test_api_e2e import test_automatic_stage_retry as test_automatic_stage_retry
from tests.test_api_e2e import test_custom_action_job_worker as test_custom_action_job_worker
from tests.test_api_e2e import test_manual_approval as test_manual_approval
from tests.test_api_e2e import (
    test_retry_failed_actions_while_sibling_runs_then_all_actions as test_retry_flow,
)

pytestmark = pytest.mark.timeout(120)

__all__ = [
    "marks",
    "test_automatic_stage_retry",
    "test_custom_action_job_worker",
    "test_manual_approval",
    "test_retry_flow",
]


@pytest.fixture(scope="module")
def cluster_url(real_cluster_url: str) -> str:
    async def flush() -> None:
        c = await flushed_cluster(real_cluster_url)
        await c.aclose()

    asyncio.run(flush())
    return real_cluster_url


@pytest.fixture(scope="module")
def live(cluster_url: str) -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        redis_url=cluster_url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        worker=_worker_config("cluster-live"),
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        yield srv


@pytest.fixture
def cp(live: Stageline) -> Any:
    return client(live.url)


def test_connect_detects_the_cluster(cluster_url: str) -> None:
    async def check() -> None:
        r = await connect(cluster_url)
        try:
            assert isinstance(r, RedisCluster) and is_cluster(r)
            # a key of every partition is reachable through the one node named
            keys = Keys(partitions=PARTITIONS)
            for p in range(PARTITIONS):
                await r.set(keys.tag(p) + "probe", "1")
            slots = {RedisCluster.keyslot(r, keys.tag(p) + "probe") for p in range(PARTITIONS)}
            assert len(slots) == PARTITIONS
        finally:
            await r.aclose()

    asyncio.run(check())


def test_audit_verify_on_the_cluster(
    cp: Any, cluster_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [unique("audit") for _ in range(3)]
    for name in names:
        cp.create_pipeline(pipeline=pipeline(name, stage("Build", commands("b", "true"))))
        eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]
        wait_status(cp, name, eid, "Succeeded")

    async def events() -> list[int]:
        r = await connect(cluster_url)
        try:
            store = EventStore(r, Keys(partitions=PARTITIONS))
            return [len(await store.read(n)) for n in names]
        finally:
            await r.aclose()

    assert all(n > 3 for n in asyncio.run(events()))
    capsys.readouterr()
    rc = cli_main(
        ["audit", "verify", "--redis-url", cluster_url, "--partitions", str(PARTITIONS)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OK" in out
