"""Runner for the ``{category: Compute, owner: AWS, provider: Commands, version: "1"}`` action.

Each entry of the action's ``commands`` list is run with ``/bin/sh -c``, one after another,
stopping at the first non-zero exit.  Commands do not share a shell session: ``cd``, ``export``
and background jobs do not carry over from one command to the next.

Process hygiene
---------------
* Every command starts in its own session (``start_new_session=True``), so its process group
  id equals the shell's pid and everything it forks stays in that group.
* When a command's shell exits, anything it left running in its group (``server &``) is
  terminated too: nothing a command starts outlives it, and the output pipe reaches EOF.
* On timeout or cancellation the whole group gets SIGTERM, then SIGKILL once ``kill_grace_s``
  has passed with members still alive.  Cleanup runs in a shielded scope; cancellation then
  propagates to the caller, a timeout becomes ``CommandsResult(timed_out=True)``.
* stdin is ``/dev/null``; stderr is merged into stdout, and only the last ``tail_bytes`` bytes
  are kept, so memory stays bounded however much a command prints.

Spawn failures (bad ``cwd``, ``/bin/sh`` missing, ...) raise ``OSError`` to the caller: they are
a worker or configuration problem, not a command failing.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream

__all__ = [
    "DEFAULT_KILL_GRACE_S",
    "DEFAULT_TAIL_BYTES",
    "ERROR_COMMAND_FAILED",
    "ERROR_TIMEOUT",
    "CommandsResult",
    "run_commands",
]

DEFAULT_TAIL_BYTES = 4096
DEFAULT_KILL_GRACE_S = 2.0
ERROR_COMMAND_FAILED = "CommandFailed"
ERROR_TIMEOUT = "Timeout"

SHELL = "/bin/sh"
# Lower bound for reading what is left in the pipe once a command's group is gone, so that
# kill_grace_s=0 does not throw away output that is already sitting in the pipe.
_MIN_DRAIN_S = 0.25
_POLL_START_S = 0.005
_POLL_MAX_S = 0.1
_SUMMARY_COMMAND_CHARS = 60


@dataclass(frozen=True)
class CommandsResult:
    succeeded: bool
    exit_code: int | None
    """Exit code of the last command run (negative ``-N`` if killed by signal N); ``None``
    when it was killed by the timeout (or never started because the timeout had passed)."""
    failed_command: str | None
    """The command that exited non-zero or was running when the timeout hit."""
    timed_out: bool
    output_tail: str
    """Last ``tail_bytes`` bytes of combined stdout+stderr of all commands, UTF-8 decoded with
    ``errors="replace"`` (a multi-byte character cut at the start of the tail is dropped)."""
    duration_s: float
    commands_run: int = 0
    """Commands started, including the one that failed or timed out."""

    def summary(self) -> str:
        """Short human-readable line for the action execution's summary."""
        if self.succeeded:
            if self.commands_run == 0:
                return "no commands to run"
            noun = "command" if self.commands_run == 1 else "commands"
            return f"{self.commands_run} {noun} succeeded"
        command = _short(self.failed_command or "")
        if self.timed_out:
            return f"timed out after {self.duration_s:.1f}s running command '{command}'"
        code = self.exit_code
        if code is not None and code < 0:
            return f"command '{command}' was killed by signal {_signal_name(-code)}"
        return f"command '{command}' exited with {code}"

    def error_code(self) -> str | None:
        """``None`` on success, else ``"Timeout"`` or ``"CommandFailed"``."""
        if self.succeeded:
            return None
        return ERROR_TIMEOUT if self.timed_out else ERROR_COMMAND_FAILED


