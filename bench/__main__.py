"""``python -m bench [--quick|--full] [--out FILE] [--only a,b] [--history N] [--profile]
[--redis-url URL | --cluster [MASTERS] [--both]]``

Starts a private ``redis-server`` on a free port (or, with ``--cluster``, a private Redis
Cluster, with ``--both`` a server and a cluster side by side; with ``--redis-url``, uses that
server or cluster node), runs every benchmark
against it (each with its baseline, in the same run, on the same server), writes one JSON
file and prints a table.
See ``docs/benchmarks.md`` for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import FULL, QUICK, ROOT, Record, machine, url_is_cluster
from bench.context import Ctx

BENCHMARKS = [
    "xadd_ceiling",
    "actions",
    "scale",
    "growth",
    "retry_api",
    "redispatch",
    "idle",
    "replay",
    "memory",
    "state_growth",
]


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "app", "workers"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return ""


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.3g}"
    return f"{s} {unit}".strip()


def table(records: list[Record]) -> str:
    rows = [("benchmark", "stageline", "baseline", "ratio", "target", "result")]
    for r in records:
        verdict = "ERROR" if r.error else {True: "pass", False: "FAIL", None: "report"}[r.passed]
        rows.append(
            (
                r.name,
                _fmt(r.value, r.unit),
                _fmt(r.baseline, r.unit) if r.baseline is not None else "-",
                f"{r.ratio:.2f}" if r.ratio is not None else "-",
                r.target,
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def main_async(a: argparse.Namespace) -> tuple[dict[str, Any], list[Record]]:
    from tests.redis_cluster import RedisClusterServer
    from tests.redis_server import RedisServer

    settings = FULL if a.full else QUICK
    if a.history is not None:
        settings = dataclasses.replace(settings, history=a.history)
    only = [x.strip() for x in a.only.split(",")] if a.only else BENCHMARKS
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="stageline-bench-") as tmp:
        server: RedisServer | None = None
        cluster_server: RedisClusterServer | None = None
        targets: list[dict[str, Any]] = []
        ctxs: list[tuple[str, Ctx]] = []  # (suffix of the records' names, context)
        try:
            if a.redis_url:
                cluster = await url_is_cluster(a.redis_url)
                kind = "external " + ("cluster" if cluster else "server")
                targets.append({"kind": kind, "url": a.redis_url})
                ctxs.append(("", Ctx(settings=settings, redis_port=0, workdir=Path(tmp),
                                     profile=a.profile, external_url=a.redis_url,
                                     cluster=cluster)))  # fmt: skip
            if not a.redis_url and (a.cluster is None or a.both):
                server = RedisServer(Path(tmp) / "redis")
                server.start()
                targets.append({"kind": "private redis-server", "url": server.url})
                ctxs.append(("", Ctx(settings=settings, redis_port=server.port,
                                     workdir=Path(tmp) / "single", profile=a.profile)))  # fmt: skip
            if a.cluster is not None:
                cluster_server = RedisClusterServer(Path(tmp) / "cluster", masters=a.cluster)
                cluster_server.start()
                url = cluster_server.url
                targets.append({"kind": "private Redis Cluster", "masters": a.cluster, "url": url})
                ctxs.append(("@cluster" if a.both else "",
                             Ctx(settings=settings, redis_port=0, workdir=Path(tmp) / "cluster",
                                 profile=a.profile, external_url=url, cluster=True)))  # fmt: skip
            for target in targets:
                ctxs[0][1].log(f"{target['kind']} {target['url']} (flushed before each benchmark)")
            records: list[Record] = []
            for name in [b for b in BENCHMARKS if b in only]:
                mod = importlib.import_module(f"bench.{name}")
                for suffix, ctx in ctxs:  # --both: the same benchmark on each, one after the other
                    ctx.workdir.mkdir(parents=True, exist_ok=True)
                    ctx.log(f"{name}{suffix}: start")
                    t = time.monotonic()
                    try:
                        rec: Record = await mod.run(ctx)
                    except Exception as err:
                        traceback.print_exc()
                        rec = Record(
                            name=name, what="", unit="", error=f"{type(err).__name__}: {err}"
                        )
                    rec.name += suffix
                    rec.seconds = time.monotonic() - t
                    rec.figures["redis_cluster"] = ctx.cluster
                    ctx.log(f"{name}{suffix}: done in {rec.seconds:.1f}s")
                    records.append(rec)
        finally:
            for _, ctx in ctxs:
                await ctx.close()
            if server is not None:
                server.stop()
            if cluster_server is not None:
                cluster_server.stop()
    total = time.monotonic() - started
    doc = {
        "mode": settings.mode,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": _git_rev(),
        "machine": machine(),
        "redis_targets": targets,
        "seconds": round(total, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "settings": settings.__dict__,
        "benchmarks": [r.as_json() for r in records],
        "table": table(records).splitlines(),
    }
    return doc, records


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes (default)")
    g.add_argument("--full", action="store_true", help="the full sizes (1M-event replay ...)")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/<mode>.json)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {BENCHMARKS}")
    p.add_argument(
        "--history",
        type=int,
        default=None,
        help="past executions of growth's big pipeline (default 10,000; --full 100,000)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="run against this Redis (or any node of a Redis Cluster) instead of a private "
        "redis-server; EVERYTHING in it is flushed before each benchmark",
    )
    p.add_argument(
        "--cluster",
        type=int,
        nargs="?",
        const=3,
        default=None,
        metavar="MASTERS",
        help="start a private Redis Cluster (default 3 masters, tests/redis_cluster.py, ports "
        "below 55000) and run against it",
    )
    p.add_argument(
        "--both",
        action="store_true",
        help="with --cluster: every benchmark on a private redis-server, then on the cluster "
        "(same run, same settings; the cluster's records are named <benchmark>@cluster)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the processes under test with py-spy (bench/results/profiles/)",
    )
    a = p.parse_args()
    if a.out is None:
        a.out = str(ROOT / "bench" / "results" / f"{'full' if a.full else 'quick'}.json")
    only = [x.strip() for x in a.only.split(",")] if a.only else BENCHMARKS
    unknown = sorted(set(only) - set(BENCHMARKS))
    if a.history is not None and a.history < 1:
        p.error(f"--history must be at least 1 (got {a.history})")
    if a.cluster is not None and a.redis_url:
        p.error("--cluster starts its own cluster: not with --redis-url")
    if a.both and a.redis_url:
        p.error("--both starts its own server and cluster: not with --redis-url")
    if a.both and a.cluster is None:
        a.cluster = 3
    if a.cluster is not None and a.cluster < 3:
        p.error(f"a Redis Cluster needs at least 3 masters (got {a.cluster})")
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    doc, records = asyncio.run(main_async(a))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(table(records))
    print(f"\n{doc['mode']} run: {doc['seconds']:.0f}s; results in {out}")
    if max(doc["loadavg_before"][0], doc["loadavg_after"][0]) > 1.0:
        print(
            f"note: the machine was busy (load average {doc['loadavg_before'][0]:.1f} before, "
            f"{doc['loadavg_after'][0]:.1f} after): absolute figures are noisy; ratios less so"
        )
    sys.exit(1 if any(r.error for r in records) else 0)


if __name__ == "__main__":
    main()
