"""``actions``: actions completed end to end per second by ONE worker process, vs the fastest of
arq, SAQ and taskiq running no-op jobs with one worker process each. On a Redis Cluster
(``--redis-url`` of a node, ``--cluster``) the peers are skipped (none has a cluster mode):
the figure is reported, to be read against the single-node run of the same settings.

stageline: the workload of ``bench/workload.py`` with one worker process (``P`` PARALLEL
pipelines, one stage of ``K`` Commands actions each, ``N`` actions scheduled beforehand,
concurrency 16, an in-process no-op runner; every execution and action checked Succeeded).

Peers (``bench/peers.py``, each in its own virtual environment): ``N`` no-op jobs enqueued
beforehand, one worker process at concurrency 16, the clock from its startup hook to the
peer's own record of every job done; every job's execution counted in the worker process
and in the peer's store. The ratio is taken against the fastest peer's best configuration.
"""

from __future__ import annotations

from bench import peers, workload
from bench.common import Record
from bench.context import Ctx


async def run(ctx: Ctx) -> Record:
    rec = Record(
        name="actions",
        what="actions completed end to end per second (scheduled -> run by one worker process "
        "-> result in the log), trivial in-process action",
        unit="actions/s",
        target=">= 2x the fastest peer",
        baseline_what="no-op jobs/s of the fastest of arq / SAQ / taskiq, one worker process, "
        "concurrency 16",
    )
    ours = await workload.run(ctx, workers=1, tag="act")
    ctx.shared["workload:1"] = ours  # scale's 1-process run, when both run
    ctx.log(f"actions: stageline {ours['actions_per_s']:.0f} actions/s")
    if ctx.cluster:
        # arq, SAQ and taskiq have no Redis Cluster mode (their keys span slots): no peer
        # baseline here; compare with this benchmark's run on one redis-server instead
        rec.value = ours["actions_per_s"]
        rec.baseline_what = None
        rec.target = "report (cluster: no peer runs on a Redis Cluster)"
        rec.figures = {"stageline": ours, "peers": "skipped: no Redis Cluster mode"}
        rec.notes.append(
            "peers skipped: arq, SAQ and taskiq have no Redis Cluster mode; compare with "
            "the single-node run of this benchmark (same settings)"
        )
        return rec
    results = await peers.run_all(ctx)
    others = {k: v for k, v in results.items() if "error" not in v}
    if not others:
        raise RuntimeError("every peer failed: " + "; ".join(v["error"] for v in results.values()))
    fastest = max(others, key=lambda k: others[k]["best_jobs_per_s"])
    rec.value = ours["actions_per_s"]
    rec.baseline = others[fastest]["best_jobs_per_s"]
    rec.ratio = rec.value / rec.baseline
    rec.passed = rec.ratio >= 2
    rec.figures = {
        "stageline": ours,
        "fastest_peer": fastest,
        "ratio_per_peer": {k: rec.value / v["best_jobs_per_s"] for k, v in others.items()},
        **results,
    }
    rec.notes.append(
        "peers: " + ", ".join(f"{k} {v['best_jobs_per_s']:.0f} jobs/s" for k, v in others.items())
    )
    for k, v in results.items():
        if "error" in v:
            rec.notes.append(f"{k} failed and is not in the ratio: {v['error']}")
    return rec
