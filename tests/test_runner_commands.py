"""Tests for the Compute/AWS/Commands runner (workers.runners.commands)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import anyio
import pytest

from workers.runners.commands import CommandsResult, _TailBuffer, run_commands

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- helpers


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


async def _assert_gone(pid: int, within_s: float = 10.0) -> None:
    """Wait until ``os.kill(pid, 0)`` raises ProcessLookupError.

    The patience is generous on purpose: what is tested is that the process dies, and on a
    loaded two-core machine a killed process can take a while to be reaped.

    An orphaned grandchild is reparented to init, and a minimal container init may take a while
    to reap it, so an unreaped zombie (dead, holding nothing but its pid) also counts as gone.
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _is_zombie(pid):
            return
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        await anyio.sleep(0.01)


def _pid_file_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


async def _read_pid(path: Path, within_s: float = 5.0) -> int:
    deadline = time.monotonic() + within_s
    while True:
        text = _pid_file_text(path)
        if text.isdigit():
            return int(text)
        assert time.monotonic() < deadline, f"{path} never written"
        await anyio.sleep(0.01)


def _bg_and_wait(tmp_path: Path) -> tuple[str, Path, Path]:
    """A command that backgrounds a long sleep (the grandchild) and then blocks itself."""
    bg, leader = tmp_path / "bg.pid", tmp_path / "leader.pid"
    return f"echo $$ > {leader}; sleep 1000 & echo $! > {bg}; sleep 1000", bg, leader


# --------------------------------------------------------------------------- success paths


async def test_several_commands_succeed() -> None:
    result = await run_commands(["echo one", "echo two >&2", "echo three"], timeout_s=5)
    assert isinstance(result, CommandsResult)
    assert result.succeeded
    assert result.exit_code == 0
    assert result.failed_command is None
    assert not result.timed_out
    assert result.error_code() is None
    assert result.commands_run == 3
    assert result.summary() == "3 commands succeeded"
    assert result.output_tail == "one\ntwo\nthree\n"
    assert 0 <= result.duration_s < 5


async def test_single_and_empty_summaries() -> None:
    assert (await run_commands(["true"], timeout_s=5)).summary() == "1 command succeeded"
    empty = await run_commands([], timeout_s=5)
    assert empty.succeeded and empty.exit_code is None and empty.summary() == "no commands to run"


async def test_env_is_minimal_plus_action_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's environment is never inherited (it holds the deployment's secrets).
    monkeypatch.setenv("STAGELINE_WORKER_VAR", "from-worker")
    monkeypatch.setenv("STAGELINE_OVERRIDDEN", "worker-value")
    result = await run_commands(
        [
            'echo "$STAGELINE_ACTION_VAR|$STAGELINE_WORKER_VAR|$STAGELINE_OVERRIDDEN"',
            "env | cut -d= -f1 | sort | tr '\\n' ' '",
        ],
        env={"STAGELINE_ACTION_VAR": "hello world", "STAGELINE_OVERRIDDEN": "action-value"},
        timeout_s=5,
    )
    assert result.succeeded, result
    first, names = result.output_tail.split("\n", 1)
    assert first == "hello world||action-value"
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD"}
    allowed |= {"SHLVL", "_", "STAGELINE_ACTION_VAR", "STAGELINE_OVERRIDDEN"}
    assert set(names.split()) <= allowed, names
    assert os.environ["STAGELINE_OVERRIDDEN"] == "worker-value"  # caller's env untouched


async def test_private_home_and_tmpdir_are_removed_afterwards(tmp_path: Path) -> None:
    where = tmp_path / "where"
    result = await run_commands(
        [f'echo "$HOME $TMPDIR $(pwd)" > {where}', 'touch "$HOME/x" "$TMPDIR/y" z'], timeout_s=5
    )
    assert result.succeeded, result
    home, tmp, cwd = where.read_text().split()
    assert os.path.dirname(home) == os.path.dirname(tmp) == os.path.dirname(cwd)
    assert not Path(home).parent.exists()


