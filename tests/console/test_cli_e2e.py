"""The CLI against the README's "Run it" server: ``stageline serve`` (embedded Redis) as a real
subprocess, driven by ``stageline status``, ``watch --once`` and ``retry --wait`` as real
subprocesses over HTTP; and every user-facing CLI error path: one line on stderr, no
traceback, the exit code from the one table (docs/cli.md)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from app.cli import EXIT_CODES, build_parser, main
from tests.api_helpers import client, wait_for

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
MANUAL = {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"}


def stageline_cmd() -> list[str]:
    script = Path(sys.executable).with_name("stageline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """No AWS credentials, no $USER/$LOGNAME, no Redis URL: a newcomer's shell."""
    drop = {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "USER",
        "LOGNAME",
        "STAGELINE_REDIS_URL",
        "STAGELINE_ACCESS_KEYS",
        "STAGELINE_ENDPOINT_URL",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        AWS_CONFIG_FILE=str(tmp / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        NO_COLOR="1",
        COLUMNS="160",
    )
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*stageline_cmd(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(done: subprocess.CompletedProcess[str] | tuple[int, str], code: int) -> str:
    rc, err = (done.returncode, done.stderr) if not isinstance(done, tuple) else done
    assert rc == code, f"exit {rc} (wanted {code} = {EXIT_CODES[code]}): {err!r}"
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stageline: ") and not lines[0].startswith("stageline: stageline")
    assert "Traceback" not in err and "internal error" not in err
    return lines[0]


@dataclass
class Served:
    url: str
    port: int
    proc: subprocess.Popen[str]
    env: dict[str, str]
    log: Path


TEST_USER = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The README's "Run it" server (`stageline serve`, embedded Redis) on a free port."""
    port = free_port()
    env = clean_env(tmp_path)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            # actions as this user: their marker files live in this user's private tmp dir
            [*stageline_cmd(), "serve", "--port", str(port), "--action-user", TEST_USER],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_for(healthy, timeout=30, what="stageline serve")
    try:
        yield Served(url, port, proc, env, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def pipeline(name: str, marks: Path, check: str) -> dict[str, Any]:
    return {
        "name": name,
        "roleArn": "arn:aws:iam::123456789012:role/cli",
        "stages": [
            {
                "name": "Build",
                "actions": [
                    {"name": "compile", "actionTypeId": COMMANDS, "commands": ["echo compiling"]},
                    {"name": "check", "actionTypeId": COMMANDS, "commands": [check]},
                ],
            },
            {"name": "Approve", "actions": [{"name": "ship-it", "actionTypeId": MANUAL}]},
        ],
    }


def build_status(cp: Any, name: str) -> str | None:
    for s in cp.get_pipeline_state(name=name)["stageStates"]:
        if s["stageName"] == "Build":
            status: str | None = s.get("latestExecution", {}).get("status")
            return status
    return None


def test_cli_against_the_run_it_server(served: Served, tmp_path: Path) -> None:
    env, ep = served.env, ["--endpoint-url", served.url]
    cp = client(served.url, key="anyone", secret="anything")
    marks = tmp_path / "marks"
    marks.mkdir()
    cp.create_pipeline(pipeline=pipeline("demo", marks, f"test -f {marks}/ok"))
    eid = cp.start_pipeline_execution(name="demo")["pipelineExecutionId"]

    # status: workers alive, partitions, lag, pending, dead letters (global option after it)
    done = run_cli(["status", *ep, "-v"], env)
    assert done.returncode == 0, done.stderr
    assert "workers alive: 1" in done.stdout and "dead letters" in done.stdout
    done = run_cli(["status", "--json", *ep], env)
    doc = json.loads(done.stdout)
    assert doc["workersAlive"] == 1 and doc["partitions"] == 16
    assert doc["totals"]["deadLetters"] == 0

    wait_for(lambda: build_status(cp, "demo") == "Failed", timeout=30, what="Build failed")
    done = run_cli(["watch", "demo", "--once", *ep], env)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "Build" in line)
    assert "Failed" in row and "check" in row and eid[:8] in row

    # logs: the action logs through the API (the CloudWatch Logs subset), stage/action named
    done = run_cli(["logs", "demo", "--execution", eid, *ep], env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("[Build/compile]" in line and line.endswith("compiling") for line in lines)
    assert any("[Build/check]" in line for line in lines)
    only = run_cli(["logs", "demo", "--execution", eid, "--action", "check", *ep], env)
    assert only.returncode == 0 and "[Build/compile]" not in only.stdout, only.stderr
    unknown = "00000000-0000-4000-8000-000000000000"
    none = run_cli(["logs", "demo", "--execution", unknown, *ep], env)
    assert none.returncode == 3 and none.stderr.count("\n") == 1, none.stderr

    # retry --wait: waits for the stage to end; exit 0 when it succeeded
    (marks / "ok").touch()
    done = run_cli(["retry", "demo", "Build", eid, "--wait", *ep], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0]) == {"pipelineExecutionId": eid}
    assert done.stdout.splitlines()[-1] == "Build: Succeeded"
    assert build_status(cp, "demo") == "Succeeded"
    # auth is off: the actor is anonymous (never a claimed identity); the identity the CLI
    # claims (the OS user, even with $USER unset and no AWS credentials) is kept apart,
    # marked unverified
    me = pwd.getpwuid(os.getuid()).pw_name
    with urllib.request.urlopen(
        f"{served.url}/console/api/pipelines/demo/executions/{eid}/timeline", timeout=10
    ) as r:
        events = json.load(r)["events"]
    [requested] = [e for e in events if e["type"] == "StageRetryRequested"]
    assert requested["actor"] == "anonymous"
    assert requested["claimed"] == f"cli:{me}"

    # retry --wait on a stage that fails again: exit 1 (the documented "failed")
    cp.create_pipeline(pipeline=pipeline("doomed", marks, "false"))
    eid2 = cp.start_pipeline_execution(name="doomed")["pipelineExecutionId"]
    wait_for(lambda: build_status(cp, "doomed") == "Failed", timeout=30, what="doomed failed")
    done = run_cli(["retry", "doomed", "Build", eid2, "--wait", *ep], env)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[-1] == "Build: Failed"

    # refused by the service: one line, exit 3
    line = one_line_error(run_cli(["retry", "nope", "Build", eid, *ep], env), 3)
    assert "PipelineNotFoundException" in line
    line = one_line_error(run_cli(["retry", "demo", "Build", eid, *ep], env), 3)
    assert "StageNotRetryableException" in line

    # the port is taken: a second server fails cleanly before "startup complete"
    second = run_cli(["serve", "--port", str(served.port)], env)
    line = one_line_error((second.returncode, second.stderr + second.stdout), 4)
    assert f"127.0.0.1:{served.port}" in line

    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(30) == 0
    log = served.log.read_text()
    assert log.count("in-memory") == 1, log
    assert "Traceback" not in log
    assert '"POST / RetryStageExecution" 200' in log  # the access log, one line a request
    assert log.count("RetryStageExecution") == 4
    # what happened, as it happened (stageline.events)
    assert f"demo {eid[:8]} Build/check Failed CommandFailed" in log
    assert f"demo {eid[:8]} StageRetryStarted Build FAILED_ACTIONS" in log
    assert f"demo {eid[:8]} Build/check Succeeded" in log


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["serve", "--port", "abc"], 2, "expected a port number"),
        (["serve", "--partitions", "0"], 2, "must be at least 1"),
        (["serve", "--host", "0.0.0.0", "--port", "1"], 2, "refusing to listen on 0.0.0.0"),
        (["serve", "--access-key", "nocolon"], 2, "expected ACCESS_KEY_ID:SECRET"),
        (["worker"], 2, "worker needs --redis-url"),
        (["retry", "demo", "Build"], 2, "required: execution_id"),
        (["retry", "demo", "Build", "x", "--mode", "SOME"], 2, "invalid choice"),
        (["status", "--endpoint-url", "localhost:1"], 2, "expected http://HOST:PORT"),
        (["status", "--profile", "no-such-profile"], 2, "no-such-profile"),
        (["audit", "log", "--pipeline", "x", "--redis-url", "foo://x"], 2, "Redis URL must"),
        (["audit", "verify"], 2, "audit needs --redis-url"),
        (["nosuchcommand"], 2, "invalid choice"),
    ],
)
def test_cli_usage_errors(
    argv: list[str],
    code: int,
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for k, v in clean_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    for k in ("STAGELINE_REDIS_URL", "STAGELINE_ACCESS_KEYS", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    rc = main(argv)
    captured = capsys.readouterr()
    line = one_line_error((rc, captured.err), code)
    assert says in line


def test_cli_unreachable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    rc = main(["retry", "demo", "Build", "x", "--endpoint-url", f"http://127.0.0.1:{closed}"])
    assert "cannot reach the API" in one_line_error((rc, capsys.readouterr().err), 4)
    rc = main(["status", "--redis-url", f"redis://127.0.0.1:{closed}/0"])
    assert "cannot reach Redis" in one_line_error((rc, capsys.readouterr().err), 4)


def test_cli_same_situation_same_code(
    real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    r = redis_sync.Redis.from_url(real_redis_url)
    r.flushdb()
    try:
        url = ["--redis-url", real_redis_url]
        # not found: 3 from retry and from audit alike
        rc = main(["retry", "nope", "Build", "x", *url])
        assert "PipelineNotFoundException" in one_line_error((rc, capsys.readouterr().err), 3)
        rc = main(["audit", "log", "--pipeline", "nope", *url])
        assert "has no event log" in one_line_error((rc, capsys.readouterr().err), 3)
        # a configuration mistake (the data has 128 partitions, a new store's default):
        # usage, not "internal error"
        rc = main(["retry", "nope", "Build", "x", *url, "--partitions", "3"])
        assert "128 partitions" in one_line_error((rc, capsys.readouterr().err), 2)
    finally:
        r.flushdb()
        r.close()


def test_parser_global_options_version_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = build_parser()
    assert p.parse_args(["serve", "-v"]).verbose is True
    assert p.parse_args(["-v", "serve"]).verbose is True
    assert p.parse_args(["serve"]).verbose is False
    assert p.parse_args(["retry", "a", "b", "c", "--endpoint-url", "http://x:1"]).endpoint_url
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("stageline ")
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 8080)" in out and "(default: 127.0.0.1)" in out
    assert main(["retry", "--help"]) == 0
    assert "(default: FAILED_ACTIONS)" in capsys.readouterr().out
    # secrets from the environment never show up as defaults
    monkeypatch.setenv("STAGELINE_ACCESS_KEYS", "demo:topsecret")
    monkeypatch.setenv("STAGELINE_REDIS_URL", "redis://user:hunter2@redis:6379/0")
    for command in ("serve", "worker", "retry", "status", "watch"):
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "topsecret" not in out and "hunter2" not in out, command


def test_status_and_watch_with_auth_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With access keys, `status` signs GET /status (SigV4) and `watch` signs its calls.

    (The embedded Redis is one per test process: default partitions, like the other tests.)
    """
    from app.api.server import ServeConfig
    from tests.api_helpers import AKID, SECRET, run_stageline
    from workers.config import WorkerConfig

    for k, v in clean_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("STAGELINE_REDIS_URL", raising=False)
    cfg = ServeConfig(port=0, credentials={AKID: SECRET}, worker=WorkerConfig(block_ms=None))
    with run_stageline(cfg) as s:
        cp = client(s.url)
        cp.create_pipeline(pipeline=pipeline("signed", tmp_path, "true"))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        assert main(["status", "--json", "--endpoint-url", s.url]) == 0
        assert json.loads(capsys.readouterr().out)["workersAlive"] >= 1
        assert main(["watch", "signed", "--once", "--endpoint-url", s.url]) == 0
        assert "Build" in capsys.readouterr().out
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        rc = main(["status", "--endpoint-url", s.url])
        assert "AccessDeniedException" in one_line_error((rc, capsys.readouterr().err), 3)
        rc = main(["watch", "signed", "--once", "--endpoint-url", s.url])
        assert "InvalidSignatureException" in one_line_error((rc, capsys.readouterr().err), 3)
