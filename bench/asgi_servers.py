"""``python -m bench.asgi_servers [SECONDS]``: requests/s of the API under each ASGI server.

The app is the real wire layer (:func:`app.api.wire.build_app`: routing, JSON 1.1, body
checks) with an in-memory ``GetPipelineState`` handler, so the figures are the HTTP server's
and the wire layer's cost, not Redis'. Each server runs as its own process with one worker;
``wrk`` (one thread, 16 keep-alive connections) drives ``GET /health`` and a
``POST / GetPipelineState`` for SECONDS each (default 5). Prints one table row per server.
Needs ``wrk`` on PATH and uvicorn, httptools, hypercorn and granian installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.api.wire import build_app

ROOT = Path(__file__).resolve().parent.parent


async def _state(req: Any, ctx: Any) -> dict[str, Any]:
    return {"pipelineName": req.name, "pipelineVersion": 1, "stageStates": []}


app = build_app({"GetPipelineState": _state})

POST_LUA = """
wrk.method = "POST"
wrk.body = '{"name":"demo"}'
wrk.headers["X-Amz-Target"] = "CodePipeline_20150709.GetPipelineState"
wrk.headers["Content-Type"] = "application/x-amz-json-1.1"
"""


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _servers(port: int) -> dict[str, list[str]]:
    py = sys.executable
    target = "bench.asgi_servers:app"
    return {
        "uvicorn (h11)": [py, "-m", "uvicorn", target, "--http", "h11", "--port", str(port),
                          "--log-level", "warning", "--no-access-log"],
        "uvicorn (httptools)": [py, "-m", "uvicorn", target, "--http", "httptools",
                                "--port", str(port), "--log-level", "warning",
                                "--no-access-log"],
        "hypercorn (h11)": [py, "-m", "hypercorn", target, "-b", f"127.0.0.1:{port}",
                            "--log-level", "warning"],
        "granian (asgi, 1 worker)": [py, "-m", "granian", "--interface", "asgi",
                                     "--host", "127.0.0.1", "--port", str(port),
                                     "--workers", "1", "--log-level", "warning", target],
    }  # fmt: skip


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def _wrk(url: str, seconds: int, script: str | None) -> float:
    args = ["wrk", "-t1", "-c16", f"-d{seconds}s", url]
    if script:
        args[1:1] = ["-s", script]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m is None or non2xx is not None:
        raise RuntimeError(f"wrk: unexpected output:\n{out}")
    return float(m[1])


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(POST_LUA)
        lua = f.name
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| server | GET /health (req/s) | POST GetPipelineState (req/s) |")
    print("|---|---|---|")
    try:
        for name, cmd in _servers(_port()).items():
            port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else None
            if port is None:
                port = int(cmd[cmd.index("-b") + 1].rsplit(":", 1)[1])
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
            try:
                _wait(port, proc)
                health = _wrk(f"http://127.0.0.1:{port}/health", seconds, None)
                post = _wrk(f"http://127.0.0.1:{port}/", seconds, lua)
                print(f"| {name} | {health:,.0f} | {post:,.0f} |", flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        os.unlink(lua)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
