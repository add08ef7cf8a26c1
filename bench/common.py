"""Shared plumbing for the benchmarks: settings per mode, records, processes, a tiny HTTP client.

Nothing here measures anything by itself. Every benchmark module has one ``async def run(ctx)``
that returns a :class:`Record`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mode: str
    actions_n: int  # actions (and arq jobs) per throughput run
    actions_pipelines: int
    actions_per_execution: int
    concurrency: int  # worker concurrency (ours) and the peers' (arq max_jobs ...)
    peer_n: int  # jobs per run of arq / SAQ / taskiq
    arq_default_n: int  # arq at its default settings is slow: fewer jobs
    scale_workers: tuple[int, ...]  # worker processes per ``scale`` run
    history: int  # ``growth``: past executions of the big pipeline
    history_lanes: int  # ``growth``: executions generated at once
    growth_new: int  # ``growth``: new executions started (timed) and run per pipeline
    growth_budget_s: float  # ``growth``: at most this long for running them
    growth_settle_s: float  # ``growth``: at most this long for a worker to work off the history
    growth_cold_runs: int  # ``growth``: cold loads per pipeline (fresh processes)
    retry_requests: int  # RetryStageExecution requests (= failed executions prepared)
    retry_pipelines: int
    http_connections: int
    health_requests: int
    redispatch_samples: int
    replay_events: int
    replay_pipelines: int
    growth_small: int
    growth_big: int
    growth_requests: int
    growth_actions: int
    ceiling_requests: int


QUICK = Settings(
    mode="quick",
    actions_n=3_000,
    actions_pipelines=16,
    actions_per_execution=5,
    concurrency=16,
    peer_n=3_000,
    arq_default_n=1_000,
    scale_workers=(1, 2, 4),
    history=10_000,
    history_lanes=4,
    growth_new=200,
    growth_budget_s=12.0,
    growth_settle_s=120.0,
    growth_cold_runs=3,
    retry_requests=6_000,
    retry_pipelines=64,
    http_connections=32,
    health_requests=12_000,
    redispatch_samples=200,
    replay_events=100_000,
    replay_pipelines=10,
    growth_small=10,
    growth_big=10_000,
    growth_requests=600,
    growth_actions=1,
    ceiling_requests=200_000,
)

FULL = Settings(
    mode="full",
    actions_n=20_000,
    actions_pipelines=16,
    actions_per_execution=5,
    concurrency=16,
    peer_n=10_000,
    arq_default_n=3_000,
    scale_workers=(1, 2, 4),
    history=100_000,
    history_lanes=4,
    growth_new=600,
    growth_budget_s=45.0,
    growth_settle_s=300.0,
    growth_cold_runs=3,
    retry_requests=30_000,
    retry_pipelines=128,
    http_connections=32,
    health_requests=60_000,
    redispatch_samples=1_000,
    replay_events=1_000_000,
    replay_pipelines=50,
    growth_small=10,
    growth_big=10_000,
    growth_requests=3_000,
    growth_actions=2,
    ceiling_requests=1_000_000,
)


# --- records ---------------------------------------------------------------------------------


@dataclass
class Record:
    """One benchmark's result: its figures, the baseline's, the ratio, the target, pass/fail."""

    name: str
    what: str
    unit: str
    value: float | None = None
    baseline: float | None = None
    baseline_what: str | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "what": self.what,
            "unit": self.unit,
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "baseline_what": self.baseline_what,
            "ratio": _round(self.ratio, 3),
            "target": self.target,
            "pass": self.passed,
            "figures": _round_tree(self.figures),
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
            "error": self.error,
        }


def _round(v: float | None, digits: int = 1) -> float | None:
    if v is None:
        return None
    if abs(v) < 10:
        return round(v, max(digits, 4))
    return round(v, digits)


def _round_tree(v: Any) -> Any:
    if isinstance(v, float):
        return _round(v, 3)
    if isinstance(v, dict):
        return {k: _round_tree(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round_tree(x) for x in v]
    return v


def percentiles(
    samples: Sequence[float], points: Sequence[float] = (50, 90, 99)
) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ..., "max": ..., "mean": ...}`` (nearest rank)."""
    s = sorted(samples)
    out: dict[str, float] = {}
    for p in points:
        k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
        out[f"p{p:g}"] = s[k]
    out["max"] = s[-1]
    out["mean"] = statistics.fmean(s)
    return out