async def test_commands_share_one_shell_session(tmp_path: Path) -> None:
    result = await run_commands(
        [
            "pwd",
            f"mkdir -p {tmp_path}/sub && cd {tmp_path}/sub && export X=1 Y='a b'",
            'pwd; echo "X=$X Y=$Y"',
            'test "$(pwd)" = ' + f"{tmp_path}/sub",
            "greet() { echo \"hello $1\"; }",
            "greet world",
            "set -u",
            "(echo $UNSET_VARIABLE) 2>/dev/null || echo nounset carried over",
        ],
        cwd=str(tmp_path),
        timeout_s=5,
    )
    assert result.succeeded, result
    assert result.output_tail == (
        f"{tmp_path}\n{tmp_path}/sub\nX=1 Y=a b\nhello world\nnounset carried over\n"
    )
    assert result.commands_run == 8


@pytest.mark.skipif(not shutil.which("bash"), reason="bash is not installed")
async def test_bash_is_the_shell_where_installed() -> None:
    result = await run_commands(
        ["[[ 1 == 1 ]] && echo double-brackets", "shopt -s extglob", "echo ${BASH_VERSION%%.*}"],
        timeout_s=5,
    )
    assert result.succeeded, result
    assert result.output_tail.startswith("double-brackets\n")


async def test_multiline_commands_and_quotes_survive() -> None:
    result = await run_commands(
        ["for i in 1 2; do\n  echo \"it's $i\"\ndone", "cat <<'EOF'\n'quoted' $HOME\nEOF"],
        timeout_s=5,
    )
    assert result.succeeded, result
    assert result.output_tail == "it's 1\nit's 2\n'quoted' $HOME\n"


async def test_failure_names_command_index_and_code() -> None:
    result = await run_commands(["true", "false", "echo never"], timeout_s=5)
    assert result.failed_index == 2 and result.failed_command == "false"
    assert result.exit_code == 1 and result.commands_run == 2
    assert result.summary() == "command 2 'false' exited with 1"
    # set -e ends the shell inside a command: still named, with its status
    errexit = await run_commands(["set -e", "echo a; (exit 4); echo b", "echo c"], timeout_s=5)
    assert errexit.failed_index == 2 and errexit.exit_code == 4
    assert errexit.output_tail == "a\n"
    # a syntax error in one command is that command's failure, not the script's
    syntax = await run_commands(["echo ok", "if then fi (", "echo never"], timeout_s=5)
    assert not syntax.succeeded and syntax.failed_index == 2, syntax
    assert syntax.output_tail.startswith("ok\n")


async def test_stdin_is_dev_null() -> None:
    # `cat` would block forever on an inherited terminal/pipe; /dev/null gives immediate EOF.
    result = await run_commands(["cat", "read line || echo eof"], timeout_s=5)
    assert result.succeeded
    assert result.output_tail == "eof\n"


# --------------------------------------------------------------------------- failures


async def test_stops_at_first_failure(tmp_path: Path) -> None:
    marker = tmp_path / "should-not-exist"
    result = await run_commands(
        ["echo before", "echo boom >&2; exit 3", f"touch {marker}"], timeout_s=5
    )
    assert not result.succeeded
    assert not marker.exists()
    assert result.exit_code == 3
    assert result.failed_command == "echo boom >&2; exit 3"
    assert result.commands_run == 2
    assert not result.timed_out
    assert result.error_code() == "CommandFailed"
    assert result.summary() == "command 2 'echo boom >&2; exit 3' exited with 3"
    assert result.output_tail == "before\nboom\n"


async def test_exit_code_reported_for_failing_program() -> None:
    result = await run_commands(["sh -c 'exit 42'"], timeout_s=5)
    assert result.exit_code == 42
    assert result.summary() == "command 1 'sh -c 'exit 42'' exited with 42"
    missing = await run_commands(["definitely-not-a-command-xyz"], timeout_s=5)
    assert missing.exit_code == 127
    assert "not found" in missing.output_tail


async def test_killed_by_signal() -> None:
    result = await run_commands(["kill -9 $$"], timeout_s=5)
    assert not result.succeeded
    assert result.exit_code == -9
    assert result.error_code() == "CommandFailed"
    assert result.summary() == "command 1 'kill -9 $$' was killed by signal SIGKILL"


