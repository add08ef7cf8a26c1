"""Runner for the ``{category: Compute, owner: AWS, provider: Commands, version: "1"}`` action.

The action's ``commands`` list runs in order in **one shell session** (``bash`` where
installed, else ``/bin/sh``), like a CodeBuild buildspec phase: ``cd``, ``export``, shell
functions, aliases and ``set`` options carry over from one command to the next. The first
command that exits non-zero stops the session; the result names it (its index and text) and
its exit code.

How the session runs
--------------------
The commands are written into a small script that ``eval``\\ s each command in turn (each one
single-quoted, so nothing in one command can break the script's syntax) and records in a
status file when command *i* starts and with which status it ended. A command that ends the
shell itself (``exit 3``, ``set -e`` followed by a failure, ``kill -9 $$``) is still named:
it is the last one that started. Before each command the script also prints a marker line
carrying a per-run random nonce; the runner takes it out of the output and puts
``Running command i: ...`` at that exact place in the log instead.

Process hygiene
---------------
* The shell starts in its own session (``start_new_session=True``), so its process group id
  equals its pid and everything it forks stays in that group.
* When the shell exits, anything it left running in its group (``server &``) is terminated
  too: nothing an action starts outlives it, and the output pipe reaches EOF.
* On timeout or cancellation the whole group gets SIGTERM, then SIGKILL once ``kill_grace_s``
  has passed with members still alive.  Cleanup runs in a shielded scope; cancellation then
  propagates to the caller, a timeout becomes ``CommandsResult(timed_out=True)``.
* The script first waits for a "go" line on its stdin, written once the runner holds the
  process, so a spawn interrupted by cancellation cannot leave commands running unseen;
  then stdin is ``/dev/null`` for the commands.
* stderr is merged into stdout. Only the last ``tail_bytes`` bytes
  are kept in memory; the complete output goes to ``output`` (an :class:`OutputSink`, e.g.
  the action's log), so memory stays bounded however much a command prints.

Isolation (see :mod:`workers.runners.isolation`): the environment is
:func:`~workers.runners.isolation.base_environment` plus ``env`` — nothing of the worker's —
and with ``user`` the shell runs as that user, with no supplementary groups, in a private
run directory (workspace, HOME and TMPDIR) that is removed afterwards.

Spawn failures (bad ``cwd``, no shell, ...) raise ``OSError`` to the caller: they are a worker
or configuration problem, not a command failing.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import ByteReceiveStream

from workers.runners.container import Container
from workers.runners.isolation import (
    ActionUser,
    RunDir,
    base_environment,
    make_run_dir,
    pick_shell,
    remove_run_dir,
)

__all__ = [
    "DEFAULT_KILL_GRACE_S",
    "DEFAULT_TAIL_BYTES",
    "ERROR_COMMAND_FAILED",
    "ERROR_TIMEOUT",
    "CommandsResult",
    "OutputSink",
    "run_commands",
    "session_script",
]

DEFAULT_TAIL_BYTES = 4096
DEFAULT_KILL_GRACE_S = 2.0
ERROR_COMMAND_FAILED = "CommandFailed"
ERROR_TIMEOUT = "Timeout"

# Lower bound for reading what is left in the pipe once the group is gone, so that
# kill_grace_s=0 does not throw away output that is already sitting in the pipe.
_MIN_DRAIN_S = 0.25
_POLL_START_S = 0.005
_POLL_MAX_S = 0.1
_SUMMARY_COMMAND_CHARS = 60
_NOTE_COMMAND_CHARS = 200
_STATUS_FILE = ".status"
_SCRIPT_FILE = ".session.sh"
_OUTPUTS_FILE = ".outputs"
# what an exportable output variable name looks like (a shell variable name)
SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# AWS's quota on an action's output variables: at most this many characters in all
OUTPUT_VARIABLES_MAX_CHARS = 122_880


class OutputSink(Protocol):
    """Where the complete output of a run goes (besides the in-memory tail)."""

    def write(self, data: bytes) -> None:
        """A chunk of combined stdout+stderr, as read (not split into lines)."""

    def note(self, text: str) -> None:
        """A line from the runner itself (``Running command 2: make``)."""


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
    failed_index: int | None = None
    """1-based position of ``failed_command`` in the list."""
    output_variables: dict[str, str] | None = None
    """On success, the values of the ``output_variables`` asked for that were set in the
    session at its end (unset ones are left out)."""

    def summary(self) -> str:
        """Short human-readable line for the action execution's summary."""
        if self.succeeded:
            if self.commands_run == 0:
                return "no commands to run"
            noun = "command" if self.commands_run == 1 else "commands"
            return f"{self.commands_run} {noun} succeeded"
        command = _short(self.failed_command or "")
        if self.failed_command is None and not self.timed_out:
            return f"the shell session failed to start (exit {self.exit_code})"
        where = f"command {self.failed_index}" if self.failed_index else "command"
        if self.timed_out:
            return f"timed out after {self.duration_s:.1f}s running {where} '{command}'"
        code = self.exit_code
        if code is not None and code < 0:
            return f"{where} '{command}' was killed by signal {_signal_name(-code)}"
        return f"{where} '{command}' exited with {code}"

    def error_code(self) -> str | None:
        """``None`` on success, else ``"Timeout"`` or ``"CommandFailed"``."""
        if self.succeeded:
            return None
        return ERROR_TIMEOUT if self.timed_out else ERROR_COMMAND_FAILED


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def session_script(
    commands: Sequence[str],
    status_file: str,
    nonce: str = "",
    outputs_file: str | None = None,
    output_variables: Sequence[str] = (),
) -> str:
    """The POSIX shell script that runs ``commands`` in one session (see module docs).

    With a ``nonce``, a marker line (``\\036stageline-<nonce> <i>``) is printed to the output
    before command *i*, so the runner can place "Running command i" exactly in the log.
    With ``outputs_file``, once every command succeeded the script writes there each of the
    ``output_variables`` that is set (``name NUL value NUL``; shell variable names only).
    """
    status = _quote(status_file)
    lines = [
        "# stageline: one shell session for the action's commands",
        "read __stageline_go || exit 125",  # wait until the runner holds the process
        "unset __stageline_go",
        "exec </dev/null",
    ]
    for i, command in enumerate(commands, 1):
        lines.append(f"printf 'S {i}\\n' >>{status}")
        if nonce:
            lines.append(f"printf '\\036stageline-{nonce} {i}\\n'")
        lines += [
            f"eval {_quote(command)}",
            "__stageline_rc=$?",
            f"printf 'E {i} %s\\n' \"$__stageline_rc\" >>{status}",
            '[ "$__stageline_rc" -eq 0 ] || exit "$__stageline_rc"',
        ]
    if outputs_file is not None:
        out = _quote(outputs_file)
        for name in output_variables:
            if SHELL_NAME.match(name):  # anything else could not be a shell variable
                lines.append(
                    f'[ -z "${{{name}+x}}" ] || printf \'%s\\000%s\\000\' {name} "${name}" >>{out}'
                )
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


