"""``replay``: events/s folded into fresh projections, vs a bare XRANGE + msgspec decode loop.

The log: ``E`` events (1,000,000 in ``--full``; 100,000 in ``--quick``) of typical
executions (Build with two parallel actions then a third, Test, Deploy; every tenth
execution fails a unit test once and is retried manually), spread over several SUPERSEDED
pipelines, produced by the real domain and appended by the real store (Lua append, hash
chain, dispatch copies).

stageline: every pipeline replayed from scratch as the auditors' ``stageline audit replay``
does: the pipeline's own stream and every execution's stream merged in seq order
(``app.audit.common.merged_events``, chunks of 1000) and folded with ``evolve`` into a full
state. Baseline: the same streams read with ``XRANGE ... COUNT 1000`` in a loop and every
event's payload decoded with msgspec into the event types (no merge, no fold; the head
references of the pipeline's stream skipped), as a plain redis-py client does it. Both run
in this process, alternately, three times each; the best
of each counts (wall clock; CPU time of this process reported too).

For reference, also a stricter bare loop that reads XRANGE's reply as Redis sends it
(redis-py's per-entry dict conversion switched off, as ``EventStore.read`` does): the
difference to it is the fold's own cost (envelopes + ``evolve``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.audit.common import merged_events
from app.domain import events as ev
from app.domain.state import evolve, new_state
from app.store.eventstore import EventStore
from app.store.keys import Keys
from bench.common import Record
from bench.context import Ctx
from bench.gen import typical_history

BATCH = 1000


async def generate(ctx: Ctx, total: int, pipelines: int) -> list[str]:
    store = EventStore(ctx.redis, Keys())
    names = []
    per = total // pipelines
    for i in range(pipelines):
        sim = await typical_history(store, f"replay-{i}", per, seed=i)
        names.append(sim.name)
    return names


async def bare_loop(ctx: Ctx, keys: list[str]) -> int:
    decoder = msgspec.json.Decoder(ev.StoredPayload)
    n = 0
    for key in keys:
        start = "-"
        while True:
            rows = await ctx.redis.xrange(key, min=start, max="+", count=BATCH)
            for _rid, fields in rows:
                if b"e" in fields:  # not a head reference
                    decoder.decode(fields[b"e"])
                    n += 1
            if len(rows) < BATCH:
                break
            start = "(" + rows[-1][0].decode()
    return n


async def bare_loop_raw(ctx: Ctx, keys: list[str]) -> int:
    """The same, without redis-py's per-entry dict conversion of the reply (on a cluster:
    a plain client per master, each stream read from the master holding its slot)."""
    clients: dict[str, Redis] = {}

    def raw_for(key: str) -> Redis:
        node: Any = None
        if ctx.cluster:
            r: Any = ctx.redis
            node = r.get_node_from_key(key)
        client = clients.get(node.name if node is not None else "")
        if client is None:
            if node is not None:
                client = clients[node.name] = Redis(host=node.host, port=node.port)
            else:
                client = clients[""] = Redis(connection_pool=ctx.redis.connection_pool)
            client.response_callbacks.pop("XRANGE", None)
        return client

    decoder = msgspec.json.Decoder(ev.StoredPayload)
    n = 0
    for key in keys:
        start = "-"
        raw = raw_for(key)
        while True:
            rows: Any = await raw.xrange(key, min=start, max="+", count=BATCH)
            for _rid, flat in rows:
                if flat[0] == b"e":  # not a head reference
                    decoder.decode(flat[1])
                    n += 1
            if len(rows) < BATCH:
                break
            start = "(" + rows[-1][0].decode()
    if ctx.cluster:
        for client in clients.values():
            await client.aclose()
    return n


async def fold(ctx: Ctx, names: list[str]) -> int:
    store = EventStore(ctx.redis, Keys())
    n = 0
    for name in names:
        s = new_state(name)
        async for chunk in merged_events(store, name):
            for env in chunk:
                evolve(s, env)
            n += len(chunk)
    return n


async def run(ctx: Ctx) -> Record:
    st = ctx.settings
    rec = Record(
        name="replay",
        what=f"events/s folded into fresh projections from a {st.replay_events:,}-event log",
        unit="events/s",
        target=">= 0.8x the bare XRANGE + decode loop",
        baseline_what="XRANGE COUNT 1000 loop + msgspec decode of every entry (no fold)",
    )
    await ctx.fresh()
    t = time.perf_counter()
    names = await generate(ctx, st.replay_events, st.replay_pipelines)
    gen_s = time.perf_counter() - t
    store = EventStore(ctx.redis, Keys())
    keys = [k for n in names for _, k in await store.stream_keys(n)]
    ctx.shared["replay_pipelines"] = names
    loops: dict[str, Callable[[], Awaitable[int]]] = {
        "bare": lambda: bare_loop(ctx, keys),
        "bare_raw_reply": lambda: bare_loop_raw(ctx, keys),
        "fold": lambda: fold(ctx, names),
    }
    wall: dict[str, float] = dict.fromkeys(loops, 0.0)  # best events/s
    cpu: dict[str, float] = dict.fromkeys(loops, 1e9)  # best µs of CPU per event
    counts: dict[str, int] = {}
    for _ in range(3):
        for label, loop in loops.items():
            t, c = time.perf_counter(), time.process_time()
            n = await loop()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            counts[label] = n
            wall[label] = max(wall[label], n / dt)
            cpu[label] = min(cpu[label], dc / n * 1e6)
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the loops saw different numbers of events: {counts}")
    events = counts["fold"]
    rec.value = wall["fold"]
    rec.baseline = wall["bare"]
    rec.ratio = wall["fold"] / wall["bare"]
    rec.passed = rec.ratio >= 0.8
    rec.figures = {
        "events": events,
        "pipelines": len(names),
        "generate_s": gen_s,
        "events_per_s": wall,
        "cpu_us_per_event": cpu,
        "cpu_ratio_vs_bare": cpu["bare"] / cpu["fold"],
        "ratio_vs_bare_raw_reply": wall["fold"] / wall["bare_raw_reply"],
    }
    if st.replay_events < 1_000_000:
        rec.notes.append(f"quick mode: {events:,} events (--full replays 1,000,000)")
    return rec
