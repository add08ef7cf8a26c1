"""HTTP load: ``wrk`` (Debian's package) when installed, else a small asyncio client.

Bounded by request count (and a time limit), loopback only. Both report requests/s and
latency percentiles in milliseconds, plus error counts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH, HttpClient, percentiles

WRK_SCRIPT = BENCH / "wrk.lua"


def loader() -> str:
    return "wrk" if shutil.which("wrk") else "python-asyncio"


async def run_load(
    port: int,
    *,
    count: int,
    connections: int,
    requests: list[tuple[str, bytes]] | None = None,
    workdir: Path,
    time_limit_s: int = 120,
) -> dict[str, Any]:
    """``count`` requests over ``connections`` keep-alive connections.

    ``requests``: (operation, body) for POST, each used once (needs ``count + connections``
    of them); None: ``GET /health``.
    """
    if shutil.which("wrk"):
        return await _wrk(port, count, connections, requests, workdir, time_limit_s)
    return await _python(port, count, connections, requests)


async def _wrk(
    port: int,
    count: int,
    connections: int,
    requests: list[tuple[str, bytes]] | None,
    workdir: Path,
    time_limit_s: int,
) -> dict[str, Any]:
    marker = workdir / "wrk-done"
    marker.unlink(missing_ok=True)
    args = ["post" if requests else "health", str(count), str(marker)]
    if requests:
        f = workdir / "wrk-bodies.txt"
        with f.open("wb") as out:
            for op, body in requests:
                out.write(op.encode() + b"\t" + body + b"\n")
        args.append(str(f))
    p = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{time_limit_s}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}", "--", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    deadline = time.monotonic() + time_limit_s + 5
    while p.returncode is None and not marker.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a file wrk writes)
        await asyncio.sleep(0.002)
    if p.returncode is None:
        p.send_signal(signal.SIGINT)  # wrk stops and reports the time actually elapsed
    out, err = await p.communicate()
    line = next((x for x in out.decode().splitlines() if x.startswith("{")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {err.decode()[-1000:]} {out.decode()}")
    r = json.loads(line)
    secs = r["duration_us"] / 1e6
    errors = sum(v for k, v in r.items() if k.startswith("errors_"))
    return {
        "loader": "wrk",
        "connections": connections,
        "requests": r["requests"],
        "seconds": secs,
        "rps": r["requests"] / secs,
        "errors": errors,
        "errors_status": r["errors_status"],
        "p50_ms": r["lat_p50_us"] / 1000,
        "p90_ms": r["lat_p90_us"] / 1000,
        "p99_ms": r["lat_p99_us"] / 1000,
        "p999_ms": r["lat_p999_us"] / 1000,
        "max_ms": r["lat_max_us"] / 1000,
        "mean_ms": r["lat_mean_us"] / 1000,
    }


async def _python(
    port: int, count: int, connections: int, requests: list[tuple[str, bytes]] | None
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    it = iter(requests or [])
    left = count

    async def one_connection() -> None:
        nonlocal errors, left
        client = HttpClient(port)
        await client.connect()
        try:
            while left > 0:
                left -= 1
                t = time.perf_counter()
                if requests:
                    op, body = next(it)
                    status, _ = await client.post(op, body)
                else:
                    status, _ = await client.get("/health")
                latencies.append(time.perf_counter() - t)
                if not 200 <= status < 300:
                    errors += 1
        finally:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[one_connection() for _ in range(connections)])
    secs = time.perf_counter() - t0
    pc = percentiles(latencies, (50, 90, 99, 99.9))
    return {
        "loader": "python-asyncio",
        "connections": connections,
        "requests": len(latencies),
        "seconds": secs,
        "rps": len(latencies) / secs,
        "errors": errors,
        "errors_status": errors,
        "p50_ms": pc["p50"] * 1000,
        "p90_ms": pc["p90"] * 1000,
        "p99_ms": pc["p99"] * 1000,
        "p999_ms": pc["p99.9"] * 1000,
        "max_ms": pc["max"] * 1000,
        "mean_ms": pc["mean"] * 1000,
    }
