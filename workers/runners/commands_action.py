"""The ``AWS/Compute/Commands/1`` action as a worker runs it: variables, isolation, log.

:func:`run_commands_job` builds the action's environment (``CODEPIPELINE_*`` plus its
declared ``environmentVariables``), runs its commands in one shell session as the action
user (:mod:`workers.runners.commands`, :mod:`workers.runners.isolation`), streams the
complete output into the action execution's log (:mod:`app.logs`) when a Redis is given,
and turns the result into what is recorded: a summary (with the output's last lines on
success), an error code and a message naming the failed command.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.artifacts.store import ArtifactError, ArtifactSettings, ArtifactStore, store_of
from app.domain.artifacts import ArtifactLocation, output_artifact_files
from app.domain.model import ActionDeclaration
from app.engine import Engine
from app.logs import DEFAULT_LINE_BYTES, DEFAULT_MAX_LINES, DEFAULT_RETENTION_S, ActionLogWriter
from app.store.keys import Keys
from workers.runners.commands import (
    DEFAULT_KILL_GRACE_S,
    OUTPUT_VARIABLES_MAX_CHARS,
    CommandsResult,
    run_commands,
)
from workers.runners.container import IMAGE_KEY, Container
from workers.runners.isolation import DEFAULT_ACTION_USER, resolve_action_user

__all__ = ["RUNTIMES", "ActionSettings", "Outcome", "action_environment", "run_commands_job"]

Runtime = Literal["process", "docker"]
RUNTIMES: tuple[Runtime, ...] = ("process", "docker")

DEFAULT_TIMEOUT_MINUTES = 60
SUMMARY_LINES = 5
SUMMARY_CHARS = 2000
MESSAGE_CHARS = 5000


@dataclass(frozen=True)
class ActionSettings:
    """A worker's settings for the actions it runs (``stageline worker --action-...``)."""

    user: str | None = DEFAULT_ACTION_USER  # used when the worker runs as root
    workdir: str | None = None  # where private run directories are made (default: $TMPDIR)
    log_max_lines: int = DEFAULT_MAX_LINES
    log_line_bytes: int = DEFAULT_LINE_BYTES
    log_retention_s: int = DEFAULT_RETENTION_S
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    default_timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES
    runtime: Runtime = "process"  # or "docker": a fresh container per action
    image: str | None = None  # the docker runtime's default image
    network: str = "none"  # the docker runtime's network: none = no route anywhere
    container_cli: str = "docker"  # or podman (docker-compatible CLI)
    watch_every_s: float = 1.0  # how often a running action checks it is still wanted
    # where artifacts are kept (--artifact-dir / --s3-endpoint, or the environment)
    artifacts: ArtifactSettings = field(default_factory=ArtifactSettings.from_env)


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    summary: str
    error_code: str | None = None
    message: str | None = None
    output_variables: dict[str, str] | None = None
    output_artifacts: dict[str, ArtifactLocation] | None = None


ERROR_ARTIFACT = "ArtifactError"
ERROR_OUTPUT_VARIABLES = "OutputVariablesTooLarge"


class UnsupportedVariable(Exception):
    pass


def action_environment(
    *,
    pipeline: str,
    stage: str,
    execution_id: str,
    action_execution_id: str,
    attempt: int | None,
    declaration: ActionDeclaration,
) -> dict[str, str]:
    """The variables an action gets on top of the minimal base environment."""
    env = {
        "CODEPIPELINE_PIPELINE_NAME": pipeline,
        "CODEPIPELINE_STAGE_NAME": stage,
        "CODEPIPELINE_ACTION_NAME": declaration.name,
        "CODEPIPELINE_PIPELINE_EXECUTION_ID": execution_id,
        "CODEPIPELINE_ACTION_EXECUTION_ID": action_execution_id,
    }
    if attempt is not None:
        env["CODEPIPELINE_ACTION_ATTEMPT"] = str(attempt)
    for var in declaration.environmentVariables or []:
        if var.type == "SECRETS_MANAGER":
            raise UnsupportedVariable(
                f"environment variable {var.name}: SECRETS_MANAGER is not supported"
            )
        env[var.name] = var.value
    return env