class _Status:
    """Reads the status file the session script appends to (what started, how it ended)."""

    def __init__(self, path: str, commands: Sequence[str]) -> None:
        self.path = path
        self.commands = commands
        self.offset = 0
        self.partial = b""
        self.started = 0  # index of the last command that started
        self.ended: dict[int, int] = {}

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(65536)
        except OSError:
            return
        if not data:
            return
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        for raw in complete:
            fields = raw.split()
            try:
                if fields[0] == b"S":
                    i = int(fields[1])
                    if 1 <= i <= len(self.commands) and i > self.started:
                        self.started = i
                elif fields[0] == b"E":
                    self.ended[int(fields[1])] = int(fields[2])
            except (IndexError, ValueError):
                continue  # the action scribbled on its own status file


async def run_commands(
    commands: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None,
    cwd: str | None = None,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
    kill_grace_s: float = DEFAULT_KILL_GRACE_S,
    user: ActionUser | None = None,
    output: OutputSink | None = None,
    shell: str | None = None,
    run_base: str | None = None,
    container: Container | None = None,
    output_variables: Sequence[str] = (),
    prepare: Callable[[str], Awaitable[None]] | None = None,
    collect: Callable[[str, CommandsResult], Awaitable[None]] | None = None,
) -> CommandsResult:
    """Run ``commands`` in one shell session, stopping at the first failure.

    The environment is the minimal base (PATH, HOME, TMPDIR, LANG, USER, LOGNAME, SHELL) with
    ``env`` on top; the worker's own environment is never passed on. ``cwd`` is the working
    directory (default: a fresh private workspace). ``timeout_s`` bounds the whole list
    (``None`` = no limit). ``user`` runs the shell as that user (needs root). ``container``
    runs the session in a fresh container instead (:mod:`workers.runners.container`).
    Cancelling the calling task kills the session's process group (and container) and
    re-raises the cancellation.

    ``output_variables``: names whose values at the end of a successful session are returned
    (``CommandsResult.output_variables``). ``prepare(workspace)`` runs before the session
    (e.g. unpack input artifacts), ``collect(workspace, result)`` after it, before the
    private run directory is removed (e.g. pack output artifacts); what they raise is raised.
    """
    if isinstance(commands, str | bytes):
        raise TypeError("commands must be a sequence of command strings, not a single string")
    if tail_bytes < 0:
        raise ValueError("tail_bytes must be >= 0")
    if kill_grace_s < 0:
        raise ValueError("kill_grace_s must be >= 0")
    if cwd is not None:
        _check_dir(cwd)

    started = time.monotonic()
    tail = _TailBuffer(tail_bytes)
    if not commands:
        return CommandsResult(True, None, None, False, "", time.monotonic() - started, 0)
    shell = shell or pick_shell()
    run_dir = make_run_dir(user, run_base)
    try:
        if prepare is not None:
            await prepare(cwd or run_dir.workspace)
        result = await _run_session(
            commands,
            env=env,
            timeout_s=timeout_s,
            cwd=cwd,
            tail=tail,
            kill_grace_s=kill_grace_s,
            user=user,
            output=output,
            shell=shell,
            run_dir=run_dir,
            started=started,
            container=container,
            output_variables=output_variables,
        )
        if collect is not None:
            await collect(cwd or run_dir.workspace, result)
        return result
    finally:
        remove_run_dir(run_dir)