async def test_long_command_is_shortened_in_summary() -> None:
    command = "false # " + "x" * 200 + "\nexit 1"
    result = await run_commands([command], timeout_s=5)
    assert result.failed_command == command
    summary = result.summary()
    assert len(summary) < 100 and "…" in summary and "\n" not in summary


# --------------------------------------------------------------------------- output tail


async def test_output_tail_is_bounded() -> None:
    result = await run_commands(
        [
            "head -c 1000000 /dev/zero | tr '\\0' x; echo",
            "echo on-stderr >&2; echo LAST-LINE",
        ],
        timeout_s=10,
    )
    assert result.succeeded
    assert len(result.output_tail.encode()) <= 4096
    assert result.output_tail.endswith("xxx\non-stderr\nLAST-LINE\n")


async def test_output_tail_custom_size_and_zero() -> None:
    result = await run_commands(["seq 1 100000"], timeout_s=10, tail_bytes=10)
    assert result.output_tail == "99\n100000\n"
    assert (await run_commands(["seq 1 1000"], timeout_s=5, tail_bytes=0)).output_tail == ""


def test_tail_buffer_memory_stays_bounded() -> None:
    buf = _TailBuffer(100)
    for i in range(10_000):
        buf.append(b"%d\n" % i)
        assert len(buf._buf) <= 200 + 8
    buf.append(b"y" * 1_000_000)
    assert len(buf._buf) == 100
    assert buf.text() == "y" * 100


async def test_invalid_and_multibyte_output_does_not_crash() -> None:
    # \377\376 are never valid UTF-8; é is \303\251.
    result = await run_commands(
        ["printf 'bad:\\377\\376 ok:h\\303\\251llo \\342\\234\\223\\n'"], timeout_s=5
    )
    assert result.succeeded
    assert result.output_tail == "bad:\ufffd\ufffd ok:héllo ✓\n"


async def test_tail_cut_inside_multibyte_char_is_clean() -> None:
    # 5000 x "é" (2 bytes each); a 101-byte tail starts in the middle of one.
    result = await run_commands(
        ["i=0; while [ $i -lt 5000 ]; do printf '\\303\\251'; i=$((i+1)); done"],
        timeout_s=10,
        tail_bytes=101,
    )
    assert result.succeeded
    assert result.output_tail == "é" * 50


# --------------------------------------------------------------------------- timeout


async def test_timeout_kills_whole_process_group(tmp_path: Path) -> None:
    command, bg_file, leader_file = _bg_and_wait(tmp_path)
    started = time.monotonic()
    result = await run_commands(["echo starting", command], timeout_s=0.5, kill_grace_s=1.0)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert not result.succeeded
    assert result.exit_code is None
    assert result.failed_command == command
    assert result.commands_run == 2
    assert result.error_code() == "Timeout"
    assert result.summary().startswith("timed out after 0.")
    assert result.output_tail == "starting\n"
    assert elapsed < 1.4  # SIGTERM was enough: no need to wait out the grace period
    await _assert_gone(await _read_pid(bg_file))
    await _assert_gone(await _read_pid(leader_file))


async def test_timeout_covers_whole_list() -> None:
    result = await run_commands(["sleep 0.3", "sleep 0.3", "sleep 0.3"], timeout_s=0.5)
    assert result.timed_out
    assert result.commands_run == 2
    assert result.failed_command == "sleep 0.3"
    assert 0.5 <= result.duration_s < 1.5


async def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    command, bg_file, leader_file = _bg_and_wait(tmp_path)
    started = time.monotonic()
    result = await run_commands([f"trap '' TERM; {command}"], timeout_s=0.3, kill_grace_s=0.3)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert 0.6 <= elapsed < 2.5  # waited the grace period, then SIGKILL
    await _assert_gone(await _read_pid(bg_file))
    await _assert_gone(await _read_pid(leader_file))


async def test_background_leftovers_are_reaped_after_success(tmp_path: Path) -> None:
    bg_file = tmp_path / "bg.pid"
    started = time.monotonic()
    # The leftover `sleep` keeps the output pipe open: the runner must not wait for it.
    result = await run_commands([f"sleep 1000 & echo $! > {bg_file}; echo done"], timeout_s=5)
    assert result.succeeded
    assert result.output_tail == "done\n"
    assert time.monotonic() - started < 2
    await _assert_gone(await _read_pid(bg_file))


