"""An action searches everything it can see for the deployment's secrets and finds none.

A real ``stageline serve`` (its own process, as root) gets its secrets the ways an operator
would pass them — the Redis URL with its password in a file, access keys in a file and in
``STAGELINE_ACCESS_KEYS``, more secrets in its environment, and (to prove the process title
is hidden) one access key on its command line. Redis is a private, password-protected
``redis-server`` configured through a file. The action (run as the unprivileged action user)
then looks in its environment, every ``/proc/*/cmdline`` and ``/proc/*/environ``, the files
it can read, and tries to use Redis. A control run of the same search as root must find the
secrets, so the search itself is known to work.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.api_helpers import wait_for
from tests.conftest import IN_CI, no_redis
from tests.redis_server import free_port, port_open, redis_binary
from workers.runners.isolation import ACTION_PATH

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
STAGELINE = str(ROOT / ".venv" / "bin" / "stageline")
COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
ACTION_PYTHON = shutil.which("python3", path=ACTION_PATH)

# What the action runs. It gets the secrets' common prefix reversed (so its own script and
# command line never contain it) and looks for the prefix everywhere it can.
SEARCH = r'''
import os, socket, stat, sys

prefix = sys.argv[1][::-1].encode()
redis_port = int(sys.argv[2])
found = []

def look(where, data):
    if prefix in data:
        found.append(where)

for k, v in os.environ.items():
    look(f"env {k}", f"{k}={v}".encode())
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for part in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as f:
                look(f"/proc/{pid}/{part}", f.read())
        except OSError:
            pass
scanned = 0

def read_file(path):
    global scanned
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4_000_000:
            return  # no FIFOs, devices or symlinks
        with open(path, "rb") as f:
            look(path, f.read())
        scanned += 1
    except OSError:
        pass

for path in sys.argv[3:]:  # the secret files themselves
    read_file(path)
for top in ["/tmp", "/var/tmp", "/dev/shm", "/run", "/etc", "/root", "/home", "/srv"]:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            read_file(os.path.join(dirpath, name))

def redis(*args):
    s = socket.create_connection(("127.0.0.1", redis_port), timeout=5)
    try:
        cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        s.sendall(cmd)
        return s.recv(1000)
    finally:
        s.close()

for attempt in ([b"SET", b"owned", b"1"], [b"FLUSHALL"], [b"AUTH", b"guess"],
                [b"AUTH", b"default", b"guess"], [b"CONFIG", b"GET", b"requirepass"]):
    reply = redis(*attempt)
    print("redis", attempt[0].decode(), "->", reply[:60])
    if not reply.startswith(b"-"):
        found.append(f"redis {attempt[0].decode()} answered {reply[:40]!r}")

print("uid", os.getuid(), "scanned", scanned, "files")
for where in found:
    print("FOUND", where)
print("FOUND-NOTHING" if not found else "SECRETS-FOUND")
sys.exit(1 if found else 0)
'''


def _check_preconditions() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("it must run as root (actions then run as the unprivileged user)")
    if ACTION_PYTHON is None:
        problems.append(f"python3 is not on the actions' PATH ({ACTION_PATH})")
    if problems:
        if IN_CI:
            pytest.fail("; ".join(problems), pytrace=False)
        pytest.skip("; ".join(problems))
    if redis_binary() is None:
        no_redis("the isolation test needs the redis-server binary")


class Deployment:
    def __init__(self, private: Path) -> None:
        self.private = private  # mode 0700, root's
        self.prefix = "sl" + secrets.token_hex(6)
        self.redis_password = self.secret()
        self.key_env = ("AKIDENV", self.secret())
        self.key_file = ("AKIDFILE", self.secret())
        self.key_argv = ("AKIDARGV", self.secret())
        self.other = {"AWS_SECRET_ACCESS_KEY": self.secret(), "DB_PASSWORD": self.secret()}
        self.redis_port = free_port()
        self.api_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def secret(self) -> str:
        return self.prefix + secrets.token_hex(12)

    @property
    def secret_files(self) -> list[Path]:
        return [self.private / n for n in ("redis.conf", "redis-url", "access-keys")]

    def start(self) -> None:
        (self.private / "redis.conf").write_text(
            f"port {self.redis_port}\nbind 127.0.0.1\nrequirepass {self.redis_password}\n"
            f'save ""\nappendonly no\ndir {self.private}\n'
        )
        url = f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"
        (self.private / "redis-url").write_text(url + "\n")
        (self.private / "access-keys").write_text(":".join(self.key_file) + "\n")
        for f in self.secret_files:
            f.chmod(0o600)
        binary = redis_binary()
        assert binary is not None
        self.procs.append(
            subprocess.Popen(
                [binary, str(self.private / "redis.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: port_open("127.0.0.1", self.redis_port), what="redis-server")
        # another root process of the host with a secret in its environment (a database...)
        self.procs.append(
            subprocess.Popen(["sleep", "600"], env={"DB_ROOT_PASSWORD": self.secret()})
        )
        env = {
            "PATH": os.environ.get("PATH", ACTION_PATH),
            "HOME": str(self.private),
            "STAGELINE_ACCESS_KEYS": ":".join(self.key_env),
            **self.other,
        }
        self.log = open(self.private / "serve.log", "wb")  # noqa: SIM115
        self.procs.append(
            subprocess.Popen(
                [
                    STAGELINE, "serve", "--port", str(self.api_port), "--partitions", "4",
                    "--redis-url-file", str(self.private / "redis-url"),
                    "--access-keys-file", str(self.private / "access-keys"),
                    "--access-key", ":".join(self.key_argv),
                ],
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_for(lambda: port_open("127.0.0.1", self.api_port), timeout=30, what="serve")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.log.close()

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{self.api_port}",
            region_name="us-east-1",
            aws_access_key_id=self.key_env[0],
            aws_secret_access_key=self.key_env[1],
        )


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    _check_preconditions()
    private = tmp_path / "deployment"
    private.mkdir(mode=0o700)
    d = Deployment(private)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _search_args(d: Deployment) -> list[str]:
    return [d.prefix[::-1], str(d.redis_port), *map(str, d.secret_files)]


def test_an_action_finds_no_secret_and_cannot_write_redis(deployment: Deployment) -> None:
    d = deployment
    # control: the same search, run with the worker's rights, does find them
    script = d.private / "search.py"
    script.write_text(SEARCH)
    control = subprocess.run(
        [sys.executable, str(script), *_search_args(d)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    control_found = [line for line in control.stdout.splitlines() if line.startswith("FOUND ")]
    assert control.returncode == 1, control.stdout + control.stderr
    sleeper = d.procs[1].pid
    assert f"FOUND /proc/{sleeper}/environ" in control_found, control_found
    assert any(line.endswith("/redis-url") for line in control_found), control_found
    serve_pid = d.procs[2].pid
    cmdline = Path(f"/proc/{serve_pid}/cmdline").read_bytes()
    assert d.prefix.encode() not in cmdline, "the access key on the command line is visible"
    assert cmdline.startswith(b"stageline serve"), cmdline

    cp = d.client("codepipeline")
    name = f"iso-{uuid.uuid4().hex[:8]}"
    quoted = " ".join(_search_args(d))
    encoded = base64.b64encode(SEARCH.encode()).decode()
    chunks = [encoded[i : i + 900] for i in range(0, len(encoded), 900)]  # 1000 a command
    commands = [
        "id",
        'test "$(id -u)" != 0',
        *(f"printf %s {c} >> search.b64" for c in chunks),
        "base64 -d search.b64 > search.py",
        f"{ACTION_PYTHON} search.py {quoted}",
    ]
    cp.create_pipeline(
        pipeline={
            "name": name,
            "roleArn": "arn:aws:iam::123456789012:role/x",
            "stages": [
                {
                    "name": "Probe",
                    "actions": [{"name": "search", "actionTypeId": COMMANDS, "commands": commands}],
                }
            ],
        }
    )
    eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]

    def finished() -> dict[str, Any] | None:
        items = cp.list_action_executions(pipelineName=name)["actionExecutionDetails"]
        done = [i for i in items if i["status"] != "InProgress"]
        return done[0] if done else None

    item = wait_for(finished, timeout=120, what="the search action")
    logs = d.client("logs")
    stream = f"{eid}/{item['actionExecutionId']}"
    events = logs.get_log_events(
        logGroupName=f"/aws/codepipeline/{name}", logStreamName=stream, startFromHead=True
    )["events"]
    output = "\n".join(e["message"] for e in events)
    assert item["status"] == "Succeeded", json.dumps(item, default=str) + "\n" + output
    assert "FOUND-NOTHING" in output and "FOUND " not in output
    assert "uid=0" not in output
    # what it saw: a real search of processes and files, and Redis refusing it
    assert "redis SET -> b'-NOAUTH" in output, output
    scanned = int(output.split(" scanned ", 1)[1].split()[0])
    assert scanned > 10
    # and Redis is untouched
    probe = socket.create_connection(("127.0.0.1", d.redis_port), timeout=5)
    try:
        pw = d.redis_password.encode()
        probe.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
        assert probe.recv(100).startswith(b"+OK")
        probe.sendall(b"*2\r\n$6\r\nEXISTS\r\n$5\r\nowned\r\n")
        time.sleep(0.1)
        assert probe.recv(100) == b":0\r\n"
    finally:
        probe.close()


def test_workspace_home_and_tmp_are_private(deployment: Deployment) -> None:
    d = deployment
    cp = d.client("codepipeline")
    name = f"iso-{uuid.uuid4().hex[:8]}"
    shared = Path(tempfile.mkdtemp(prefix="stageline-test-"))
    shared.chmod(0o777)
    try:
        report = shared / "report"
        commands = [
            f'stat -c "%U %a" . "$HOME" "$TMPDIR" .. > {report}',
            f'echo "$HOME|$TMPDIR|$(pwd)|$USER" >> {report}',
        ]
        cp.create_pipeline(
            pipeline={
                "name": name,
                "roleArn": "arn:aws:iam::123456789012:role/x",
                "stages": [
                    {
                        "name": "S",
                        "actions": [{"name": "a", "actionTypeId": COMMANDS, "commands": commands}],
                    }
                ],
            }
        )
        eid = cp.start_pipeline_execution(name=name)["pipelineExecutionId"]

        def status() -> str | None:
            x = cp.get_pipeline_execution(pipelineName=name, pipelineExecutionId=eid)
            s = str(x["pipelineExecution"]["status"])
            return s if s != "InProgress" else None

        assert wait_for(status, timeout=60, what="execution") == "Succeeded"
        lines = report.read_text().splitlines()
        owners = [line.split() for line in lines[:4]]
        assert all(o == ["nobody", "700"] for o in owners), lines
        home, tmp, cwd, user = lines[4].split("|")
        assert user == "nobody"
        assert Path(home).parent == Path(tmp).parent == Path(cwd).parent
        assert not Path(home).parent.exists()  # removed after the action
    finally:
        shutil.rmtree(shared, ignore_errors=True)


_READ_ENVIRON = """
import sys
try:
    with open(f"/proc/{sys.argv[1]}/environ", "rb") as f:
        print("READ" if sys.argv[2].encode() in f.read() else "NOT-THERE")
