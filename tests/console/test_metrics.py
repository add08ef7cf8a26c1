"""``GET /metrics`` parses with prometheus_client's own parser, and its counters move as a
pipeline runs (a failing action, a retry of it, an approval); ``GET /status``; the access
log; ``stageline worker --metrics-port``."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.server import ServeConfig
from tests.api_helpers import Stageline, client, run_stageline, wait_for
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig

pytestmark = pytest.mark.timeout(120)

COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
MANUAL = {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"}
PARTITIONS = 16  # the embedded Redis is one per test process: the tests' common layout


@pytest.fixture
def server() -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        partitions=PARTITIONS,
        worker=WorkerConfig(name="metrics-test", block_ms=None, actions=AS_TEST_USER),
        access_log="json",
    )
    with run_stageline(cfg) as s:
        yield s


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_as_a_pipeline_runs(
    server: Stageline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stageline.access")
    before, types = scrape(server.url)
    # every family the docs list is there from the first scrape, with its type
    for name, kind in {
        "stageline_api_requests": "counter",
        "stageline_api_request_duration_seconds": "histogram",
        "stageline_actions_started": "counter",
        "stageline_actions_succeeded": "counter",
        "stageline_actions_failed": "counter",
        "stageline_actions_lost": "counter",
        "stageline_lease_expiries": "counter",
        "stageline_stage_retries": "counter",
        "stageline_stage_retries_rejected": "counter",
        "stageline_events": "counter",
        "stageline_consumer_group_lag": "gauge",
        "stageline_consumer_group_pending": "gauge",
        "stageline_dead_letters": "gauge",
        "stageline_workers_alive": "gauge",
        "stageline_redis_round_trip_seconds": "histogram",
        "stageline_scrape_errors": "counter",
    }.items():
        assert types.get(name) == kind, name
    for p in range(PARTITIONS):
        for group in ("orchestrators", "runners"):
            key = ("stageline_consumer_group_lag", (("group", group), ("partition", str(p))))
            assert key in before
        assert ("stageline_dead_letters", (("partition", str(p)),)) in before

    # (other tests' servers in this process share the embedded Redis: at least this one,
    # once its worker made its first read)
    def worker_seen() -> Samples | None:
        s, _ = scrape(server.url)
        return s if value(s, "stageline_workers_alive", group="runners") >= 1 else None

    before = wait_for(worker_seen, timeout=20, what="the worker's consumers")

    cp = client(server.url)
    cp.create_pipeline(
        pipeline={
            "name": "metered",
            "roleArn": "arn:aws:iam::123456789012:role/m",
            "stages": [
                {
                    "name": "Build",
                    "actions": [
                        {
                            "name": "check",
                            "actionTypeId": COMMANDS,
                            "commands": [f"test -f {tmp_path}/ok"],
                        }
                    ],
                },
                {"name": "Gate", "actions": [{"name": "ok", "actionTypeId": MANUAL}]},
            ],
        }
    )
    eid = cp.start_pipeline_execution(name="metered")["pipelineExecutionId"]

    def failed() -> Samples | None:
        s, _ = scrape(server.url)
        return s if value(s, "stageline_actions_failed_total", kind="commands") >= 1 else None

    mid = wait_for(failed, timeout=20, what="a failed commands action counted")
    assert value(mid, "stageline_actions_started_total", kind="commands") == 1
    (tmp_path / "ok").touch()
    cp.retry_stage_execution(
        pipelineName="metered",
        stageName="Build",
        pipelineExecutionId=eid,
        retryMode="FAILED_ACTIONS",
    )

    def approval_open() -> Samples | None:
        s, _ = scrape(server.url)
        return s if value(s, "stageline_actions_started_total", kind="approval") >= 1 else None

    after = wait_for(approval_open, timeout=20, what="the approval scheduled")
    assert value(after, "stageline_actions_started_total", kind="commands") == 2
    assert value(after, "stageline_actions_succeeded_total", kind="commands") == 1
    assert value(after, "stageline_actions_failed_total", kind="commands") == 1
    assert value(after, "stageline_actions_lost_total", kind="commands") == 0
    manual = {"mode": "FAILED_ACTIONS", "trigger": "ManualStageRetry"}
    assert value(after, "stageline_stage_retries_total", **manual) == 1
    assert value(after, "stageline_events_total", type="StageRetryRequested") == 1
    ok = {"operation": "RetryStageExecution", "status": "200"}
    assert value(after, "stageline_api_requests_total", **ok) == 1
    count = value(
        after, "stageline_api_request_duration_seconds_count", operation="RetryStageExecution"
    )
    assert count == 1
    assert value(after, "stageline_redis_round_trip_seconds_count") > value(
        before, "stageline_redis_round_trip_seconds_count"
    )
    # a refused call is counted under its status
    with pytest.raises(cp.exceptions.StageNotRetryableException):
        cp.retry_stage_execution(
            pipelineName="metered",
            stageName="Build",
            pipelineExecutionId=eid,
            retryMode="FAILED_ACTIONS",
        )
    last, _ = scrape(server.url)
    refused = {"operation": "RetryStageExecution", "status": "400"}
    assert value(last, "stageline_api_requests_total", **refused) == 1

    # /status: the same facts as JSON (what `stageline status` prints)
    with urllib.request.urlopen(server.url + "/status", timeout=10) as resp:
        status = json.load(resp)
    assert status["partitions"] == PARTITIONS and status["workersAlive"] >= 1
    mine = [w for w in status["workers"] if w["name"] == "metrics-test"]
    assert {w["group"] for w in mine if w["alive"]} == {"orchestrators", "runners"}
    assert status["totals"]["deadLetters"] == 0

    # the access log: one JSON line per request
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "stageline.access"]
    retries = [x for x in lines if x.get("operation") == "RetryStageExecution"]
    assert [x["status"] for x in retries] == [200, 400]
    assert all(x["requestId"] and x["ms"] >= 0 for x in retries)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_worker_metrics_port(real_redis_url: str) -> None:
    import redis as redis_sync

    with redis_sync.Redis.from_url(real_redis_url) as r:
        r.flushdb()  # a store of its own, as the other real-Redis tests have
    port = free_port()
    env = {**os.environ, "STAGELINE_REDIS_URL": real_redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def scraped() -> Any:
            try:
                return scrape(f"http://127.0.0.1:{port}")
            except OSError:
                return None

        samples, types = wait_for(scraped, timeout=20, what="the worker's /metrics")
        assert types["stageline_consumer_group_lag"] == "gauge"
        assert ("stageline_dead_letters", (("partition", "0"),)) in samples
        assert types["stageline_redis_round_trip_seconds"] == "histogram"
        assert "stageline_actions_started" not in types  # counted once, by the API process
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert json.load(resp) == {"status": "ok"}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out


async def test_status_says_whether_liveness_is_exact(real_redis: Any) -> None:
    """Before Redis 7.2 an idle consumer's idle time does not restart on empty reads."""
    from app.status import collect_status
    from app.store.keys import Keys

    info = await real_redis.info("server")
    version = tuple(int(x) for x in str(info["redis_version"]).split(".")[:2])
    doc = await collect_status(real_redis, Keys(partitions=2))
    assert doc["redisVersion"] == info["redis_version"]
    assert doc["livenessExact"] is (version >= (7, 2))
    assert doc["totals"] == {"lag": 0, "pending": 0, "deadLetters": 0}