def _check_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"working directory {path!r} does not exist")


def _write_script(
    run_dir: RunDir,
    commands: Sequence[str],
    user: ActionUser | None,
    nonce: str,
    output_variables: Sequence[str] = (),
) -> tuple[str, str]:
    status_path = os.path.join(run_dir.root, _STATUS_FILE)
    script_path = os.path.join(run_dir.root, _SCRIPT_FILE)
    outputs_path = os.path.join(run_dir.root, _OUTPUTS_FILE)
    for path in (status_path, outputs_path):
        with open(path, "wb"):
            pass
    with open(script_path, "w") as f:
        f.write(session_script(commands, status_path, nonce, outputs_path, output_variables))
    os.chmod(script_path, 0o444)
    if user is not None:
        os.chown(status_path, user.uid, user.gid)
        os.chown(outputs_path, user.uid, user.gid)
    return status_path, script_path


def read_outputs(path: str, names: Sequence[str]) -> dict[str, str]:
    """The ``name NUL value NUL`` pairs the session wrote (only names asked for; the last
    value of a name wins; values decoded as UTF-8 with replacement)."""
    try:  # the action user could have swapped the file for a link: never follow one
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(4 * OUTPUT_VARIABLES_MAX_CHARS + 65536)
    except OSError:
        return {}
    fields = data.split(b"\0")
    wanted = set(names)
    out: dict[str, str] = {}
    for i in range(0, len(fields) - 1, 2):
        name = fields[i].decode("utf-8", errors="replace")
        if name in wanted:
            out[name] = fields[i + 1].decode("utf-8", errors="replace")
    return out


async def _run_session(
    commands: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    timeout_s: float | None,
    cwd: str | None,
    tail: _TailBuffer,
    kill_grace_s: float,
    user: ActionUser | None,
    output: OutputSink | None,
    shell: str,
    run_dir: RunDir,
    started: float,
    container: Container | None = None,
    output_variables: Sequence[str] = (),
) -> CommandsResult:
    nonce = secrets.token_hex(8)
    status_path, script_path = _write_script(run_dir, commands, user, nonce, output_variables)
    full_env = base_environment(run_dir.home, run_dir.tmp, user, shell)
    if env:
        full_env.update(env)
    status = _Status(status_path, commands)
    demux = _Demux(nonce, commands, tail, output)
    returncode: int | None = None

    deadline = math.inf if timeout_s is None else anyio.current_time() + timeout_s
    workdir = cwd or run_dir.workspace
    argv: list[str] = [shell, script_path]
    launch_env: Mapping[str, str] = full_env
    name = f"stageline-{nonce}"
    if container is not None:
        if not (env and "SHELL" in env):
            full_env["SHELL"] = "/bin/sh"  # the image's shell, not the host's
        uid, gid = (user.uid, user.gid) if user is not None else (os.getuid(), os.getgid())
        argv, launch_env = container.command(
            name=name, script=script_path, env=full_env, cwd=workdir, mount=run_dir.root,
            uid=uid, gid=gid,
        )  # fmt: skip
    with anyio.CancelScope(deadline=deadline) as timeout_scope:
        try:
            returncode = await _run_shell(
                argv,
                env=launch_env,
                cwd=workdir,
                demux=demux,
                kill_grace_s=kill_grace_s,
                user=user if container is None else None,  # the CLI runs as the worker
            )
        finally:
            if container is not None:
                with anyio.CancelScope(shield=True):
                    await container.remove(name)
    demux.finish()
    status.poll()
    timed_out = timeout_scope.cancelled_caught
    index = status.started
    failed_command = commands[index - 1] if index else None
    if timed_out:
        return CommandsResult(
            succeeded=False,
            exit_code=None,
            failed_command=failed_command,
            timed_out=True,
            output_tail=tail.text(),
            duration_s=time.monotonic() - started,
            commands_run=index,
            failed_index=index or None,
        )
    assert returncode is not None
    if returncode == 0:
        return CommandsResult(
            succeeded=True,
            exit_code=0,
            failed_command=None,
            timed_out=False,
            output_tail=tail.text(),
            duration_s=time.monotonic() - started,
            commands_run=index,
            output_variables=read_outputs(
                os.path.join(run_dir.root, _OUTPUTS_FILE), output_variables
            )
            if output_variables
            else None,
        )
    # A command's own status when the script recorded it, else the shell's (it ended the
    # shell: `exit 3`, `set -e`, a signal).
    code = status.ended.get(index, returncode) if index else returncode
    if returncode < 0:
        code = returncode
    return CommandsResult(
        succeeded=False,
        exit_code=code,
        failed_command=failed_command,
        timed_out=False,
        output_tail=tail.text(),
        duration_s=time.monotonic() - started,
        commands_run=index,
        failed_index=index or None,
    )


