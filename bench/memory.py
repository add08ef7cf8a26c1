"""``memory``: Redis memory per stored event (``MEMORY USAGE <log> SAMPLES 0`` / ``XLEN``).

Measured on the replay benchmark's log (typical executions; generated here if ``replay``
did not run). The dispatch streams (``events``, ``run``: copies of events for the workers,
trimmed with ``MAXLEN ~``) and the other keys are reported separately.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from app.domain import events as ev
from app.store.eventstore import EventStore
from app.store.keys import Keys
from bench.common import Record
from bench.context import Ctx
from bench.replay import generate


async def _usage(ctx: Ctx, key: str) -> int:
    v: Any = await ctx.redis.memory_usage(key, samples=0)
    return int(v or 0)


async def run(ctx: Ctx) -> Record:
    rec = Record(
        name="memory",
        what="Redis memory per stored event: every stream of a pipeline (its own, one per "
    "execution) and the derived indexes, over its event count (typical events)",
        unit="bytes/event",
        target="report; <= 300 bytes",
    )
    names: list[str] | None = ctx.shared.get("replay_pipelines")
    if not names:
        await ctx.fresh()
        names = await generate(ctx, 50_000, 5)
    keys = Keys()
    store = EventStore(ctx.redis, keys)
    log_bytes = log_events = payload_bytes = hash_bytes = 0
    parts: dict[str, int] = {}  # bytes by kind of key (streams, references, indexes)
    for name in names:
        # everything a pipeline's log takes: its own stream (declarations and head
        # references), one stream per execution, and the derived indexes
        owned = {
            "pipeline_stream": [keys.log(name)],
            "indexes": [
                keys.executions(name),
                keys.actions(name),
                keys.request_tokens(name),
                keys.approvals(name),
                keys.sequence(name),
            ],
        }
        eids = await store.execution_ids(name, newest_first=False)
        owned["execution_streams"] = [keys.execution_log(name, e) for e in eids]
        owned["attempt_indexes"] = [keys.attempts(name, e) for e in eids]
        for kind, ks in owned.items():
            b = sum([await _usage(ctx, k) for k in ks])
            parts[kind] = parts.get(kind, 0) + b
            log_bytes += b
        log_events += await store.version(name)
    sampled = 0
    for name in names[:2]:  # payload sizes from a sample of pipelines (full events only)
        for raw in await store.read_raw(name):
            if not raw.ref:
                payload_bytes += len(raw.payload)
                hash_bytes += len(raw.hash)
                sampled += 1
    dispatch: dict[str, Any] = {}
    for kind, fn in (("events", keys.events), ("run", keys.run)):
        b = n = 0
        for p in range(keys.partitions):
            b += await _usage(ctx, fn(p))
            n += await ctx.redis.xlen(fn(p))
        dispatch[kind] = {
            "bytes": b,
            "entries": n,
            "bytes_per_entry": b / n if n else None,
        }
    other = 0
    for name in names:
        other += await _usage(ctx, keys.commands(name)) + await _usage(ctx, keys.snapshot(name))
    cfg: Any = await ctx.redis.config_get("stream-node-max-*")
    first = (await store.execution_ids(names[0], newest_first=False))[:1]
    what_if = await _what_if(
        ctx, keys.execution_log(names[0], first[0]) if first else keys.log(names[0]), store,
        names[0],
    )
    per_event = log_bytes / log_events
    rec.value = per_event
    rec.passed = per_event <= 300
    rec.figures = {
        "log_events": log_events,
        "log_bytes": log_bytes,
        "log_bytes_by_kind": parts,
        "bytes_per_event": per_event,
        "avg_payload_bytes": payload_bytes / sampled,
        "avg_hash_bytes": hash_bytes / sampled,
        "overhead_bytes_per_event": per_event - (payload_bytes + hash_bytes) / sampled,
        "dispatch_streams": dispatch,
        "command_id_and_snapshot_keys_bytes": other,
        "redis_stream_config": {_s(k): _s(v) for k, v in dict(cfg).items()},
        "what_if": what_if,
    }
    return rec


UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def _what_if(ctx: Ctx, key: str, store: EventStore, name: str) -> dict[str, Any]:
    """The same entries under other settings or encodings (one pipeline's log)."""
    rows: Any = await ctx.redis.xrange(key)
    n = len(rows)
    out: dict[str, Any] = {"entries": n}
    # larger stream nodes (a Redis setting): copy the log into a scratch key
    old: Any = await ctx.redis.config_get("stream-node-max-bytes")
    try:
        for node_bytes in (4096, 65536):
            await ctx.redis.config_set("stream-node-max-bytes", node_bytes)
            scratch = "bench:memory:scratch"
            await ctx.redis.delete(scratch)
            pipe = ctx.redis.pipeline(transaction=False)
            for rid, fields in rows:
                pipe.xadd(scratch, fields, id=rid)
            await pipe.execute()
            out[f"bytes_per_event_node_max_bytes_{node_bytes}"] = await _usage(ctx, scratch) / n
            await ctx.redis.delete(scratch)
    finally:
        await ctx.redis.config_set("stream-node-max-bytes", _s(dict(old)["stream-node-max-bytes"]))
    # other encodings of the same payloads (sizes only; nothing is stored this way)
    payloads = [fields[b"e"] for _, fields in rows]
    envs = [ev.decode_payload(name, i + 1, p) for i, p in enumerate(payloads)]
    stored = [ev.StoredPayload(**{f: getattr(e, f) for f in ev.StoredPayload.__struct_fields__})
              for e in envs]
    json_b = sum(len(p) for p in payloads) / n
    mp = [msgspec.msgpack.encode(s) for s in stored]
    mp_b = sum(len(b) for b in mp) / n
    uuids = sum(len(UUID.findall(p)) for p in payloads) / n
    out["payload_json_bytes"] = json_b
    out["payload_msgpack_bytes"] = mp_b
    out["uuids_per_payload"] = uuids
    # binary UUIDs (16 bytes + 2 of msgpack header instead of a 36-char string + 2)
    out["payload_msgpack_binary_uuid_bytes_estimate"] = mp_b - uuids * (38 - 18)
    out["hash_hex_bytes"] = 40
    out["hash_binary_bytes"] = 20
    return out


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
