"""Helpers for the worker integration and fault tests.

Declarations built from shell commands, fast worker settings, an in-process worker run in
the test's own task group (``running``), polling waits, side-effect run counters, and a
real-process worker (``WorkerProcess``: ``stageline worker`` under ``subprocess.Popen``).
"""

from __future__ import annotations

import os
import pwd
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import fakeredis
import msgspec
from redis.asyncio import Redis

from app.domain.model import (
    ActionDeclaration,
    ActionTypeId,
    ExecutionMode,
    FailureConditions,
    PipelineDeclaration,
    RetryConfiguration,
    StageDeclaration,
    StageRetryMode,
)
from app.domain.state import ActionExec, ExecutionState, PipelineState
from app.engine import Engine
from app.store.keys import Keys
from workers.config import WorkerConfig
from workers.runners.commands_action import ActionSettings
from workers.service import Worker

ROLE = "arn:aws:iam::123456789012:role/stageline"
PARTITIONS = 4
COMMANDS = ActionTypeId(category="Compute", owner="AWS", provider="Commands", version="1")
APPROVAL = ActionTypeId(category="Approval", owner="AWS", provider="Manual", version="1")
CUSTOM = ActionTypeId(category="Build", owner="Custom", provider="TestBuilder", version="1")

TEST_USER = pwd.getpwuid(os.geteuid()).pw_name
AS_TEST_USER = ActionSettings(user=TEST_USER)

ROOT = Path(__file__).resolve().parents[2]
STAGELINE = str(ROOT / ".venv" / "bin" / "stageline")

T = TypeVar("T")


# --- declarations ----------------------------------------------------------------------------


def cmd(name: str, commands: Sequence[str], run_order: int = 1) -> ActionDeclaration:
    return ActionDeclaration(
        name=name, actionTypeId=COMMANDS, runOrder=run_order, commands=list(commands)
    )


def counted(name: str, counter: Path, *extra: str, run_order: int = 1) -> ActionDeclaration:
    """A Commands action that appends one line to ``counter`` per run, then runs ``extra``."""
    return cmd(name, [f"echo {name} >> {shlex.quote(str(counter))}", *extra], run_order)


def approval(name: str, run_order: int = 1) -> ActionDeclaration:
    return ActionDeclaration(name=name, actionTypeId=APPROVAL, runOrder=run_order)


def custom(name: str, run_order: int = 1) -> ActionDeclaration:
    return ActionDeclaration(
        name=name, actionTypeId=CUSTOM, runOrder=run_order, configuration={"Target": name}
    )


def pipeline(
    name: str,
    stages: dict[str, Sequence[ActionDeclaration]],
    *,
    mode: ExecutionMode | None = None,
    auto_retry: dict[str, StageRetryMode] | None = None,
) -> PipelineDeclaration:
    auto_retry = auto_retry or {}
    out = []
    for sname, actions in stages.items():
        on_failure = None
        if sname in auto_retry:
            on_failure = FailureConditions(
                result="RETRY", retryConfiguration=RetryConfiguration(retryMode=auto_retry[sname])
            )
        out.append(StageDeclaration(name=sname, actions=list(actions), onFailure=on_failure))
    return PipelineDeclaration(name=name, roleArn=ROLE, stages=out, executionMode=mode)


# --- side-effect counters --------------------------------------------------------------------


def runs(counter: Path) -> list[str]:
    """Lines written by ``counted`` actions (one per run)."""
    try:
        return counter.read_text().split()
    except FileNotFoundError:
        return []


def count(counter: Path, name: str) -> int:
    return runs(counter).count(name)


# --- engine and worker -----------------------------------------------------------------------


def is_fake(redis: Redis) -> bool:
    return isinstance(redis, fakeredis.FakeAsyncRedis)


def make_engine(redis: Redis) -> Engine:
    return Engine(redis, Keys(partitions=PARTITIONS))