async def run_commands_job(
    *,
    pipeline: str,
    stage: str,
    execution_id: str,
    action_execution_id: str,
    attempt: int | None,
    declaration: ActionDeclaration,
    tail_bytes: int,
    settings: ActionSettings,
    redis: Redis | None = None,
    keys: Keys | None = None,
    still_wanted: Callable[[], Awaitable[bool]] | None = None,
    input_artifacts: Mapping[str, ArtifactLocation] | None = None,
    store: ArtifactStore | None = None,
) -> Outcome:
    """Run the action; with ``still_wanted``, it is checked every ``watch_every_s`` and the
    session killed as soon as it answers False (the action was abandoned).

    ``input_artifacts`` (name -> location, in declaration order) are unpacked into the
    workspace first: the first at its root (like CodeBuild's primary source), each other one
    in a directory named after it. After a successful session, the declared output
    variables are exported and each declared output artifact is packed from its ``files``
    (all of the workspace without) into ``store``; a missing path fails the action."""
    try:
        env = action_environment(
            pipeline=pipeline,
            stage=stage,
            execution_id=execution_id,
            action_execution_id=action_execution_id,
            attempt=attempt,
            declaration=declaration,
        )
    except UnsupportedVariable as err:
        return Outcome(False, "secrets are not supported", "SecretsNotSupported", str(err))
    minutes = declaration.timeoutInMinutes or settings.default_timeout_minutes
    user = resolve_action_user(settings.user)
    container: Container | None = None
    if settings.runtime == "docker":
        image = (declaration.configuration or {}).get(IMAGE_KEY) or settings.image
        if not image:
            return Outcome(
                False,
                "no container image",
                "ConfigurationError",
                f"the docker runtime needs an image: set configuration.{IMAGE_KEY} on the "
                "action or start the worker with --action-image",
            )
        container = Container(image, settings.container_cli, settings.network)
    writer: ActionLogWriter | None = None
    if redis is not None and keys is not None:
        writer = ActionLogWriter(
            redis,
            keys,
            pipeline=pipeline,
            execution_id=execution_id,
            action_execution_id=action_execution_id,
            stage=stage,
            action=declaration.name,
            max_lines=settings.log_max_lines,
            line_bytes=settings.log_line_bytes,
            retention_s=settings.log_retention_s,
        )
        await writer.open()
    result: CommandsResult | None = None
    abandoned = False
    artifact_error: str | None = None
    produced: dict[str, ArtifactLocation] = {}
    outputs = output_artifact_files(declaration)
    owner = (user.uid, user.gid) if user is not None else None

    def say(text: str) -> None:
        if writer is not None:
            writer.note(text)

    async def prepare(workspace: str) -> None:
        for i, (name, loc) in enumerate((input_artifacts or {}).items()):
            into = workspace if i == 0 else os.path.join(workspace, name)
            where = "the workspace" if i == 0 else f"./{name}"
            try:
                n = await store_of(loc, settings.artifacts).get(loc, into, owner=owner)
            except (ArtifactError, OSError) as err:
                raise ArtifactError(f"input artifact {name!r}: {err}") from err
            say(f"Input artifact {name}: {n} file(s) from {_where(loc)} into {where}")

    async def collect(workspace: str, r: CommandsResult) -> None:
        if not r.succeeded or not outputs:
            return
        if store is None:
            raise ArtifactError("no artifact store for this action's output artifacts")
        for name, files in outputs.items():
            try:
                loc = await store.put(
                    pipeline,
                    execution_id,
                    name,
                    workspace,
                    files=files or None,
                    unique=action_execution_id,
                )
            except (ArtifactError, OSError) as err:
                raise ArtifactError(f"output artifact {name!r}: {err}") from err
            produced[name] = loc
            say(f"Output artifact {name}: stored as {_where(loc)}")

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal abandoned
        assert still_wanted is not None
        while True:
            await anyio.sleep(settings.watch_every_s)
            try:
                wanted = await still_wanted()
            except (RedisError, OSError):
                continue  # cannot tell: keep running, ask again
            if not wanted:
                abandoned = True
                scope.cancel()
                return

    try:
        async with anyio.create_task_group() as tg:
            if writer is not None:
                tg.start_soon(writer.run)
            if still_wanted is not None:
                tg.start_soon(watch, tg.cancel_scope)
            try:
                result = await run_commands(
                    declaration.commands or [],
                    env=env,
                    timeout_s=minutes * 60.0,
                    tail_bytes=tail_bytes,
                    kill_grace_s=settings.kill_grace_s,
                    user=user,
                    output=writer,
                    run_base=settings.workdir,
                    container=container,
                    output_variables=declaration.outputVariables or (),
                    prepare=prepare if input_artifacts else None,
                    collect=collect if outputs else None,
                )
            except ArtifactError as err:
                artifact_error = str(err)
            tg.cancel_scope.cancel()
    finally:
        if writer is not None:
            with anyio.CancelScope(shield=True):
                if artifact_error is not None:
                    closing = f"action failed: {artifact_error}"
                elif abandoned:
                    closing = "action abandoned: its processes were stopped"
                elif result is None:
                    closing = "action stopped before it finished"
                elif result.succeeded:
                    closing = f"action succeeded: {result.summary()}"
                else:
                    closing = f"action failed: {result.summary()}"
                await writer.close(closing)
    if abandoned:
        return Outcome(False, "abandoned", "Abandoned", "the action was abandoned while it ran")
    if artifact_error is not None:
        return Outcome(False, _cut(artifact_error, SUMMARY_CHARS), ERROR_ARTIFACT, artifact_error)
    assert result is not None  # else the cancellation propagated
    out = outcome(result)
    if not out.succeeded:
        return out
    variables = result.output_variables or None
    size = sum(len(k) + len(v) for k, v in (variables or {}).items())
    if size > OUTPUT_VARIABLES_MAX_CHARS:
        message = (
            f"the output variables hold {size} characters; at most "
            f"{OUTPUT_VARIABLES_MAX_CHARS} are allowed"
        )
        return Outcome(False, "output variables too large", ERROR_OUTPUT_VARIABLES, message)
    return Outcome(
        True,
        out.summary,
        output_variables=variables,
        output_artifacts=produced or None,
    )


