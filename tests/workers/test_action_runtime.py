"""The Commands action as a worker runs it: variables, the action user, its log, stopping."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from app.domain.model import ActionDeclaration, EnvironmentVariable
from app.logs import LogReader, stream_name
from tests.workers.helpers import (
    COMMANDS,
    execution,
    fast_config,
    latest,
    make_engine,
    pipeline,
    q,
    running,
    wait_for,
    wait_status,
)
from workers.runners.commands_action import ActionSettings
from workers.service import Worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory any action user can write (pytest's tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="stageline-test-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def test_variables_one_session_and_summary_through_the_worker(
    redis: Redis, shared: Path
) -> None:
    out = shared / "vars"
    engine = make_engine(redis)
    await engine.start()
    action = ActionDeclaration(
        name="vars",
        actionTypeId=COMMANDS,
        commands=[
            "cd /",
            "export LATER=carried",
            f'echo "$CODEPIPELINE_PIPELINE_NAME $CODEPIPELINE_STAGE_NAME '
            f"$CODEPIPELINE_ACTION_NAME $CODEPIPELINE_ACTION_ATTEMPT $TARGET $LATER $(pwd) "
            f'$CODEPIPELINE_PIPELINE_EXECUTION_ID $CODEPIPELINE_ACTION_EXECUTION_ID" > {q(out)}',
            "seq 1 20",
        ],
        environmentVariables=[EnvironmentVariable(name="TARGET", value="prod")],
    )
    await engine.create_pipeline(pipeline("vars", {"Build": [action]}))
    # default settings: as root, the action runs as nobody
    async with running(redis, actions=ActionSettings()):
        eid = await engine.start_execution("vars")
        x = await wait_status(engine, "vars", eid, "Succeeded", "Failed")
    a = latest(x, "Build", "vars")
    assert x.status == "Succeeded", a
    words = out.read_text().split()
    assert words == ["vars", "Build", "vars", "1", "prod", "carried", "/", eid, a.actionExecutionId]
    # a succeeded action's summary keeps its last lines
    assert a.summary == "4 commands succeeded\n16\n17\n18\n19\n20"
    if os.geteuid() == 0:
        assert out.stat().st_uid != 0  # written by the unprivileged action user


async def test_failure_names_the_command_and_the_log_has_everything(redis: Redis) -> None:
    engine = make_engine(redis)
    await engine.start()
    action = ActionDeclaration(
        name="fails",
        actionTypeId=COMMANDS,
        commands=["echo before", "echo oops >&2; exit 7", "echo never"],
    )
    await engine.create_pipeline(pipeline("fails", {"Build": [action]}))
    async with running(redis):
        eid = await engine.start_execution("fails")
        x = await wait_status(engine, "fails", eid, "Succeeded", "Failed")
    a = latest(x, "Build", "fails")
    assert a.status == "Failed" and a.errorCode == "CommandFailed"
    assert a.summary == "command 2 'echo oops >&2; exit 7' exited with 7"
    assert a.errorMessage is not None
    assert a.errorMessage.startswith(a.summary)
    assert "command 2: echo oops >&2; exit 7" in a.errorMessage
    assert a.errorMessage.endswith("before\noops")
    reader = LogReader(redis, engine.keys)
    events = await reader.forward("fails", stream_name(eid, a.actionExecutionId), 1, 100)
    assert [e.message for e in events] == [
        "[stageline] Running command 1: echo before",
        "before",
        "[stageline] Running command 2: echo oops >&2; exit 7",
        "oops",
        f"[stageline] action failed: {a.summary}",
    ]


async def test_stopping_the_worker_kills_the_actions_whole_group(
    redis: Redis, shared: Path
) -> None:
    bg, leader = shared / "bg", shared / "leader"
    engine = make_engine(redis)
    await engine.start()
    action = ActionDeclaration(
        name="hang",
        actionTypeId=COMMANDS,
        commands=[
            f"echo $$ > {q(leader)}",
            f"(trap '' TERM; sleep 600) & echo $! > {q(bg)}",
            "sleep 600",
        ],
    )
    await engine.create_pipeline(pipeline("hang", {"Build": [action]}))
    worker = Worker(
        make_engine(redis), fast_config(redis, "w1", actions=ActionSettings(kill_grace_s=1.0))
    )

    async def pids() -> list[int] | None:
        try:
            texts = [bg.read_text().strip(), leader.read_text().strip()]
        except FileNotFoundError:
            return None
        return [int(t) for t in texts] if all(t.isdigit() for t in texts) else None

    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        eid = await engine.start_execution("hang")
        both = await wait_for(pids, "the action's processes", within=20)
        t0 = anyio.current_time()
        worker.stop(now=True)
    assert anyio.current_time() - t0 < 10

    async def gone() -> bool:
        return not any(_alive(p) for p in both)

    # SIGTERM is ignored by the background sleep: SIGKILL after the grace gets it
    await wait_for(gone, "the action's process group to be killed", within=10)
    x = await execution(engine, "hang", eid)
    a = latest(x, "Build", "hang")
    assert a.status == "Failed" and a.errorCode == ev.WORKER_LOST
    reader = LogReader(redis, engine.keys)
    events = await reader.forward("hang", stream_name(eid, a.actionExecutionId), 1, 100)
    assert events[-1].message == "[stageline] action stopped before it finished"
    assert events[-1].last


async def test_abandon_kills_the_running_action_within_seconds(
    redis: Redis, shared: Path
) -> None:
    bg, leader = shared / "bg", shared / "leader"
    engine = make_engine(redis)
    await engine.start()
    action = ActionDeclaration(
        name="hang",
        actionTypeId=COMMANDS,
        commands=[f"echo $$ > {q(leader)}", f"sleep 600 & echo $! > {q(bg)}", "sleep 600"],
    )
    await engine.create_pipeline(pipeline("abandon", {"Build": [action]}))

    async def pids() -> list[int] | None:
        try:
            texts = [bg.read_text().strip(), leader.read_text().strip()]
        except FileNotFoundError:
            return None
        return [int(t) for t in texts] if all(t.isdigit() for t in texts) else None

    async with running(redis, actions=ActionSettings(watch_every_s=0.5)):
        eid = await engine.start_execution("abandon")
        both = await wait_for(pids, "the action's processes", within=20)
        t0 = anyio.current_time()
        await engine.stop_execution("abandon", eid, abandon=True)

        async def gone() -> bool:
            return not any(_alive(p) for p in both)

        await wait_for(gone, "the abandoned action's processes to be killed", within=10)
        took = anyio.current_time() - t0
        x = await wait_status(engine, "abandon", eid, "Stopped")
        a = latest(x, "Build", "hang")

        async def closed() -> str | None:
            reader = LogReader(redis, engine.keys)
            events = await reader.forward("abandon", stream_name(eid, a.actionExecutionId), 1, 50)
            return events[-1].message if events and events[-1].last else None

        last = await wait_for(closed, "the log's closing line", within=10)
    assert took < 10
    assert a.status == "Abandoned"
    assert last == "[stageline] action abandoned: its processes were stopped"


async def test_abandon_reaches_a_hung_sibling_in_a_failed_execution(
    redis: Redis, shared: Path
) -> None:
    """Issue 11: a sibling failed, so the execution counts as Failed, and a hung action of
    the same stage still runs: StopPipelineExecution with abandon kills it within seconds."""
    leader = shared / "leader"
    engine = make_engine(redis)
    await engine.start()
    hang = ActionDeclaration(
        name="hang", actionTypeId=COMMANDS, commands=[f"echo $$ > {q(leader)}", "sleep 600"]
    )
    boom = ActionDeclaration(name="boom", actionTypeId=COMMANDS, commands=["exit 1"])
    await engine.create_pipeline(pipeline("hung", {"Build": [hang, boom]}))

    async def pid() -> int | None:
        try:
            text = leader.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    async with running(redis, actions=ActionSettings(watch_every_s=0.5)):
        eid = await engine.start_execution("hung")
        leader_pid = await wait_for(pid, "the hung action's shell", within=20)
        await wait_status(engine, "hung", eid, "Failed")  # boom failed; hang still runs
        t0 = anyio.current_time()
        await engine.stop_execution("hung", eid, abandon=True)

        async def gone() -> bool:
            return not _alive(leader_pid)

        await wait_for(gone, "the hung action's processes to be killed", within=10)
        took = anyio.current_time() - t0
        x = await wait_status(engine, "hung", eid, "Failed")
    assert took < 10
    assert latest(x, "Build", "hang").status == "Abandoned"
    assert latest(x, "Build", "boom").status == "Failed"
