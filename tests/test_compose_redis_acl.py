"""compose.yaml's Redis: only the `stageline` ACL user logs in, with a password from the
environment, and stageline works through it (issue 12).

The redis service's start script is taken from compose.yaml itself and run here against a
real ``redis-server`` (the image's entrypoint replaced by ``env``): the default user is off,
admin and dangerous commands are refused to the stageline user, the password is on no
command line and its ACL file is private, and serve + workers run a pipeline, the audit
verifies, all through that user.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from app.api.server import ServeConfig
from tests.api_helpers import AKID, SECRET, client, run_stageline, wait_for
from tests.conftest import no_redis
from tests.redis_server import free_port, port_open, redis_binary
from tests.test_api_e2e import _worker_config

pytestmark = [pytest.mark.redis_real, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr3t-for-the-acl-test"
ROLE = "arn:aws:iam::123456789012:role/acl"


def compose_redis() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    return services["redis"]


def start_script() -> tuple[list[str], str]:
    """(sh -ec, $0) and the script with compose's `$$` escapes undone."""
    command = compose_redis()["command"]
    assert command[:2] == ["sh", "-ec"], command
    return command, command[2].replace("$$", "$")


@pytest.fixture
def acl_redis(tmp_path: Path) -> Any:
    if redis_binary() is None:
        no_redis("redis-server is not installed")
    command, script = start_script()
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "STAGELINE_REDIS_PASSWORD": PASSWORD,
        "STAGELINE_ACL_DIR": str(tmp_path / "acl"),
        "REDIS_ENTRYPOINT": "env",  # the image's docker-entrypoint.sh: not here
    }
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
    proc = subprocess.Popen(
        ["sh", "-ec", script, command[3], *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None, "redis-server did not start with compose's ACL script"
        assert time.monotonic() < deadline, "redis-server did not open its port"
        time.sleep(0.02)
    try:
        yield port, proc, tmp_path / "acl" / "users.acl"
    finally:
        proc.kill()
        proc.wait(10)


def test_only_the_stageline_user_logs_in(acl_redis: Any) -> None:
    port, proc, acl = acl_redis
    anon = redis.Redis(port=port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anon.ping()  # the default user is off: NOAUTH
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port, username="stageline", password="wrong").ping()
    r = redis.Redis(port=port, username="stageline", password=PASSWORD)
    assert r.ping()
    for refused in (
        ("FLUSHALL",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "GET", "requirepass"),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN",),
        ("ACL", "SETUSER", "default", "on"),
        ("MONITOR",),
    ):
        with pytest.raises(redis.exceptions.ResponseError) as refusal:
            r.execute_command(*refused)
        # NOPERM from the ACL (DEBUG is off server-wide anyway: "not allowed")
        assert "permission" in str(refusal.value) or "not allowed" in str(refusal.value)
    assert r.info("server")["redis_version"]  # what stageline does use stays allowed
    # the password is on no command line, and the ACL file is private to its owner
    assert PASSWORD not in Path(f"/proc/{proc.pid}/cmdline").read_text(errors="replace")
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    assert stat.S_IMODE(acl.parent.stat().st_mode) == 0o700
    r.close()
    anon.close()


def test_stageline_runs_through_the_acl_user(acl_redis: Any, tmp_path: Path) -> None:
    port, _, _ = acl_redis
    url = f"redis://stageline:{PASSWORD}@127.0.0.1:{port}/0"
    cfg = ServeConfig(
        port=0,
        redis_url=url,
        credentials={AKID: SECRET},
        partitions=4,
        worker=_worker_config("acl"),
        log_level="warning",
    )
    with run_stageline(cfg) as srv:
        cp = client(srv.url)
        cp.create_pipeline(
            pipeline={
                "name": "acl",
                "roleArn": ROLE,
                "stages": [
                    {
                        "name": "Build",
                        "actions": [
                            {
                                "name": "b",
                                "actionTypeId": {
                                    "category": "Compute",
                                    "owner": "AWS",
                                    "provider": "Commands",
                                    "version": "1",
                                },
                                "commands": ["echo built"],
                            }
                        ],
                    }
                ],
            }
        )
        eid = cp.start_pipeline_execution(name="acl")["pipelineExecutionId"]

        def status() -> str | None:
            got = cp.get_pipeline_execution(pipelineName="acl", pipelineExecutionId=eid)
            s: str = got["pipelineExecution"]["status"]
            return s if s in ("Succeeded", "Failed") else None

        assert wait_for(status, timeout=60, what="the execution to end") == "Succeeded"
    stageline = shutil.which("stageline", path=str(REPO / ".venv" / "bin")) or "stageline"
    out = subprocess.run(
        [stageline, "audit", "verify"],
        env={**os.environ, "STAGELINE_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
