"""Action logs: stored per action execution, capped, read back through boto3's ``logs``
client (CloudWatch Logs subset) and ``stageline logs``, followed while the action runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from redis.asyncio import Redis

from app.api.server import ServeConfig
from app.cli import main as cli_main
from app.logs import ActionLogWriter, LogKeys, LogReader, log_stream_arn
from app.store.keys import Keys
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline, wait_for
from tests.conftest import no_redis
from tests.redis_server import RedisServer, redis_binary
from workers.config import WorkerConfig
from workers.runners.commands_action import ActionSettings

pytestmark = pytest.mark.timeout(180)

PARTITIONS = 4
ROLE = "arn:aws:iam::123456789012:role/stageline"
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
STAGELINE = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "stageline")


# --- the writer and reader on their own (fakeredis and a real server) ----------------------


def _writer(redis: Redis, **kw: Any) -> ActionLogWriter:
    return ActionLogWriter(
        redis,
        Keys(partitions=PARTITIONS),
        pipeline="p",
        execution_id="e1",
        action_execution_id="a1",
        stage="Build",
        action="make",
        **kw,
    )


async def _all(redis: Redis) -> list[Any]:
    reader = LogReader(redis, Keys(partitions=PARTITIONS))
    return await reader.forward("p", "e1/a1", 1, 1_000_000)


async def test_lines_are_stored_whole_with_times_and_a_closing_line(redis: Redis) -> None:
    w = _writer(redis)
    await w.open()
    for chunk in (b"one\ntw", b"o\n", b"\n", b"three", b"\nfour-without-newline"):
        w.write(chunk)
    await w.flush()
    assert [e.message for e in await _all(redis)] == ["one", "two", "", "three"]
    await w.close("action succeeded")
    events = await _all(redis)
    assert [e.message for e in events] == [
        "one",
        "two",
        "",
        "three",
        "four-without-newline",
        "[stageline] action succeeded",
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.last for e in events] == [False] * 5 + [True]
    now = time.time() * 1000
    assert all(now - 60_000 < e.timestamp <= now + 1 for e in events)
    key = LogKeys(Keys(partitions=PARTITIONS)).stream("p", "a1")
    keys = Keys(partitions=PARTITIONS)
    assert key.startswith(f"sl:{keys.tag(keys.partition('p'))}:")  # the pipeline's slot
    assert 0 < await redis.ttl(key) <= 30 * 24 * 3600


async def test_cap_drops_the_oldest_lines_and_readers_see_a_marker(redis: Redis) -> None:
    w = _writer(redis, max_lines=100)
    await w.open()
    w.write(b"".join(b"line %d\n" % i for i in range(1, 1001)))
    await w.close("done")
    key = LogKeys(Keys(partitions=PARTITIONS)).stream("p", "a1")
    assert await redis.xlen(key) == 100
    events = await _all(redis)
    assert events[0].seq == 902 and events[0].message == "line 902"
    assert events[-1].message == "[stageline] done"
    # paging through it from the start shows how many were dropped
    from app.api.logs_handlers import build_logs_handlers

    h = build_logs_handlers(redis, Keys(partitions=PARTITIONS))
    get = h["Logs_20140328.GetLogEvents"]
    group = "/aws/codepipeline/p"
    page = await get({"logGroupName": group, "logStreamName": "e1/a1", "startFromHead": True}, None)
    assert page["events"][0]["message"].startswith("[stageline] 901 earlier lines dropped")
    assert page["events"][1]["message"] == "line 902"
    assert len(page["events"]) == 101


async def test_long_lines_are_split_and_bursts_stay_bounded(redis: Redis) -> None:
    w = _writer(redis, max_lines=50, line_bytes=100)
    await w.open()
    w.write(b"x" * 250 + b"\n" + "é".encode() * 60 + b"\n")
    w.write(b"y" * 1000)  # no newline yet: an unfinished line is cut too
    assert len(w.partial) <= 100
    for _ in range(100):  # far more than the cap before any flush
        w.write(b"z\n" * 1000)
        assert len(w.pending) <= 50
    await w.close("end")
    events = await _all(redis)
    assert len(events) == 50 and events[-1].message == "[stageline] end"
    w2 = ActionLogWriter(
        redis, Keys(partitions=PARTITIONS), pipeline="p", execution_id="e1",
        action_execution_id="a2", stage="B", action="b", line_bytes=100,
    )  # fmt: skip
    await w2.open()
    w2.write(b"x" * 250 + b"\n" + "é".encode() * 60 + b"\n")
    await w2.close("end")
    reader = LogReader(redis, Keys(partitions=PARTITIONS))
    got = [e.message for e in await reader.forward("p", "e1/a2", 1, 100)]
    assert got[:3] == ["x" * 100, "x" * 100, "x" * 50]
    assert "".join(got[3:5]) == "é" * 60 and "\ufffd" not in "".join(got)


def test_log_keys_live_in_the_pipelines_cluster_slot() -> None:
    from redis.crc import key_slot

    keys = Keys(partitions=PARTITIONS)
    lk = LogKeys(keys)
    for name in ("demo", "another.pipeline", "x@y"):
        slots = {key_slot(k.encode()) for k in keys.pipeline_keys(name)}
        slots |= {key_slot(k.encode()) for k in (lk.stream(name, "a1"), lk.index(name))}
        slots.add(key_slot(lk.meta(name).encode()))
        assert len(slots) == 1, name


def test_log_stream_arn() -> None:
    assert log_stream_arn("eu-west-1", "111122223333", "demo", "e-1", "a-1") == (
        "arn:aws:logs:eu-west-1:111122223333:log-group:/aws/codepipeline/demo:log-stream:e-1/a-1"
    )


# --- through the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if redis_binary() is None:
        no_redis("the log tests need the redis-server binary")
    server = RedisServer(tmp_path_factory.mktemp("logs-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live(redis_server: RedisServer) -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        redis_url=redis_server.url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        worker=WorkerConfig(
            name="logs", block_ms=50, reap_every_s=0.5, actions=ActionSettings(log_max_lines=20_000)
        ),
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        yield srv


def logs_client(url: str) -> Any:
    return boto3.client(
        "logs",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


def _pipeline(name: str, *actions: tuple[str, list[str]]) -> dict[str, Any]:
    return {
        "name": name,
        "roleArn": ROLE,
        "stages": [
            {
                "name": "Build",
                "actions": [
                    {"name": n, "actionTypeId": COMMANDS, "commands": cmds} for n, cmds in actions
                ],
            }
        ],
    }


def _run(cp: Any, name: str, *actions: tuple[str, list[str]]) -> str:
    cp.create_pipeline(pipeline=_pipeline(name, *actions))
    return str(cp.start_pipeline_execution(name=name)["pipelineExecutionId"])


def _status(cp: Any, name: str, eid: str) -> str:
    return str(
        cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)[
            "pipelineExecution"
        ]["status"]
    )


def _action(cp: Any, name: str, eid: str, action: str) -> dict[str, Any]:
    items = cp.list_action_executions(pipelineName=name, filter={"pipelineExecutionId": eid})
    (item,) = [i for i in items["actionExecutionDetails"] if i["actionName"] == action]
    return dict(item)


def _output_lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events if not e["message"].startswith("[stageline]")]


EXPECTED = [f"{kind} {i}" for i in range(1, 5001) for kind in ("out", "err")]
CHATTY = ['for i in $(seq 1 5000); do echo "out $i"; echo "err $i" >&2; done']


def test_ten_thousand_lines_read_back_through_boto3_and_the_cli(
    live: Stageline, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, logs = client(live.url), logs_client(live.url)
    name = f"logs-{uuid.uuid4().hex[:8]}"
    eid = _run(cp, name, ("chatty", CHATTY))
    wait_for(lambda: _status(cp, name, eid) == "Succeeded", timeout=60, what="execution")
    aeid = _action(cp, name, eid, "chatty")["actionExecutionId"]
    group, stream = f"/aws/codepipeline/{name}", f"{eid}/{aeid}"

    groups = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert [g["logGroupName"] for g in groups] == [group]
    streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
    assert [s["logStreamName"] for s in streams] == [stream]
    assert streams[0]["arn"] == log_stream_arn("us-east-1", "123456789012", name, eid, aeid)
    assert streams[0]["firstEventTimestamp"] <= streams[0]["lastEventTimestamp"]

    # forward, 999 a page, until the token comes back unchanged (what AWS clients do)
    events: list[dict[str, Any]] = []
    args: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "limit": 999}
    page = logs.get_log_events(startFromHead=True, **args)
    pages = 1
    while page["events"]:
        events += page["events"]
        token = page["nextForwardToken"]
        page = logs.get_log_events(nextToken=token, **args)
        pages += 1
        assert len(page["events"]) <= 999
    assert page["nextForwardToken"] == token
    assert pages >= 11
    assert _output_lines(events) == EXPECTED
    assert events[0]["message"] == "[stageline] Running command 1: " + CHATTY[0]
    assert events[-1]["message"] == "[stageline] action succeeded: 1 command succeeded"
    times = [e["timestamp"] for e in events]
    assert times == sorted(times)

    # backward from the newest, 700 a page
    back: list[dict[str, Any]] = []
    page = logs.get_log_events(logGroupName=group, logStreamName=stream, limit=700)
    while page["events"]:
        back = page["events"] + back
        page = logs.get_log_events(
            logGroupName=group, logStreamName=stream, limit=700,
            nextToken=page["nextBackwardToken"],
        )  # fmt: skip
    assert back == events

    # FilterLogEvents (with botocore's own paginator) and its patterns
    paginator = logs.get_paginator("filter_log_events")
    found = [
        e for p in paginator.paginate(logGroupName=group, filterPattern="err -Running", limit=800)
        for e in p["events"]
    ]  # fmt: skip
    assert [e["message"] for e in found] == [f"err {i}" for i in range(1, 5001)]
    assert {e["logStreamName"] for e in found} == {stream}
    one = logs.filter_log_events(logGroupName=group, filterPattern='"out 4999"')["events"]
    assert [e["message"] for e in one] == ["out 4999"]
    either = logs.filter_log_events(
        logGroupName=group, filterPattern='?"err 4999" ?"out 4998" -out'
    )
    assert [e["message"] for e in either["events"]] == ["err 4999"]

    with pytest.raises(logs.exceptions.ResourceNotFoundException):
        logs.get_log_events(logGroupName=group, logStreamName=f"{eid}/nope")
    with pytest.raises(logs.exceptions.ResourceNotFoundException):
        logs.describe_log_streams(logGroupName="/aws/codepipeline/no-such-pipeline")
    with pytest.raises(logs.exceptions.InvalidParameterException):
        logs.get_log_events(logGroupName=group, logStreamName=stream, nextToken="garbage")
    # the logs API is behind the same authentication
    bad = boto3.client(
        "logs", endpoint_url=live.url, region_name="us-east-1",
        aws_access_key_id=AKID, aws_secret_access_key="wrong",
    )  # fmt: skip
    with pytest.raises(bad.exceptions.ClientError):
        bad.describe_log_groups()

    # aws-cli, unchanged, reads the same stream (its own paging: first page from the head)
    if shutil.which("aws") is not None:
        env = {
            **os.environ, "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1",
        }  # fmt: skip
        done = subprocess.run(
            ["aws", "logs", "get-log-events", "--endpoint-url", live.url, "--start-from-head",
             "--log-group-name", group, "--log-stream-name", stream, "--limit", "5"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        assert [e["message"] for e in got["events"]][1:3] == ["out 1", "err 1"]
        assert got["nextForwardToken"].startswith("f/")

    # the CLI prints the same lines
    capsys.readouterr()
    argv = ["logs", name, "--redis-url", redis_server.url, "--partitions", str(PARTITIONS)]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(" [Build/chatty] " in line for line in lines)
    printed = [line.split(" [Build/chatty] ", 1)[1] for line in lines]
    assert [m for m in printed if not m.startswith("[stageline]")] == EXPECTED
    assert cli_main([*argv, "--execution", eid, "--action", "chatty"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(lines)
    assert cli_main([*argv, "--action", "nope"]) == 3  # not found (docs/cli.md)
    assert "no action logs of action nope" in capsys.readouterr().err


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the action user can see (pytest's tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="stageline-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_follow_shows_lines_while_the_action_runs(
    live: Stageline, redis_server: RedisServer, shared_dir: Path
) -> None:
    cp = client(live.url)
    name = f"follow-{uuid.uuid4().hex[:8]}"
    gate = shared_dir / "gate"  # the action waits for the test's go
    eid = _run(
        cp, name,
        ("slow", ["echo first-line", f"while [ ! -e {gate} ]; do sleep 0.1; done", "echo last"]),
    )  # fmt: skip
    env = {"PATH": os.environ.get("PATH", ""), "STAGELINE_REDIS_URL": redis_server.url}
    proc = subprocess.Popen(
        [STAGELINE, "logs", name, "--partitions", str(PARTITIONS), "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    seen: list[str] = []
    first = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if line.rstrip().endswith("] first-line"):
                first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(30), f"follow printed nothing in time: {seen}"
        # the line arrived while the action was still running (it waits for the gate)
        assert _action(cp, name, eid, "slow")["status"] == "InProgress"
        assert proc.poll() is None
        gate.touch()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    messages = [s.split("] ", 1)[1] for s in seen]
    assert [m for m in messages if not m.startswith("[stageline]")] == ["first-line", "last"]
    assert messages[-1] == "[stageline] action succeeded: 3 commands succeeded"
    assert _status(cp, name, eid) == "Succeeded"


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_100_mb_of_output_keeps_memory_bounded_and_the_log_at_its_cap(
    live: Stageline, redis_server: RedisServer
) -> None:
    cp = client(live.url)
    name = f"flood-{uuid.uuid4().hex[:8]}"
    # 1,000,000 lines of 100 bytes = 100 MB, as fast as the shell can write them
    flood = "yes 012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678 | head -n 1000000"  # noqa: E501
    before = _rss_kb()
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_kb())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        eid = _run(cp, name, ("flood", [flood, "echo the-end"]))
        wait_for(lambda: _status(cp, name, eid) == "Succeeded", timeout=150, what="flood")
    finally:
        stop.set()
        sampler.join(5)
    aeid = _action(cp, name, eid, "flood")["actionExecutionId"]
    growth_mb = (peak - before) / 1024
    print(f"server process RSS: {before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB")
    assert growth_mb < 60, f"RSS grew by {growth_mb:.0f} MB for 100 MB of output"

    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_server.url)
    try:
        key = LogKeys(Keys(partitions=PARTITIONS)).stream(name, aeid)
        assert r.xlen(key) == 20_000
        (first_id, _), = r.xrange(key, count=1)
        (_, last), = r.xrevrange(key, count=1)
    finally:
        r.close()
    # line 1 is the "Running command 1" note; 1,000,000 output lines follow
    assert int(first_id.split(b"-")[0]) > 980_000
    assert last[b"m"] == b"[stageline] action succeeded: 2 commands succeeded"
    logs = logs_client(live.url)
    head = logs.get_log_events(
        logGroupName=f"/aws/codepipeline/{name}", logStreamName=f"{eid}/{aeid}",
        startFromHead=True, limit=3,
    )["events"]  # fmt: skip
    assert "earlier lines dropped" in head[0]["message"]
    assert head[1]["message"] == "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678"  # noqa: E501