def fast_config(redis: Redis, name: str = "w1", **over: Any) -> WorkerConfig:
    """Short timings for tests; fakeredis polls (its blocking reads are not trusted)."""
    base: dict[str, Any] = {
        "name": name,
        "concurrency": 8,
        "lease_ttl_s": 3.0,  # renewed every second: survives a loaded CI box's stalls
        "block_ms": None if is_fake(redis) else 50,
        "poll_interval_s": 0.005,
        "claim_idle_ms": 300,
        "claim_every_s": 0.2,
        "max_deliveries": 3,
        "reap_every_s": 0.2,
        "snapshot_every_s": 0.5,
        "shutdown_grace_s": 5.0,
        # The tests' actions record their runs in files under the test's private tmp dir,
        # so they run as the test's own user (isolation has its own tests).
        "actions": AS_TEST_USER,
    }
    base.update(over)
    return WorkerConfig(**base)


@asynccontextmanager
async def running(
    redis: Redis, name: str = "w1", *, stop_now: bool = False, **over: Any
) -> AsyncIterator[Worker]:
    """An in-process Worker with its own Engine, started and (on exit) stopped."""
    worker = Worker(make_engine(redis), fast_config(redis, name, **over))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            worker.stop(now=stop_now)


# --- waiting ---------------------------------------------------------------------------------


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    within: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something other than None/False."""
    deadline = anyio.current_time() + within
    while True:
        got = await probe()
        if got is not None and got is not False:
            return got
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(interval)


async def snapshot(engine: Engine, name: str) -> PipelineState:
    """A private copy of the current state (the repository's cached object keeps changing)."""
    return await engine.full_state(name)


async def execution(engine: Engine, name: str, eid: str) -> ExecutionState:
    return (await snapshot(engine, name)).executions[eid]


async def wait_status(
    engine: Engine, name: str, eid: str, *statuses: str, within: float = 15.0
) -> ExecutionState:
    async def probe() -> ExecutionState | None:
        x = await execution(engine, name, eid)
        return x if x.status in statuses else None

    try:
        return await wait_for(probe, f"execution {eid} in {statuses}", within)
    except AssertionError:
        x = await execution(engine, name, eid)
        raise AssertionError(
            f"execution {eid} is {x.status}, not {statuses}: "
            f"{msgspec.json.encode(x).decode()[:3000]}"
        ) from None


async def wait_action(
    engine: Engine,
    name: str,
    eid: str,
    action: str,
    pred: Callable[[ActionExec], bool],
    what: str,
    within: float = 15.0,
) -> ActionExec:
    async def probe() -> ActionExec | None:
        x = await execution(engine, name, eid)
        for a in attempts(x, action):
            if pred(a):
                return a
        return None

    return await wait_for(probe, f"{action} of {eid}: {what}", within)


async def wait_retried(
    engine: Engine, name: str, eid: str, stage: str, retries: int = 1, within: float = 15.0
) -> ExecutionState:
    """Wait until an orchestrator applied the ``retries``-th manual retry of ``stage``."""

    async def probe() -> ExecutionState | None:
        x = await execution(engine, name, eid)
        run = x.stages[stage]
        return x if run.manualRetries >= retries and run.pendingRetry is None else None

    return await wait_for(probe, f"retry {retries} of {stage} in {eid} applied", within)


def attempts(x: ExecutionState, action: str) -> list[ActionExec]:
    """Every attempt of ``action`` in ``x``, oldest first."""
    return sorted(
        (a for a in x.actions.values() if a.actionName == action), key=lambda a: a.startTime
    )


def latest(x: ExecutionState, stage: str, action: str) -> ActionExec:
    return x.actions[x.stages[stage].latest[action]]


def _exists(path: Path) -> bool:
    return path.exists()


async def wait_file(path: Path, within: float = 10.0) -> None:
    async def probe() -> bool:
        return _exists(path)

    await wait_for(probe, f"{path} to exist", within)


# --- real worker processes -------------------------------------------------------------------


class WorkerProcess:
    """``stageline worker`` as a real process (killable with SIGKILL)."""

    def __init__(
        self,
        url: str,
        name: str,
        logdir: Path,
        *,
        lease_ttl: float = 3.0,
        claim_idle: float = 0.5,
        shutdown_grace: float = 5.0,
        concurrency: int = 8,
        partition_lease: float | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.name = name
        self.log_path = logdir / f"worker-{name}.log"
        self.args = [
            STAGELINE,
            *(["-v"] if os.environ.get("STAGELINE_TEST_WORKER_DEBUG") else []),
            "worker",
            "--redis-url",
            url,
            "--partitions",
            str(PARTITIONS),
            "--name",
            name,
            "--lease-ttl",
            str(lease_ttl),
            "--claim-idle",
            str(claim_idle),
            "--shutdown-grace",
            str(shutdown_grace),
            "--concurrency",
            str(concurrency),
            "--block-ms",
            "50",
            "--action-user",
            TEST_USER,
            "--claim-every",
            "0.2",
            "--reap-every",
            "0.2",
            "--snapshot-every",
            "0.3",
            *(["--partition-lease", str(partition_lease)] if partition_lease else []),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = dict(os.environ)
        env.pop("STAGELINE_REDIS_URL", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,  # its actions' process groups are its own business
            )
        return self

    def kill9(self) -> None:
        """kill -9 the worker only (its running commands are orphaned, as on a real crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen (timers, sockets and all) until :meth:`resume`."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def terminate(self, within: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(within)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def kill_orphans(marker_path: Path) -> None:
    """Kill leftover action processes whose command line mentions ``marker_path``.

    A worker killed with SIGKILL leaves its running commands behind (as a real crash would);
    the tests clean them up by their unique marker (the test's tmp path), by pid and
    process group (each command is a session leader), never by a broad name.
    """
    marker = str(marker_path).encode()
    own_group = os.getpgid(0)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker not in cmdline or b"redis-server" in cmdline:
            continue
        try:
            pgid = os.getpgid(int(pid))
            if pgid == int(pid) and pgid != own_group:
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- shell snippets --------------------------------------------------------------------------


def q(path: Path) -> str:
    return shlex.quote(str(path))


def wait_file_sh(path: Path, seconds: float = 20.0) -> str:
    """Shell: wait (bounded) until ``path`` exists; exit 1 if it never does."""
    n = int(seconds / 0.02)
    return f"for i in $(seq {n}); do [ -f {q(path)} ] && exit 0; sleep 0.02; done; exit 1"


def flaky_sh(marker: Path) -> str:
    """Shell: fail the first time (creating ``marker``), succeed every later time."""
    return f"if [ -f {q(marker)} ]; then exit 0; fi; touch {q(marker)}; echo flaky failed; exit 7"


def tracked(name: str, starts: Path, *extra: str, run_order: int = 1) -> ActionDeclaration:
    """A Commands action that records its actionExecutionId in ``starts`` when it starts."""
    return cmd(name, [f"echo $CODEPIPELINE_ACTION_EXECUTION_ID >> {q(starts)}", *extra], run_order)


def flaky_per_execution_sh(markers: Path) -> str:
    """Shell: fail the first run of this action in each execution, succeed afterwards."""
    m = f'{q(markers)}/"$CODEPIPELINE_PIPELINE_EXECUTION_ID.$CODEPIPELINE_ACTION_NAME"'
    return f"mkdir -p {q(markers)}; if [ -f {m} ]; then exit 0; fi; touch {m}; exit 7"


TERMINAL = ("Succeeded", "Failed", "Stopped", "Superseded", "Cancelled")


async def wait_all(
    engine: Engine,
    eids: Sequence[tuple[str, str]],
    statuses: Sequence[str] = TERMINAL,
    within: float = 60.0,
    *,
    tolerate_redis_down: bool = False,
) -> dict[str, ExecutionState]:
    """Wait until every (pipeline, execution) is in ``statuses``; returns them by id."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def probe() -> dict[str, ExecutionState] | None:
        out: dict[str, ExecutionState] = {}
        try:
            states = {n: await snapshot(engine, n) for n in {n for n, _ in eids}}
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if tolerate_redis_down:
                return None
            raise
        for n, eid in eids:
            x = states[n].executions[eid]
            if x.status not in statuses:
                return None
            out[eid] = x
        return out

    try:
        return await wait_for(probe, f"{len(eids)} executions in {statuses}", within, 0.1)
    except AssertionError:
        lines = []
        for n in sorted({n for n, _ in eids}):
            s = await snapshot(engine, n)
            for _, eid in [p for p in eids if p[0] == n]:
                x = s.executions[eid]
                if x.status not in statuses:
                    acts = [(a.actionName, a.status, a.worker) for a in x.actions.values()]
                    lines.append(f"{n} {eid} {x.status} {x.currentStage} {acts}")
        raise AssertionError("not done:\n" + "\n".join(lines[:20])) from None


def started_ids(starts: Path) -> list[str]:
    try:
        return starts.read_text().split()
    except FileNotFoundError:
        return []
