"""The docker runtime on a real Docker engine: each action in a fresh container with the
same session semantics and variables, its own user, no network, no secret of the worker's,
an image per action, and stopping that removes the container."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import anyio
import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from app.domain.model import ActionDeclaration, EnvironmentVariable
from app.logs import LogReader, stream_name
from tests.conftest import IN_CI
from tests.docker_engine import TEST_IMAGE, DockerEngine
from tests.workers.helpers import (
    COMMANDS,
    execution,
    fast_config,
    latest,
    make_engine,
    pipeline,
    running,
    wait_for,
    wait_status,
)
from workers.runners.commands_action import ActionSettings
from workers.service import Worker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    engine = DockerEngine(tmp_path_factory.mktemp("docker"))
    why = engine.start() or engine.build_test_image()
    if why:
        engine.stop()
        if IN_CI:
            pytest.fail(f"CI=true and no Docker engine: {why}", pytrace=False)
        pytest.skip(f"no Docker engine: {why}")
    with pytest.MonkeyPatch.context() as mp:
        if engine.host is not None:
            mp.setenv("DOCKER_HOST", engine.host)  # the worker's container CLI uses it
        yield engine
    engine.stop()


def _settings(image: str = TEST_IMAGE) -> ActionSettings:
    return ActionSettings(runtime="docker", image=image)


def _containers(docker: DockerEngine) -> list[str]:
    out = docker.docker("ps", "-aq", "--filter", "label=stageline.action=1").stdout
    return out.split()


async def _log(redis: Redis, engine: object, pipeline_name: str, eid: str, aeid: str) -> str:
    from app.engine import Engine

    assert isinstance(engine, Engine)
    reader = LogReader(redis, engine.keys)
    events = await reader.forward(pipeline_name, stream_name(eid, aeid), 1, 10_000)
    return "\n".join(e.message for e in events)


async def test_session_variables_user_no_network_no_secrets_in_a_container(
    real_redis: Redis, docker: DockerEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "sl" + secrets.token_hex(6)
    monkeypatch.setenv("STAGELINE_ACCESS_KEYS", f"AKID:{prefix}{secrets.token_hex(8)}")
    monkeypatch.setenv("DB_PASSWORD", prefix + secrets.token_hex(8))
    engine = make_engine(real_redis)
    await engine.start()
    port = real_redis.connection_pool.connection_kwargs.get("port", 6379)
    action = ActionDeclaration(
        name="inside",
        actionTypeId=COMMANDS,
        commands=[
            "cd /tmp && export X=1",
            'test "$(pwd)" = /tmp && echo "X=$X"',
            "f() { echo \"fn $1\"; }",
            "f works",
            'echo "vars $CODEPIPELINE_PIPELINE_NAME $CODEPIPELINE_ACTION_NAME $TARGET"',
            'echo "uid $(id -u)"',
            # no network: no route anywhere, the worker's Redis unreachable
            'test "$(grep -vc Iface /proc/net/route)" = 0 && echo no-routes',
            f"! nc -w 2 127.0.0.1 {port} </dev/null && echo no-redis",
            # nothing of the worker's secrets: environment, processes, files
            f"p=$(echo {prefix[::-1]} | rev)",
            '! env | grep -q "$p"',
            # (a builtin `case`: a grep would find the prefix in its own command line)
            'for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do case "$(tr "\\0" " " '
            '< $f 2>/dev/null)" in *"$p"*) echo "FOUND $f"; exit 1;; esac; done',
            '! grep -rqs "$p" /bin /etc /tmp "$HOME" . && echo found-nothing',
        ],
        environmentVariables=[EnvironmentVariable(name="TARGET", value="box")],
    )
    await engine.create_pipeline(pipeline("docked", {"Build": [action]}))
    async with running(real_redis, actions=_settings()):
        eid = await engine.start_execution("docked")
        x = await wait_status(engine, "docked", eid, "Succeeded", "Failed", within=90)
    a = latest(x, "Build", "inside")
    text = await _log(real_redis, engine, "docked", eid, a.actionExecutionId)
    assert x.status == "Succeeded", f"{a}\n{text}"
    for expected in ("X=1", "fn works", "vars docked inside box", "no-routes", "no-redis"):
        assert expected in text.splitlines(), text
    assert "found-nothing" in text
    (uid_line,) = [line for line in text.splitlines() if line.startswith("uid ")]
    uid = int(uid_line.split()[1])
    assert uid != 0 if os.geteuid() == 0 else uid == os.geteuid()
    assert _containers(docker) == []  # removed after the run


async def test_image_per_action_through_its_configuration(
    real_redis: Redis, docker: DockerEngine
) -> None:
    engine = make_engine(real_redis)
    await engine.start()
    own = ActionDeclaration(
        name="own",
        actionTypeId=COMMANDS,
        commands=["echo from-the-action-image"],
        configuration={"Image": TEST_IMAGE},
    )
    default = ActionDeclaration(
        name="default", actionTypeId=COMMANDS, commands=["true"], runOrder=2
    )
    await engine.create_pipeline(pipeline("images", {"Build": [own, default]}))
    missing = "stageline-no-such-image:0"
    async with running(real_redis, actions=_settings(image=missing)):
        eid = await engine.start_execution("images")
        x = await wait_status(engine, "images", eid, "Succeeded", "Failed", within=90)
    assert latest(x, "Build", "own").status == "Succeeded"
    d = latest(x, "Build", "default")
    assert d.status == "Failed" and d.errorCode == "CommandFailed"
    assert d.summary is not None and d.summary.startswith("the shell session failed to start")
    assert missing in (d.errorMessage or "")


async def test_stopping_removes_the_container(real_redis: Redis, docker: DockerEngine) -> None:
    engine = make_engine(real_redis)
    await engine.start()
    action = ActionDeclaration(
        name="hang", actionTypeId=COMMANDS, commands=["echo started", "sleep 600"]
    )
    await engine.create_pipeline(pipeline("dock-hang", {"Build": [action]}))
    worker = Worker(make_engine(real_redis), fast_config(real_redis, "w1", actions=_settings()))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        eid = await engine.start_execution("dock-hang")

        async def up() -> bool:
            return bool(_containers(docker)) and "started" in (
                await _log(real_redis, engine, "dock-hang", eid, await _aeid(engine, eid))
            )

        async def _aeid(engine: object, eid: str) -> str:
            x = await execution(make_engine(real_redis), "dock-hang", eid)
            return latest(x, "Build", "hang").actionExecutionId

        await wait_for(up, "the container to run", within=60, interval=0.2)
        t0 = anyio.current_time()
        worker.stop(now=True)

    async def gone() -> bool:
        return not _containers(docker)

    await wait_for(gone, "the container to be removed", within=10, interval=0.2)
    assert anyio.current_time() - t0 < 10
    x = await execution(engine, "dock-hang", eid)
    a = latest(x, "Build", "hang")
    assert a.status == "Failed" and a.errorCode == ev.WORKER_LOST