async def run_commands(
    commands: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None,
    cwd: str | None = None,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
) -> CommandsResult:
    """Run ``commands`` sequentially with ``/bin/sh -c``, stopping at the first failure.

    ``env`` is layered on top of the worker's own environment.  ``timeout_s`` bounds the whole
    list (``None`` = no limit).  Cancelling the calling task kills the running command's process
    group and re-raises the cancellation.
    """
    if isinstance(commands, str | bytes):
        raise TypeError("commands must be a sequence of command strings, not a single string")
    if tail_bytes < 0:
        raise ValueError("tail_bytes must be >= 0")
    if kill_grace_s < 0:
        raise ValueError("kill_grace_s must be >= 0")

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    tail = _TailBuffer(tail_bytes)
    started = time.monotonic()
    exit_code: int | None = None
    failed_command: str | None = None
    current: str | None = None
    commands_run = 0

    deadline = math.inf if timeout_s is None else anyio.current_time() + timeout_s
    with anyio.CancelScope(deadline=deadline) as timeout_scope:
        for command in commands:
            current = command
            exit_code = None
            commands_run += 1
            exit_code = await _run_one(
                command, env=full_env, cwd=cwd, tail=tail, kill_grace_s=kill_grace_s
            )
            if exit_code != 0:
                failed_command = command
                break
        current = None

    timed_out = timeout_scope.cancelled_caught
    if timed_out:
        exit_code = None
        failed_command = current
    return CommandsResult(
        succeeded=not timed_out and failed_command is None,
        exit_code=exit_code,
        failed_command=failed_command,
        timed_out=timed_out,
        output_tail=tail.text(),
        duration_s=time.monotonic() - started,
        commands_run=commands_run,
    )


async def _run_one(
    command: str,
    *,
    env: Mapping[str, str],
    cwd: str | None,
    tail: _TailBuffer,
    kill_grace_s: float,
) -> int:
    process = await anyio.open_process(
        [SHELL, "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    pgid = process.pid  # setsid() made the shell the leader of a fresh process group
    stdout = process.stdout
    assert stdout is not None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, stdout, tail)
            returncode = await process.wait()
            # Stop the pump: a leftover `cmd &` may hold the pipe open forever.  What remains
            # in the pipe is drained below, once the group is gone.
            tg.cancel_scope.cancel()
        return returncode
    finally:
        # Runs on success, failure, timeout and cancellation alike; shielded so a pending
        # cancellation cannot leave the group running.
        with anyio.CancelScope(shield=True):
            await _kill_process_group(pgid, kill_grace_s)
            if process.returncode is None:
                # Only if the shell left its own group (setpgid); normally already dead.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            # Bounded: a process that escaped the group (setsid) can keep the pipe open.
            with anyio.move_on_after(max(kill_grace_s, _MIN_DRAIN_S)):
                await _pump(stdout, tail)
            await process.aclose()


async def _pump(stream: ByteReceiveStream, tail: _TailBuffer) -> None:
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        async for chunk in stream:
            tail.append(chunk)


async def _kill_process_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s`` for it to empty, then SIGKILL it."""
    if not _signal_group(pgid, signal.SIGTERM):
        return  # nothing left in the group
    with anyio.move_on_after(grace_s):
        delay = _POLL_START_S
        while _group_has_live_members(pgid):
            await anyio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
        return
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # some member we may not signal; let the caller escalate
    return True


def _group_has_live_members(pgid: int) -> bool:
    """True while a non-zombie process is in group ``pgid``.

    ``killpg(pgid, 0)`` alone also counts zombies, and orphaned grandchildren stay zombies until
    init gets round to reaping them (which can take seconds in minimal containers), so on Linux
    ``/proc`` is consulted to ignore them.  Elsewhere the answer is conservative.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 3:
            continue
        try:
            member_pgid = int(fields[2])
        except ValueError:
            continue
        if member_pgid == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


class _TailBuffer:
    """Keeps the last ``limit`` bytes appended; memory stays O(limit + one chunk)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._dropped = False

    def append(self, data: bytes) -> None:
        if not data:
            return
        if len(data) >= self._limit:
            self._dropped = self._dropped or bool(self._buf) or len(data) > self._limit
            self._buf = bytearray(data[len(data) - self._limit :]) if self._limit else bytearray()
            return
        self._buf += data
        # Trim lazily (at 2x) so a stream of small chunks costs amortised O(1) per byte.
        if len(self._buf) > 2 * self._limit:
            del self._buf[: len(self._buf) - self._limit]
            self._dropped = True

    def text(self) -> str:
        data = bytes(self._buf[len(self._buf) - self._limit :]) if self._limit else b""
        if self._dropped or len(self._buf) > self._limit:
            # The cut may have split a UTF-8 sequence: drop its orphaned continuation bytes
            # (at most 3) instead of rendering them as replacement characters.
            skip = 0
            while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace")


def _short(command: str) -> str:
    lines = command.strip().splitlines()
    text = lines[0] if lines else ""
    if len(lines) > 1 or len(text) > _SUMMARY_COMMAND_CHARS:
        text = text[: _SUMMARY_COMMAND_CHARS - 1].rstrip() + "…"
    return text


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