def _where(loc: ArtifactLocation) -> str:
    scheme = "s3" if loc.store == "S3" else "local"
    return f"{scheme}://{loc.bucket}/{loc.key}"


def action_watch(
    engine: Engine, pipeline: str, execution_id: str, aeid: str
) -> Callable[[], Awaitable[bool]]:
    """``still_wanted`` for :func:`run_commands_job`: is the action still InProgress?"""

    async def still_wanted() -> bool:
        s = await engine.repo.load(pipeline, [execution_id])  # that execution, caught up
        x = s.executions.get(execution_id)
        a = x.actions.get(aeid) if x is not None else None
        return a is None or a.status == "InProgress"

    return still_wanted


def outcome(r: CommandsResult) -> Outcome:
    if r.succeeded:
        summary = r.summary()
        last = _last_lines(r.output_tail, SUMMARY_LINES)
        if last:
            summary = f"{summary}\n{last}"
        return Outcome(True, _cut(summary, SUMMARY_CHARS))
    detail = r.summary()
    if r.failed_index is not None and r.failed_command is not None:
        detail = f"{detail}\ncommand {r.failed_index}: {_cut(r.failed_command, 500)}"
    room = max(0, MESSAGE_CHARS - len(detail) - 1)
    tail = r.output_tail[-room:] if room else ""  # the end of the output matters most
    return Outcome(False, r.summary(), r.error_code(), f"{detail}\n{tail}".strip())


def _last_lines(text: str, n: int) -> str:
    lines: Sequence[str] = text.rstrip("\n").splitlines()
    return "\n".join(lines[-n:])


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
