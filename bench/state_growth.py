"""``state_growth``: GetPipelineState latency with 10 vs 10,000 past executions, over HTTP.

Two PARALLEL pipelines with the same declaration (one stage with one Commands action in
``--quick``, two in ``--full``): one with 10 past (finished) executions, one with 10,000,
every tenth of them failed and retried once. The API server (own process, ``--no-workers``)
answers GetPipelineState; one keep-alive connection, requests alternating between the two
pipelines, one at a time. The first (cold) request of each pipeline folds its log into the
server's projection and is reported separately; the ratio compares the warm p50s. The same
is measured in-process (``Engine.pipeline`` + ``queries.get_pipeline_state``, no HTTP) for
reference.
"""

from __future__ import annotations

import time

from app import queries as q
from app.engine import Engine
from app.store.eventstore import EventStore
from app.store.keys import Keys
from bench.common import HttpClient, Proc, Record, free_port, percentiles, server_args
from bench.context import Ctx
from bench.gen import Sim, one_stage_declaration
from bench.profiling import spy


async def _history(store: EventStore, name: str, executions: int, actions: int) -> Sim:
    sim = Sim(store, one_stage_declaration(name, actions=actions))
    for i in range(executions):
        sim.execution(fail=f"a{actions - 1}" if i % 10 == 9 else None)
        if len(sim.pending) >= 4000:
            await sim.flush()
    await sim.flush()
    return sim


async def run(ctx: Ctx) -> Record:
    st = ctx.settings
    rec = Record(
        name="state_growth",
        what=f"GetPipelineState latency (HTTP, warm p50) with {st.growth_big:,} vs "
        f"{st.growth_small} past executions",
        unit="ratio",
        target="ratio <= 1.5",
    )
    await ctx.fresh()
    store = EventStore(ctx.redis, Keys())
    t = time.perf_counter()
    small = await _history(store, "growth-small", st.growth_small, st.growth_actions)
    big = await _history(store, "growth-big", st.growth_big, st.growth_actions)
    gen_s = time.perf_counter() - t

    port = free_port()
    server = Proc(server_args(ctx.redis_url, port))
    await server.start()
    client = HttpClient(port)
    lat: dict[str, list[float]] = {"small": [], "big": []}
    cold: dict[str, float] = {}
    try:
        for label, sim in (("small", small), ("big", big)):
            t = time.perf_counter()
            status, _ = await client.post("GetPipelineState", {"name": sim.name})
            cold[label] = (time.perf_counter() - t) * 1000
            assert status == 200
        async with spy(ctx, server.pid, "state_growth-server"):
            for _ in range(st.growth_requests):
                for label, sim in (("small", small), ("big", big)):
                    t = time.perf_counter()
                    status, _ = await client.post("GetPipelineState", {"name": sim.name})
                    lat[label].append((time.perf_counter() - t) * 1000)
                    assert status == 200
    finally:
        await client.close()
        await server.stop()

    # the same without HTTP, in this process
    engine = Engine(ctx.redis, Keys())
    inproc: dict[str, list[float]] = {"small": [], "big": []}
    for sim in (small, big):
        q.get_pipeline_state(await engine.pipeline(sim.name))  # load once
    for _ in range(st.growth_requests):
        for label, sim in (("small", small), ("big", big)):
            t = time.perf_counter()
            q.get_pipeline_state(await engine.pipeline(sim.name))
            inproc[label].append((time.perf_counter() - t) * 1000)

    ps = percentiles(lat["small"])
    pb = percentiles(lat["big"])
    ips = percentiles(inproc["small"])
    ipb = percentiles(inproc["big"])
    rec.value = pb["p50"] / ps["p50"]
    rec.ratio = rec.value
    rec.passed = rec.value <= 1.5
    rec.figures = {
        "executions": {"small": len(small.state.executions), "big": len(big.state.executions)},
        "events": {"small": small.state.version, "big": big.state.version},
        "http_ms": {"small": ps, "big": pb},
        "http_p99_ratio": pb["p99"] / ps["p99"],
        "cold_first_request_ms": cold,
        "in_process_ms": {"small": ips, "big": ipb},
        "in_process_p50_ratio": ipb["p50"] / ips["p50"],
        "generate_s": gen_s,
    }
    return rec