# --- the machine -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    redis_version = ""
    binary = shutil.which("redis-server")
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        redis_version = out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version,
    }


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process that prints ``READY <epoch seconds>`` once it is serving."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_at: float | None = None
        self._stderr: list[str] = []
        self.stdout_lines: list[str] = []  # what it printed after READY
        self._tasks: list[asyncio.Future[None]] = []

    async def start(self, wait_s: float = 30.0, word: str = "READY") -> float:
        """Start it and wait for its line starting with ``word``; the time that line gives."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=self.env,
        )
        self._tasks = [asyncio.ensure_future(self._drain_stderr())]
        assert self.proc.stdout is not None
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                await self.stop()
                raise RuntimeError(f"{self.args[:4]} did not get ready: {self.stderr_tail()}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                await self.proc.wait()
                raise RuntimeError(
                    f"{self.args[:4]} exited with {self.proc.returncode}: {self.stderr_tail()}"
                )
            text = line.decode().strip()
            if text.startswith(word):
                parts = text.split()
                self.ready_at = float(parts[1]) if len(parts) > 1 else time.time()
                self._tasks.append(asyncio.ensure_future(self._drain_stdout()))
                return self.ready_at

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.stdout_lines.append(line.decode(errors="replace").strip())
            del self.stdout_lines[:-100]

    async def wait_printed(self, word: str, wait_s: float = 10.0) -> str:
        """Wait for a line starting with ``word`` printed after READY; the rest of it."""
        deadline = time.monotonic() + wait_s
        while (found := self.printed(word)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.args[:4]} printed no {word}: {self.stderr_tail()}")
            await asyncio.sleep(0.01)
        return found

    def printed(self, word: str) -> str | None:
        """The rest of the last line it printed that starts with ``word`` (after stop())."""
        for line in reversed(self.stdout_lines):
            if line.startswith(word + " ") or line == word:
                return line[len(word) :].strip()
        return None

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self._stderr.append(line.decode(errors="replace"))
            del self._stderr[:-40]

    def stderr_tail(self) -> str:
        return "".join(self._stderr[-15:])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def stop(self, wait_s: float = 10.0) -> None:
        p = self.proc
        if p is None or p.returncode is not None:
            return
        p.terminate()
        try:
            await asyncio.wait_for(p.wait(), wait_s)
        except TimeoutError:
            p.kill()
            await p.wait()
        with contextlib.suppress(TimeoutError):  # read what it printed while stopping
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 2.0)


async def run_cmd(args: Sequence[str], limit_s: float = 600.0) -> str:
    """Run a command to completion; its stdout (raises with stderr on failure)."""
    p = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        out, err = await asyncio.wait_for(p.communicate(), limit_s)
    except TimeoutError:
        p.kill()
        await p.wait()
        raise
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({p.returncode}): {err.decode()[-2000:]}")
    return out.decode()


def server_args(redis_url: str, port: int, *, workers: bool = False) -> list[str]:
    """The API server (``serve(ServeConfig(...))``) in its own process."""
    args = [PY, "-m", "bench.procs", "serve", "--redis-url", redis_url, "--port", str(port)]
    if workers:
        args.append("--workers")
    return args


# --- counting Redis commands ---------------------------------------------------------------


def _counting_connection(counts: Counter[str]) -> type[Connection]:
    class CountingConnection(Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            name = args[0]
            text = name.decode() if isinstance(name, bytes) else str(name)
            counts[text.split(" ", 1)[0].lower()] += 1
            return super().pack_command(*args)

    return CountingConnection


def counting_redis(url: str) -> tuple[Redis, Counter[str]]:
    """A client that counts the commands it sends (pipelined ones included), by name.

    Unlike ``INFO commandstats`` this sees only what the client sent: the commands a Lua
    script runs inside Redis are not in it. One server only: see :func:`counting_client`."""
    counts: Counter[str] = Counter()
    return Redis.from_url(url, connection_class=_counting_connection(counts)), counts


async def url_is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster node (as stageline detects it: ``INFO cluster``)."""
    client = Redis.from_url(url)
    try:
        info: Any = await client.info("cluster")
        return int(info.get("cluster_enabled", 0) or 0) == 1
    finally:
        await client.aclose()


async def counting_client(url: str, cluster: bool | None = None) -> tuple[Redis, Counter[str]]:
    """:func:`counting_redis`, or on a Redis Cluster node (``cluster``, detected when None)
    redis-py's cluster client (:class:`redis.asyncio.cluster.RedisCluster`, as
    ``app.store.connection.connect`` makes it) whose connections to every node count the
    same way: each command is counted once per time it is sent, so a command sent again
    after a MOVED/ASK redirection counts twice (as it costs two round trips). The cluster
    client is typed as ``Redis`` (it answers the same commands), as stageline does."""
    if cluster is None:
        cluster = await url_is_cluster(url)
    if not cluster:
        return counting_redis(url)
    from redis.asyncio.cluster import RedisCluster

    from app.store.connection import SOCKET_TIMEOUT_S

    counts: Counter[str] = Counter()
    client: Any = RedisCluster.from_url(url, socket_timeout=SOCKET_TIMEOUT_S)
    # RedisCluster takes no connection_class; every node it discovers is built from these
    # kwargs (the startup nodes already exist: theirs are set too)
    cls = _counting_connection(counts)
    client.connection_kwargs["connection_class"] = cls
    client.nodes_manager.connection_kwargs["connection_class"] = cls
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = cls
    await client.initialize()
    for node in client.get_nodes():
        if node.connection_class is not cls:
            raise RuntimeError(f"cluster node {node.name} does not count its commands")
    result: Redis = client
    return result, counts


async def plain_client(url: str, cluster: bool | None = None) -> Redis:
    """A client for ``url``: ``Redis.from_url``, or the cluster client on a cluster node."""
    if cluster is None:
        cluster = await url_is_cluster(url)
    if not cluster:
        return Redis.from_url(url)
    from app.store.connection import connect

    return await connect(url)


def redis_host_port(url: str) -> tuple[str, int]:
    """Host and port of a ``redis://`` URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


# --- HTTP --------------------------------------------------------------------------------------

TARGET = "CodePipeline_20150709."


class HttpClient:
    """A minimal keep-alive HTTP/1.1 client for sequential latency measurements.

    One request at a time on one connection; the time a request takes is what the caller
    measures around :meth:`post` / :meth:`get` (client overhead included, a few µs).
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def _request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def post(self, operation: str, body: dict[str, Any] | bytes) -> tuple[int, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        raw = (
            f"POST / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"X-Amz-Target: {TARGET}{operation}\r\n"
            "Content-Type: application/x-amz-json-1.1\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        return await self._request(raw)

    async def get(self, path: str) -> tuple[int, bytes]:
        raw = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
        return await self._request(raw)


async def wait_port(port: int, wait_s: float = 20.0) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