async def _run_shell(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    demux: _Demux,
    kill_grace_s: float,
    user: ActionUser | None,
) -> int:
    extra: dict[str, object] = {}
    if user is not None:
        extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
    # Shielded: a cancellation landing while open_process awaits the pipes' setup would lose
    # the process object of a child that is already running (and never kill it).
    # The script waits for a "go" line on stdin before it runs anything: should spawning be
    # interrupted (a cancellation while open_process sets up the pipes), the half-started
    # shell is killed by asyncio before it could start a command we would never see.
    with anyio.CancelScope(shield=True):
        process = await _open(argv, env, cwd, extra)
        assert process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.send(b"go\n")
        await process.stdin.aclose()
    pgid = process.pid  # setsid() made the shell the leader of a fresh process group
    stdout = process.stdout
    assert stdout is not None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, stdout, demux)
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
                await _pump(stdout, demux)
            await process.aclose()


async def _open(
    argv: list[str], env: Mapping[str, str], cwd: str, extra: dict[str, object]
) -> anyio.abc.Process:
    return await anyio.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        **extra,  # type: ignore[arg-type]
    )


async def _pump(stream: ByteReceiveStream, demux: _Demux) -> None:
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        async for chunk in stream:
            demux.feed(chunk)


class _Demux:
    """Splits the session's output into the commands' own bytes (to the tail and the sink)
    and the script's marker lines (to the sink as "Running command i" notes)."""

    _MAX_CARRY = 128

    def __init__(
        self, nonce: str, commands: Sequence[str], tail: _TailBuffer, output: OutputSink | None
    ) -> None:
        self.marker = f"\036stageline-{nonce} ".encode()
        self.commands = commands
        self.tail = tail
        self.output = output
        self.carry = b""

    def _emit(self, data: bytes) -> None:
        if data:
            self.tail.append(data)
            if self.output is not None:
                self.output.write(data)

    def _note(self, raw: bytes) -> None:
        try:
            i = int(raw)
        except ValueError:
            return
        if self.output is not None and 1 <= i <= len(self.commands):
            text = _short(self.commands[i - 1], _NOTE_COMMAND_CHARS)
            self.output.note(f"Running command {i}: {text}")

    def feed(self, chunk: bytes) -> None:
        data = self.carry + chunk if self.carry else chunk
        self.carry = b""
        while data:
            if b"\036" not in data:
                self._emit(data)
                return
            at = data.find(self.marker)
            if at < 0:
                j = data.rfind(b"\036")
                rest = data[j:]
                if len(rest) < len(self.marker) and self.marker.startswith(rest):
                    self._emit(data[:j])  # maybe the start of a marker: wait for more
                    self.carry = rest
                else:
                    self._emit(data)
                return
            end = data.find(b"\n", at)
            if end < 0:
                self._emit(data[:at])
                if len(data) - at <= self._MAX_CARRY:
                    self.carry = data[at:]  # the rest of the marker line is still coming
                else:
                    self._emit(data[at:])
                return
            self._emit(data[:at])
            self._note(data[at + len(self.marker) : end])
            data = data[end + 1 :]

    def finish(self) -> None:
        self._emit(self.carry)
        self.carry = b""


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


def _short(command: str, limit: int = _SUMMARY_COMMAND_CHARS) -> str:
    lines = command.strip().splitlines()
    text = lines[0] if lines else ""
    if len(lines) > 1 or len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
