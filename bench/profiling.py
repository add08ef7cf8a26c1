"""Optional py-spy profiles of the processes under test (``python -m bench --profile``).

py-spy samples a running process from outside (no code change, negligible overhead), so the
same benchmark run is also the profile. Output: collapsed stacks (``*.txt``, flamegraph
input) in ``bench/results/profiles/`` and a short summary (top functions by inclusive and
self time) that ``docs/benchmarks.md`` quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from bench.context import Ctx, profile_dir


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def spy(ctx: Ctx, pid: int | None, name: str, *, rate: int = 200) -> AsyncIterator[None]:
    """Sample ``pid`` while the block runs (only with ``--profile`` and py-spy installed)."""
    binary = py_spy()
    if not ctx.profile or binary is None or pid is None:
        yield
        return
    out = profile_dir() / f"{name}.txt"
    p = await asyncio.create_subprocess_exec(
        binary, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.3)  # py-spy attaches
    try:
        yield
    finally:
        if p.returncode is None:
            p.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(p.wait(), 20)
            except TimeoutError:
                p.kill()
                await p.wait()
        if out.exists():
            (profile_dir() / f"{name}.summary.txt").write_text(summarize(out))
            ctx.log(f"profile: {out}")


def _frame(f: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = f.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


def summarize(path: Path, top: int = 25) -> str:
    """Top functions by inclusive and by self samples, from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    selfs: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        selfs[frames[-1]] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "inclusive %  function"]
    for f, n in inclusive.most_common(top):
        lines.append(f"{100 * n / total:10.1f}  {f}")
    lines += ["", "self %      function"]
    for f, n in selfs.most_common(top):
        lines.append(f"{100 * n / total:10.1f}  {f}")
    return "\n".join(lines) + "\n"