# --------------------------------------------------------------------------- cancellation


async def test_anyio_cancellation_kills_group_and_propagates(tmp_path: Path) -> None:
    command, bg_file, leader_file = _bg_and_wait(tmp_path)
    seen_cancel = False
    finished_normally = False

    async def victim() -> None:
        nonlocal seen_cancel, finished_normally
        try:
            await run_commands([command], timeout_s=None, kill_grace_s=1.0)
        except anyio.get_cancelled_exc_class():
            seen_cancel = True
            raise
        finished_normally = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(victim)
        bg_pid = await _read_pid(bg_file)
        leader_pid = await _read_pid(leader_file)
        tg.cancel_scope.cancel()

    assert seen_cancel
    assert not finished_normally
    await _assert_gone(bg_pid)
    await _assert_gone(leader_pid)


async def test_asyncio_task_cancel_kills_group_and_propagates(tmp_path: Path) -> None:
    command, bg_file, leader_file = _bg_and_wait(tmp_path)
    task = asyncio.create_task(run_commands([command], timeout_s=None, kill_grace_s=1.0))
    bg_pid = await _read_pid(bg_file)
    leader_pid = await _read_pid(leader_file)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_gone(bg_pid)
    await _assert_gone(leader_pid)


async def test_outer_deadline_is_cancellation_not_timeout(tmp_path: Path) -> None:
    command, bg_file, _ = _bg_and_wait(tmp_path)
    with anyio.move_on_after(0.3) as scope:
        await run_commands([command], timeout_s=10, kill_grace_s=1.0)
        pytest.fail("cancellation was swallowed")
    assert scope.cancelled_caught
    await _assert_gone(await _read_pid(bg_file))


# --------------------------------------------------------------------------- argument checks


async def test_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        await run_commands("echo hi", timeout_s=1)
    with pytest.raises(ValueError):
        await run_commands(["true"], timeout_s=1, tail_bytes=-1)
    with pytest.raises(ValueError):
        await run_commands(["true"], timeout_s=1, kill_grace_s=-1)


async def test_missing_cwd_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await run_commands(["true"], timeout_s=1, cwd=str(tmp_path / "nope"))


# --------------------------------------------------------------------------- output sink


class _Sink:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes | str]] = []

    def write(self, data: bytes) -> None:
        if self.items and self.items[-1][0] == "out":
            self.items[-1] = ("out", bytes(self.items[-1][1]) + data)  # type: ignore[arg-type]
        else:
            self.items.append(("out", data))

    def note(self, text: str) -> None:
        self.items.append(("note", text))


async def test_sink_gets_all_output_with_command_notes_in_place() -> None:
    sink = _Sink()
    result = await run_commands(
        ["printf no-newline", "echo a; echo b >&2", "true"], timeout_s=5, output=sink
    )
    assert result.succeeded, result
    assert sink.items == [
        ("note", "Running command 1: printf no-newline"),
        ("out", b"no-newline"),
        ("note", "Running command 2: echo a; echo b >&2"),
        ("out", b"a\nb\n"),
        ("note", "Running command 3: true"),
    ]
    assert result.output_tail == "no-newlinea\nb\n"  # markers never reach the tail


def test_demux_finds_markers_split_across_chunks() -> None:
    from workers.runners.commands import _Demux

    sink, tail = _Sink(), _TailBuffer(1000)
    demux = _Demux("abc", ["one", "two"], tail, sink)
    stream = b"x\n\036stageline-abc 1\nout1\n\036not-a-marker\n\036stageline-abc 2\nend"
    for i in range(len(stream)):  # one byte at a time: the worst split
        demux.feed(stream[i : i + 1])
    demux.finish()
    assert sink.items == [
        ("out", b"x\n"),
        ("note", "Running command 1: one"),
        ("out", b"out1\n\036not-a-marker\n"),
        ("note", "Running command 2: two"),
        ("out", b"end"),
    ]
    assert tail.text() == "x\nout1\n\036not-a-marker\nend"
