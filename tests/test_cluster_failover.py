"""kill -9 of a master under load, on a 3-master Redis Cluster with a replica each: with
``--min-replica-acks 1`` no write that the API acknowledged is lost (the promoted replica
has it), and every execution that was accepted finishes (or is retryable).

boto3 (standard retries) carries the callers through the failover: meanwhile the API
answers 503 ServiceUnavailableException.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError
from redis.crc import key_slot

from app.api.server import ServeConfig
from app.store.keys import Keys
from tests.api_helpers import AKID, SECRET, Stageline, run_stageline, wait_for
from tests.conftest import no_redis
from tests.redis_cluster import RedisClusterServer, cluster_binaries
from tests.test_api_e2e import PARTITIONS, _worker_config, commands, pipeline, stage

pytestmark = pytest.mark.timeout(300)

# an execution's ends; Superseded: it waited for a stage (SUPERSEDED mode, the default) and a
# newer one overtook it, which the load makes likely whenever a stage is slowed down (here
# by the failover); it has finished like the others (nothing of it is left running)
ENDED = ("Succeeded", "Failed", "Stopped", "Superseded")


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    if cluster_binaries() is None:
        no_redis("the failover test needs the redis-server and redis-cli binaries")
    cluster = RedisClusterServer(
        tmp_path_factory.mktemp("cluster-replicas"), replicas=1, node_timeout_ms=2000
    )
    cluster.start(timeout=60)
    try:
        yield cluster
    finally:
        cluster.stop()


def retrying_client(url: str) -> Any:
    cfg = botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": 12},
        connect_timeout=5,
        read_timeout=20,
    )
    return boto3.client(
        "codepipeline",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        config=cfg,
    )


class StartLoad:
    """A thread starting executions of ``names`` in turn until :meth:`stop`: the starts
    acknowledged (``accepted``: pipeline, execution id) and refused after boto3's retries
    (``refused``: not acknowledged, so nothing is owed for them)."""

    def __init__(self, url: str, names: list[str], pause_s: float) -> None:
        self.accepted: list[tuple[str, str]] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, names, pause_s), daemon=True)
        self._thread.start()

    def _run(self, url: str, names: list[str], pause_s: float) -> None:
        c = retrying_client(url)
        i = 0
        while not self._stop.is_set():
            name = names[i % len(names)]
            i += 1
            try:
                eid = c.start_pipeline_execution(name=name)["pipelineExecutionId"]
                self.accepted.append((name, eid))
            except ClientError as err:
                self.refused.append(str(err))
            time.sleep(pause_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def wait_ended(url: str, executions: list[tuple[str, str]], timeout: float) -> dict[str, str]:
    """Wait until each execution has ended (``ENDED``); execution id -> final status."""
    check = retrying_client(url)

    def status(name: str, eid: str) -> str:
        s: str = check.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)[
            "pipelineExecution"
        ]["status"]
        return s

    for name, eid in executions:
        wait_for(
            lambda n=name, e=eid: status(n, e) in ENDED,
            timeout=timeout,
            what=f"{name} {eid} to end",
        )
    return {e: status(n, e) for n, e in executions}


def _master_port_of(cluster: RedisClusterServer, key: str) -> int:
    import subprocess

    slot = key_slot(key.encode())
    out = subprocess.run(
        ["redis-cli", "-p", str(cluster.ports[0]), "cluster", "nodes"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if "master" not in parts[2] or "fail" in parts[2]:
            continue
        for r in parts[8:]:
            lo, _, hi = r.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return int(parts[1].split("@")[0].rsplit(":", 1)[1])
    raise AssertionError(f"no master for slot {slot}")


def test_kill9_master_under_load_loses_no_acknowledged_write(
    replicated: RedisClusterServer,
) -> None:
    cfg = ServeConfig(
        port=0,
        redis_url=replicated.url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        min_replica_acks=1,
        # short leases and takeovers: an action whose runner lost its connection to the
        # failed master is detected (WorkerLost) or taken over within seconds
        worker=replace(
            _worker_config("failover"), lease_ttl_s=4.0, claim_idle_ms=3000, claim_every_s=1.0
        ),
        log_level="error",
    )
    names = [f"fo-{i}" for i in range(8)]
    with run_stageline(cfg) as srv:
        srv_: Stageline = srv
        cp = retrying_client(srv_.url)
        for name in names:
            cp.create_pipeline(pipeline=pipeline(name, stage("Build", commands("b", "true"))))
        load = StartLoad(srv_.url, names, pause_s=0.02)
        accepted, errors = load.accepted, load.refused
        wait_for(lambda: len(accepted) >= 20, timeout=30, what="load running")
        victim = _master_port_of(replicated, Keys(partitions=PARTITIONS).log(names[0]))
        replicated.kill(victim)  # kill -9, mid-load
        before = len(accepted)
        wait_for(lambda: len(accepted) >= before + 20, timeout=60, what="load through failover")
        load.stop()
        # every acknowledged start is there, and its execution ends
        finals = set(wait_ended(srv_.url, accepted, timeout=90).values())
        assert finals <= {"Succeeded", "Failed", "Superseded"}, finals
        assert len(accepted) >= 40
        print(f"accepted {len(accepted)}, not acknowledged {len(errors)}, finals {finals}")
