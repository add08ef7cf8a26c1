"""``scale``: the ``actions`` workload with 1, 2 and 4 worker processes on one Redis.

The same workload as ``actions`` (``bench/workload.py``: 16 PARALLEL pipelines, 5 no-op
actions per execution, N actions scheduled beforehand, concurrency 16 per process), run once
per process count, all in this run on the same Redis. Reported for each: actions/s,
appends (EVAL/EVALSHA/FCALL) and log reads (XRANGE/XREVRANGE) per action as
Redis ran them (``INFO commandstats``, inside scripts too) and as the processes sent them,
every Redis command per action, and CPU: the workers', Redis', the
driver's and the whole machine's (busy cores over the run), so that a 2-core box's result
can be read: past 2 busy cores more processes only share the same CPU.

When ``actions`` ran just before in the same run, its 1-process figures are used (the same
workload, same settings) instead of measuring them again. The ratio is actions/s with 2
processes over 1; the target also asks appends and reads per
action to stay flat (within 10 %) as processes are added.
"""

from __future__ import annotations

from typing import Any

from bench import workload
from bench.common import Record
from bench.context import Ctx


def _flat(values: list[float], tolerance: float = 0.10) -> bool:
    lo, hi = min(values), max(values)
    if hi < 0.05:  # next to nothing per action: flat whatever the ratio
        return True
    return hi <= lo * (1 + tolerance)


async def run(ctx: Ctx) -> Record:
    st = ctx.settings
    rec = Record(
        name="scale",
        what="actions/s with 2 worker processes / with 1 (same workload as actions; "
        f"{', '.join(map(str, st.scale_workers))} processes)",
        unit="ratio",
        target=">= 1.0; appends and reads per action flat (±10%)",
    )
    runs: dict[int, dict[str, Any]] = {}
    for w in st.scale_workers:
        shared = ctx.shared.get(f"workload:{w}")
        if shared is not None:  # the same run, measured by ``actions`` moments ago
            r = {**shared, "from_actions_benchmark": True}
        else:
            r = await workload.run(ctx, workers=w, tag=f"scale{w}")
        runs[w] = r
        ctx.log(
            f"scale: {w} worker(s): {r['actions_per_s']:.0f} actions/s, "
            f"{r['appends_per_action']:.2f} appends, {r['log_reads_per_action']:.2f} reads "
            f"per action, {r['cpu']['machine_busy_cores']:.2f} cores busy"
        )
    one = runs[st.scale_workers[0]]
    two = runs.get(2, runs[st.scale_workers[-1]])
    rec.value = two["actions_per_s"] / one["actions_per_s"]
    rec.ratio = rec.value
    appends = [r["appends_per_action"] for r in runs.values()]
    reads = [r["log_reads_per_action"] for r in runs.values()]
    rec.passed = rec.value >= 1.0 and _flat(appends) and _flat(reads)
    rec.figures = {
        "by_workers": {
            str(w): {
                "actions_per_s": r["actions_per_s"],
                "appends_per_action": r["appends_per_action"],
                "log_reads_per_action": r["log_reads_per_action"],
                "xrange_per_action": r["xrange_per_action"],
                "sent_appends_per_action": r["sent"]["appends_per_action"],
                "sent_log_reads_per_action": r["sent"]["log_reads_per_action"],
                "round_trips_per_action": r["sent"]["round_trips_per_action"],
                "workers_cpu_ms_per_action": r["cpu"]["workers_ms_per_action"],
                "redis_cpu_ms_per_action": r["cpu"]["redis_ms_per_action"],
                "machine_busy_cores": r["cpu"]["machine_busy_cores"],
            }
            for w, r in runs.items()
        },
        "ratio_to_1_worker": {
            str(w): r["actions_per_s"] / one["actions_per_s"] for w, r in runs.items()
        },
        "runs": {str(w): r for w, r in runs.items()},
    }
    rec.notes.append(
        "; ".join(
            f"{w}w {r['actions_per_s']:.0f}/s {r['appends_per_action']:.2f}a "
            f"{r['log_reads_per_action']:.2f}r {r['cpu']['machine_busy_cores']:.1f}cores"
            for w, r in runs.items()
        )
    )
    return rec