except OSError as err:
    print("DENIED", type(err).__name__)
"""

_HOLDER = """
import sys, time, types
module = sys.modules["isolation"] = types.ModuleType("isolation")
exec(compile(sys.stdin.readline() and sys.stdin.read(), "isolation.py", "exec"), module.__dict__)
if sys.argv[1] == "harden":
    assert module.harden_process()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("hardened", [False, True])
def test_a_non_root_worker_hides_its_environment_from_its_actions(hardened: bool) -> None:
    """A worker that is not root runs actions as its own user; non-dumpable, its
    /proc/<pid>/environ is still unreadable to them (and readable when not hardened, so
    the check can fail)."""
    _check_preconditions()
    secret = "sl" + secrets.token_hex(12)

    def as_nobody(argv: list[str], **kw: Any) -> Any:
        return subprocess.Popen(
            argv, user="nobody", group="nogroup" if _has_group("nogroup") else "nobody",
            extra_groups=[], cwd="/", **kw,
        )  # fmt: skip

    assert ACTION_PYTHON is not None
    # the module's own code (the venv and the checkout may not be readable by nobody)
    import workers.runners.isolation as isolation

    holder = as_nobody(
        [ACTION_PYTHON, "-c", _HOLDER, "harden" if hardened else "plain"],
        env={"PATH": ACTION_PATH, "STAGELINE_SECRET": secret},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None
    holder.stdin.write("\n" + Path(isolation.__file__).read_text())
    holder.stdin.close()
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        reader = as_nobody(
            [ACTION_PYTHON, "-c", _READ_ENVIRON, str(holder.pid), secret],
            env={"PATH": ACTION_PATH}, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = reader.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait(10)
    if hardened:
        assert out.startswith("DENIED"), out
    else:
        assert out.strip() == "READ", out


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
