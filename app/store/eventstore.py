"""The event store: Redis Streams, bounded streams per pipeline, atomic appends in Lua.

A pipeline's events are numbered by one counter (``seq:<pipeline>``: 1, 2, 3 ... in commit
order; it is ``Envelope.version`` and the stream entry id ``<seq>-0``), but stored in
bounded streams, so that no read costs more with more past executions:

- the pipeline's own stream (``log:<pipeline>``): declaration events (``PipelineCreated``
  ...) in full, and for every *head event* (``app.domain.events.HEAD_EVENTS``: what
  decisions across executions need, such as stage occupancy and the active executions) a
  short reference ``[type, execution, stage, autoRetry]`` under the same entry id;
- one stream per execution (``x:<pipeline>:<execution>``): every event of that execution.

``append_many`` is one Lua script (atomic, one cluster slot: every key carries the
partition's hash tag). It commits one or several *batches* (each the events one or more
decisions made for one pipeline) and, for each batch on its own:

1. a repeated command id appends nothing and answers the first append's result;
2. optimistic concurrency: the pipeline's stream must end at ``head_expected`` (when given)
   and each execution stream written at its expected sequence number (``exec_expected``),
   or, for a runner's own attempt (``attempt_expected``), the action's last event must be
   the one the runner saw: other actions of the same execution may have moved meanwhile;
3. each event gets the next number, goes to its stream with a hash chained to the previous
   entry of that stream (``sha1(prev \\n seq \\n payload)``, tamper evidence; with an
   audit key the writer's HMAC tag is stored as ``m`` and appended to the hashed bytes,
   ``chain_hash``), its head reference to the pipeline's stream, and a copy to the
   partition's dispatch streams;
4. derived indexes are kept: executions by start, request tokens, approval tokens, the
   last event of each action execution.

A refused batch (conflict) writes nothing and answers the few entries the writer missed in
the stream that conflicted, so it can decide again without a read. With a fencing token
(``fence``), the whole call is refused unless the partition's owner key still holds it; a
``checkpoint`` (the owner's position in the partition's ``events`` stream) is written only
when every batch went through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.domain import events as ev
from app.domain.state import HEAD_FORMAT, PipelineState, decode_head, encode_head
from app.store.connection import eval_acknowledged
from app.store.keys import Keys

LAYOUT = 2  # store layout version recorded in <ns>:config (1: one stream per pipeline)

APPEND_LUA = r"""
-- KEYS[1] partition events, KEYS[2] partition run queue, KEYS[3] partition names,
-- KEYS[4] partition owner (fence), KEYS[5] partition checkpoint, KEYS[6] partition leases;
-- then per batch 7 keys
-- (seq, log, cmd, xs, tok, apv) and per execution stream 2 keys (stream, attempts).
-- ARGV: maxlen, fence token, checkpoint, batch count; per batch: pipeline, command id,
-- head expected ('-' = unchecked), stream count, per stream 4 (execution, mode v|a|-,
-- expected, attempt id), event count, per event 9 (stream index, type, payload, head ref,
-- run route, action id, request token, approval token, audit tags '' or 'event tag ref tag'),
-- lease count, per lease 2
-- (member, expiry ms) to add, release count, per release 1 (member) to remove.
local maxlen = ARGV[1]
if ARGV[2] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[2] then return {{'fenced'}} end
local function last_of(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return 0, '' end
  local f = last[1][2]
  local h = ''
  for i = 1, #f, 2 do if f[i] == 'h' then h = f[i + 1] end end
  return tonumber(string.match(last[1][1], '^(%d+)-')), h
end
local function tail(key, after, res)
  -- the entry the writer saw last must still be there, else what it saw was lost
  if tonumber(after) > 0 and #redis.call('XRANGE', key, after .. '-0', after .. '-0') == 0 then
    res[#res + 1] = 'gone'
    return
  end
  local rows = redis.call('XRANGE', key, (tonumber(after) + 1) .. '-0', '+', 'COUNT', 33)
  if #rows > 32 then return end
  for i = 1, #rows do
    local f = rows[i][2]
    for j = 1, #f, 2 do
      if f[j] == 'e' or f[j] == 'r' then
        res[#res + 1] = rows[i][1]; res[#res + 1] = f[j]; res[#res + 1] = f[j + 1]
      end
    end
  end
end
local function tagged(t) if t == '' then return '' end return '\n' .. t end
local function put(key, id, f, body, h, t)
  if t == '' then redis.call('XADD', key, id, f, body, 'h', h)
  else redis.call('XADD', key, id, f, body, 'h', h, 'm', t) end
end
local out = {}
local all_ok = true
local ki, ai = 7, 5
for g = 1, tonumber(ARGV[4]) do
  local seqk, logk, cmdk, xsk, tokk, apvk, actk =
    KEYS[ki], KEYS[ki + 1], KEYS[ki + 2], KEYS[ki + 3], KEYS[ki + 4], KEYS[ki + 5], KEYS[ki + 6]
  ki = ki + 7
  local pipeline, cmd, hexp = ARGV[ai], ARGV[ai + 1], ARGV[ai + 2]
  local ns = tonumber(ARGV[ai + 3])
  ai = ai + 4
  local st = {}
  for i = 1, ns do
    st[i] = {ARGV[ai], KEYS[ki], KEYS[ki + 1], ARGV[ai + 1], ARGV[ai + 2], ARGV[ai + 3]}
    ki = ki + 2
    ai = ai + 4
  end
  local ne = tonumber(ARGV[ai])
  local e0 = ai + 1
  ai = e0 + ne * 9
  local nl = tonumber(ARGV[ai])
  local l0 = ai + 1
  ai = l0 + nl * 2
  local nr = tonumber(ARGV[ai])
  local r0 = ai + 1
  ai = r0 + nr
  local res = nil
  if cmd ~= '' then
    local seen = redis.call('HGET', cmdk, cmd)
    if seen then res = {'dup', seen} end
  end
  local hl, hh = 0, ''
  local xl, xh = {}, {}
  if res == nil then
    hl, hh = last_of(logk)
    if hexp ~= '-' and tonumber(hexp) ~= hl then
      res = {'conflict', '-', tostring(hl)}
      if hl > tonumber(hexp) then tail(logk, hexp, res) end
    end
  end
  if res == nil then
    for i = 1, ns do
      local s = st[i]
      xl[i], xh[i] = last_of(s[2])
      if s[4] == 'v' and tonumber(s[5]) ~= xl[i] then
        res = {'conflict', s[1], tostring(xl[i])}
        if xl[i] > tonumber(s[5]) then tail(s[2], s[5], res) end
        break
      end
      if s[4] == 'a' and (redis.call('HGET', s[3], s[6]) or '0') ~= s[5] then
        res = {'conflict', s[1], tostring(xl[i]), 'attempt'}
        break
      end
    end
  end
  if res ~= nil then
    all_ok = false
    out[#out + 1] = res
  else
    local first, last = 0, 0
    local named = false
    for j = 0, ne - 1 do
      local b = e0 + j * 9
      local si, typ, payload, ref = tonumber(ARGV[b]), ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
      local tag, rtag = string.match(ARGV[b + 8], '^(%S*) ?(%S*)$')
      local seq = redis.call('INCR', seqk)
      if first == 0 then first = seq end
      last = seq
      local id = seq .. '-0'
      local eid, hp, xp = '', '', ''
      if si == 0 then
        local h = redis.sha1hex(hh .. '\n' .. seq .. '\n' .. payload .. tagged(tag))
        put(logk, id, 'e', payload, h, tag)
        hp = tostring(hl); hh = h; hl = seq
        named = true
      else
        local s = st[si]
        eid = s[1]
        local h = redis.sha1hex(xh[si] .. '\n' .. seq .. '\n' .. payload .. tagged(tag))
        put(s[2], id, 'e', payload, h, tag)
        xp = tostring(xl[si]); xh[si] = h; xl[si] = seq
        if ARGV[b + 5] ~= '' then redis.call('HSET', s[3], ARGV[b + 5], seq) end
        if ref ~= '' then
          local rh = redis.sha1hex(hh .. '\n' .. seq .. '\n' .. ref .. tagged(rtag))
          put(logk, id, 'r', ref, rh, rtag)
          hp = tostring(hl); hh = rh; hl = seq
        end
        if typ == 'ExecutionStarted' then redis.call('ZADD', xsk, seq, eid) end
        if typ == 'ActionExecutionScheduled' then
          redis.call('ZADD', actk, seq, eid .. '/' .. ARGV[b + 5])
        end
        if ARGV[b + 6] ~= '' then redis.call('HSET', tokk, ARGV[b + 6], eid) end
        if ARGV[b + 7] ~= '' then redis.call('HSET', apvk, ARGV[b + 7], eid) end
      end
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'p', pipeline, 'v', seq,
                 't', typ, 'x', eid, 'hp', hp, 'xp', xp, 'e', payload)
      if ARGV[b + 4] == '1' then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'p', pipeline, 'v', seq,
                   'x', eid, 'hp', hp, 'xp', xp, 'e', payload)
      end
    end
    if named then redis.call('SADD', KEYS[3], pipeline) end
    if cmd ~= '' and ne > 0 then
      local where = {}
      for i = 1, ns do where[#where + 1] = st[i][1] end
      redis.call('HSET', cmdk, cmd, first .. ':' .. last .. ':' .. table.concat(where, ','))
    end
    for i = 0, nl - 1 do
      redis.call('ZADD', KEYS[6], ARGV[l0 + i * 2 + 1], ARGV[l0 + i * 2])
    end
    for i = 0, nr - 1 do redis.call('ZREM', KEYS[6], ARGV[r0 + i]) end
    out[#out + 1] = {'ok', tostring(first), tostring(last)}
  end
end
if all_ok and ARGV[3] ~= '' then redis.call('SET', KEYS[5], ARGV[3]) end
return out
"""

SNAPSHOT_LUA = r"""
-- KEYS[1] the snapshot, KEYS[2] the pipeline's stream (same slot). A head the stream does
-- not hold (a cache ahead of a store that lost writes) is never stored.
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last == 0 or tonumber(string.match(last[1][1], '^(%d+)-')) < tonumber(ARGV[1]) then
  return 0
end
-- a newer snapshot stays, unless it is of another format (then it is replaced)
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if redis.call('HGET', KEYS[1], 'f') ~= ARGV[3] then cur = 0 end
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2], 'f', ARGV[3])
  return 1
end
return 0
"""

HEAD = "-"  # the pipeline's own stream, where a stream is named in results


class ConcurrencyError(Exception):
    """A stream was not where the writer expected (someone else appended first).

    ``stream``: the execution id, or ``HEAD`` for the pipeline's stream. ``missing``: the
    events after ``expected`` up to ``actual`` when the script sent them along (a few at
    most): full envelopes, and for the pipeline's stream head references as
    ``(seq, HeadRef)``. ``behind``: the stream is *behind* the writer's view (the store
    lost acknowledged writes): the writer's cache is ahead and must be dropped.
    """

    def __init__(
        self,
        pipeline: str,
        stream: str,
        expected: int,
        actual: int,
        missing: Sequence[ev.Envelope | tuple[int, ev.HeadRef]] = (),
        *,
        attempt: bool = False,
        gone: bool = False,
    ) -> None:
        where = "pipeline stream" if stream == HEAD else f"execution {stream}"
        super().__init__(f"{pipeline} ({where}): expected {expected}, stream is at {actual}")
        self.pipeline = pipeline
        self.stream = stream
        self.expected = expected
        self.actual = actual
        self.missing = list(missing)
        self.attempt = attempt
        self.gone = gone

    @property
    def behind(self) -> bool:
        """The store does not hold what the writer saw: it is behind (Redis lost acknowledged
        writes), or it lost them and others wrote past them (``gone``)."""
        return self.gone or (not self.attempt and self.actual < self.expected)


class Fenced(Exception):
    """The partition's owner key no longer holds this writer's fencing token."""


@dataclass
class Batch:
    """Events one or more decisions made for one pipeline, and what they were decided on.

    ``head_expected``: the last seq of the pipeline's stream the decisions read (None: they
    did not depend on it). ``exec_expected``: execution -> last seq of its stream (0 for an
    execution the batch starts). ``attempt_expected``: execution -> (action execution id,
    seq of its last event), for a runner's own attempt.
    """

    pipeline: str
    envelopes: list[ev.Envelope]
    head_expected: int | None = None
    exec_expected: dict[str, int] = field(default_factory=dict)
    attempt_expected: dict[str, tuple[str, int]] = field(default_factory=dict)
    command_id: str | None = None
    # runners' leases (partition lease zset), taken / released only if the batch goes through
    leases: list[tuple[str, int]] = field(default_factory=list)  # (member, expiry ms)
    release: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AppendResult:
    first: int
    last: int
    duplicate: bool = False
    streams: tuple[str, ...] = ()  # duplicate: the streams the first append wrote

    def stamp(self, envelopes: Sequence[ev.Envelope]) -> list[ev.Envelope]:
        """The envelopes with the sequence numbers the store gave them."""
        return [
            env if env.version == self.first + i else msgspec.structs.replace(
                env, version=self.first + i
            )
            for i, env in enumerate(envelopes)
        ]


@dataclass(frozen=True)
class RawEntry:
    """One stored entry as it is in Redis: seq, payload bytes, chained hash, and whether it
    is a head reference (``ref``) rather than a full event."""

    version: int
    payload: bytes
    hash: str
    ref: bool = False
    stream: str = HEAD
    tag: str = ""  # the audit tag (field ``m``), '' for an entry written without a key


HeadItem = ev.Envelope | tuple[int, ev.HeadRef]


def runs_on_engine(e: ev.Event) -> bool:
    """Events that go to the partition's run queue: actions the engine runs itself (commands
    and sources), and ``Commands`` rules of stage conditions."""
    if isinstance(e, ev.RuleExecutionScheduled):
        return e.kind == "commands"
    return isinstance(e, ev.ActionExecutionScheduled) and e.kind in ("commands", "source")


def chain_hash(prev: str, version: int, payload: bytes, tag: str = "") -> str:
    """The hash the append script stores: sha1(prev \\n seq \\n payload [\\n tag]), hex
    (the audit tag, field ``m``, when the entry has one)."""
    data = prev.encode() + b"\n" + str(version).encode() + b"\n" + payload
    return hashlib.sha1(data + b"\n" + tag.encode() if tag else data).hexdigest()


def event_tag(key: bytes, pipeline: str, stream: str, payload: bytes) -> str:
    """The audit tag of a full event: HMAC-SHA256 over what the writer knows before the
    append (pipeline, stream, payload bytes, which hold the event id), hex."""
    msg = b"stageline-event\n" + pipeline.encode() + b"\n" + stream.encode() + b"\n" + payload
    return hmac.digest(key, msg, "sha256").hex()


def ref_tag(key: bytes, pipeline: str, tag: str, ref: bytes) -> str:
    """The audit tag of a head reference, bound to its event's tag."""
    msg = b"stageline-ref\n" + pipeline.encode() + b"\n" + tag.encode() + b"\n" + ref
    return hmac.digest(key, msg, "sha256").hex()


class EventStore:
    # appends acknowledged only once this many replicas have them (WAIT); set by the
    # process that starts the engine (``--min-replica-acks``), 0 = no WAIT
    min_replica_acks: int = 0
    replica_ack_timeout_ms: int = 2000

    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        dispatch_maxlen: int = 200_000,
        route: Callable[[ev.Event], bool] = runs_on_engine,
        audit_key: bytes | None = None,
    ) -> None:
        self.redis = redis
        self._audit_key = audit_key  # tags new entries (app/audit/keyed.py); never sent
        self.keys = keys or Keys()
        self.dispatch_maxlen = dispatch_maxlen
        self._route = route
        self._append = redis.register_script(APPEND_LUA)
        self._snapshot = redis.register_script(SNAPSHOT_LUA)
        # The same connections, but XRANGE replies stay as Redis sends them (no per-entry
        # dict): reads are the hot path of every load, catch-up and replay. A cluster client
        # (redis.asyncio.cluster.RedisCluster) has no single pool and shares its response
        # callbacks with its nodes: it is used as it is, and the reads take its (id, dict)
        # rows as well (``_entry``).
        pool = getattr(redis, "connection_pool", None)
        if pool is not None:
            self._raw = Redis(connection_pool=pool)
            self._raw.response_callbacks.pop("XRANGE", None)
        else:
            self._raw = redis
        self.appends = 0  # Lua calls made (benchmarks and tests read it)

    # --- configuration -----------------------------------------------------------------------

    async def ensure_config(self) -> None:
        """Record partitions and layout on first use; refuse a different partition count
        or a store of the first layout that was not migrated."""
        key = self.keys.config()
        stored: Any = await self.redis.hget(key, "partitions")
        if stored is not None and int(stored) != self.keys.partitions:
            raise RuntimeError(
                f"this Redis holds stageline data laid out in {int(stored)} partitions, "
                f"not {self.keys.partitions}; start with --partitions {int(stored)}"
            )
        layout: Any = await self.redis.hget(key, "layout")
        if stored is not None and layout is None:
            raise RuntimeError(
                "this Redis holds stageline data of the first layout (one stream per "
                "pipeline); run `stageline migrate --redis-url URL` first"
            )
        if layout is not None and int(layout) != LAYOUT:
            raise RuntimeError(
                f"this Redis holds stageline data of layout {int(layout)}; this stageline "
                f"reads layout {LAYOUT}"
            )
        await self.redis.hset(
            key, mapping={"partitions": str(self.keys.partitions), "layout": str(LAYOUT)}
        )

    # --- appends -----------------------------------------------------------------------------

    async def append(self, batch: Batch) -> AppendResult:
        """Commit one batch; raises ConcurrencyError when it was refused."""
        (res,) = await self.append_many([batch])
        if isinstance(res, ConcurrencyError):
            raise res
        return res

    async def append_many(
        self,
        batches: Sequence[Batch],
        *,
        fence: tuple[int, str] | None = None,
        checkpoint: tuple[int, str] | None = None,
    ) -> list[AppendResult | ConcurrencyError]:
        """Commit several batches of one partition in one atomic call (group commit).

        Each batch goes through or is refused on its own (a ConcurrencyError in its place).
        ``fence``: (partition, token) that the partition's owner key must hold, else the
        whole call is refused with :class:`Fenced`. ``checkpoint``: (partition, entry id)
        written when every batch went through.
        """
        k = self.keys
        parts = {k.partition(b.pipeline) for b in batches}
        if fence is not None:
            parts.add(fence[0])
        if checkpoint is not None:
            parts.add(checkpoint[0])
        if len(parts) != 1:
            raise ValueError("one append covers one partition")
        part = parts.pop()
        if fence is not None and not fence[1]:
            # the script reads an empty token as "no fence": it would write unfenced
            raise Fenced(f"partition {part}: an empty fencing token is no owner's")
        keys: list[str] = [
            k.events(part),
            k.run(part),
            k.names(part),
            k.owner(part),
            k.checkpoint(part),
            k.leases(part),
        ]
        argv: list[Any] = [
            self.dispatch_maxlen,
            fence[1] if fence is not None else "",
            checkpoint[1] if checkpoint is not None else "",
            len(batches),
        ]
        for b in batches:
            self._encode_batch(b, keys, argv)
        self.appends += 1
        raw: Any
        if self.min_replica_acks > 0:
            raw = await eval_acknowledged(
                self.redis,
                self._append,
                keys,
                argv,
                self.min_replica_acks,
                self.replica_ack_timeout_ms,
            )
        else:
            raw = await self._append(keys=keys, args=argv)
        if raw and _text(raw[0][0]) == "fenced":
            raise Fenced(f"partition {part}: this process is no longer its owner")
        return [self._result(b, r) for b, r in zip(batches, raw, strict=True)]

    def _encode_batch(self, b: Batch, keys: list[str], argv: list[Any]) -> None:
        k, p = self.keys, b.pipeline
        keys += [
            k.sequence(p),
            k.log(p),
            k.commands(p),
            k.executions(p),
            k.request_tokens(p),
            k.approvals(p),
            k.actions(p),
        ]
        streams: list[str] = []
        for env in b.envelopes:
            eid = ev.execution_of(env.event)
            if env.pipeline != p:
                raise ValueError(f"envelope {env.id} is not of pipeline {p}")
            if eid is not None and eid not in streams:
                streams.append(eid)
        argv += [
            p,
            b.command_id or "",
            "-" if b.head_expected is None else b.head_expected,
            len(streams),
        ]
        for eid in streams:
            keys += [k.execution_log(p, eid), k.attempts(p, eid)]
            if eid in b.attempt_expected:
                aid, seq = b.attempt_expected[eid]
                argv += [eid, "a", seq, aid]
            elif eid in b.exec_expected:
                argv += [eid, "v", b.exec_expected[eid], ""]
            else:
                argv += [eid, "-", 0, ""]
        argv.append(len(b.envelopes))
        key = self._audit_key
        for env in b.envelopes:
            e = env.event
            eid = ev.execution_of(e)
            head = type(e) in ev.HEAD_EVENTS
            payload = ev.encode_payload(env)
            ref = ev.encode_ref(ev.head_ref(e)) if head else b""
            tags = ""
            if key is not None:
                tags = event_tag(key, p, eid or HEAD, payload)
                if ref:
                    tags += " " + ref_tag(key, p, tags, ref)
            argv += [
                0 if eid is None else streams.index(eid) + 1,
                type(e).__name__,
                payload,
                ref,
                "1" if self._route(e) else "0",
                ev.action_of(e) or "",
                getattr(e, "clientRequestToken", None) or "",
                getattr(e, "token", None) or "",
                tags,
            ]
        argv.append(len(b.leases))
        for member, expiry in b.leases:
            argv += [member, expiry]
        argv.append(len(b.release))
        argv += b.release

    def _result(self, b: Batch, r: Any) -> AppendResult | ConcurrencyError:
        status = _text(r[0])
        if status == "ok":
            return AppendResult(int(r[1]), int(r[2]))
        if status == "dup":
            first, last, where = _text(r[1]).split(":", 2)
            streams = tuple(where.split(",") if where else ())
            return AppendResult(int(first), int(last), duplicate=True, streams=streams)
        stream, actual = _text(r[1]), int(r[2])
        if len(r) > 3 and _text(r[3]) == "attempt":
            _, seq = b.attempt_expected.get(stream, ("", 0))
            return ConcurrencyError(b.pipeline, stream, seq, actual, attempt=True)
        expected = b.head_expected if stream == HEAD else b.exec_expected.get(stream, 0)
        missing: list[HeadItem] = []
        rest = r[3:]
        if rest and _text(rest[0]) == "gone":
            return ConcurrencyError(b.pipeline, stream, expected or 0, actual, gone=True)
        for i in range(0, len(rest) - 2, 3):
            seq = _version_of(rest[i])
            if _text(rest[i + 1]) == "r":
                missing.append((seq, ev.decode_ref(rest[i + 2])))
            else:
                missing.append(ev.decode_payload(b.pipeline, seq, rest[i + 2]))
        return ConcurrencyError(b.pipeline, stream, expected or 0, actual, missing)

    # --- command ids -------------------------------------------------------------------------

    async def command_seen(self, pipeline: str, command_id: str) -> bool:
        """Whether an append with this command id went through."""
        return bool(await self.redis.hexists(self.keys.commands(pipeline), command_id))

    async def command_versions(
        self, pipeline: str, command_id: str
    ) -> tuple[int, int, tuple[str, ...]] | None:
        """The seqs (first, last) an append with this command id wrote, and its streams."""
        raw: Any = await self.redis.hget(self.keys.commands(pipeline), command_id)
        if raw is None:
            return None
        first, last, where = _text(raw).split(":", 2)
        return int(first), int(last), tuple(where.split(",") if where else ())

    async def read_appended(
        self, pipeline: str, first: int, last: int, streams: Sequence[str]
    ) -> list[ev.Envelope]:
        """The events one append wrote (seqs first..last in the streams it named)."""
        out: list[ev.Envelope] = []
        for eid in streams:
            out += await self.read_execution(pipeline, eid, after=first - 1, until=last)
        out += [
            e
            for e in await self.read_head(pipeline, after=first - 1, until=last)
            if isinstance(e, ev.Envelope)
        ]
        out.sort(key=lambda e: e.version)
        return out

    # --- reads -------------------------------------------------------------------------------

    async def version(self, pipeline: str) -> int:
        """The pipeline's last sequence number (0: no events)."""
        raw: Any = await self.redis.get(self.keys.sequence(pipeline))
        return int(raw) if raw is not None else 0

    async def execution_version(self, pipeline: str, execution_id: str) -> int:
        last: Any = await self.redis.xrevrange(
            self.keys.execution_log(pipeline, execution_id), count=1
        )
        return _version_of(last[0][0]) if last else 0

    async def execution_versions(self, pipeline: str, execution_ids: Sequence[str]) -> list[int]:
        """:meth:`execution_version` of each execution, pipelined (one round trip per 500;
        the streams share the pipeline's slot, so on a cluster one node answers)."""
        out: list[int] = []
        for i in range(0, len(execution_ids), 500):
            pipe: Any = self.redis.pipeline(transaction=False)
            for eid in execution_ids[i : i + 500]:
                pipe.xrevrange(self.keys.execution_log(pipeline, eid), count=1)
            out += [_version_of(last[0][0]) if last else 0 for last in await pipe.execute()]
        return out

    async def head_version(self, pipeline: str) -> int:
        last: Any = await self.redis.xrevrange(self.keys.log(pipeline), count=1)
        return _version_of(last[0][0]) if last else 0

    async def read_head(
        self, pipeline: str, after: int = 0, until: int | None = None, count: int | None = None
    ) -> list[HeadItem]:
        """The pipeline's stream after ``after``: declaration events in full and head
        events as ``(seq, HeadRef)``."""
        hi = f"{until}-0" if until is not None else "+"
        rows: Any = await self._raw.xrange(
            self.keys.log(pipeline), min=f"{after + 1}-0", max=hi, count=count
        )
        out: list[HeadItem] = []
        for rid, f in rows:
            seq = _version_of(rid)
            ref, payload = _entry(f)
            if ref:
                out.append((seq, ev.decode_ref(payload)))
            else:
                out.append(ev.decode_payload(pipeline, seq, payload))
        return out

    async def read_execution(
        self,
        pipeline: str,
        execution_id: str,
        after: int = 0,
        until: int | None = None,
        count: int | None = None,
    ) -> list[ev.Envelope]:
        hi = f"{until}-0" if until is not None else "+"
        rows: Any = await self._raw.xrange(
            self.keys.execution_log(pipeline, execution_id),
            min=f"{after + 1}-0",
            max=hi,
            count=count,
        )
        decode = ev.decode_payload
        return [decode(pipeline, _version_of(rid), _entry(f)[1]) for rid, f in rows]

    async def execution_ids(
        self, pipeline: str, *, newest_first: bool = True, start: int = 0, count: int = -1
    ) -> list[str]:
        """Execution ids in start order (the derived index), a window of them."""
        stop = -1 if count < 0 else start + count - 1
        key = self.keys.executions(pipeline)
        if newest_first:
            ids: Any = await self.redis.zrevrange(key, start, stop)
        else:
            ids = await self.redis.zrange(key, start, stop)
        return [_text(i) for i in ids]

    async def action_ids(
        self, pipeline: str, *, start: int = 0, count: int = -1
    ) -> list[tuple[str, str]]:
        """(execution id, action execution id) newest first (the derived index), a window."""
        stop = -1 if count < 0 else start + count - 1
        rows: Any = await self.redis.zrevrange(self.keys.actions(pipeline), start, stop)
        out = []
        for r in rows:
            eid, _, aid = _text(r).partition("/")
            out.append((eid, aid))
        return out

    async def action_rank(self, pipeline: str, execution_id: str, action_id: str) -> int | None:
        member = f"{execution_id}/{action_id}"
        r: Any = await self.redis.zrevrank(self.keys.actions(pipeline), member)
        return None if r is None else int(r)

    async def execution_rank(self, pipeline: str, execution_id: str) -> int | None:
        """Position of an execution in the newest-first index, None when not there."""
        r: Any = await self.redis.zrevrank(self.keys.executions(pipeline), execution_id)
        return None if r is None else int(r)

    async def execution_count(self, pipeline: str) -> int:
        return int(await self.redis.zcard(self.keys.executions(pipeline)))

    async def token_execution(self, pipeline: str, token: str) -> str | None:
        raw: Any = await self.redis.hget(self.keys.request_tokens(pipeline), token)
        return None if raw is None else _text(raw)

    async def approval_execution(self, pipeline: str, token: str) -> str | None:
        raw: Any = await self.redis.hget(self.keys.approvals(pipeline), token)
        return None if raw is None else _text(raw)

    async def read(
        self, pipeline: str, after: int = 0, count: int | None = None, until: int | None = None
    ) -> list[ev.Envelope]:
        """Every event of the pipeline with seq > ``after`` (and <= ``until``), in order:
        the pipeline's stream and every execution's, merged. For audits and tests: it reads
        every execution's stream (commands and queries never call it)."""
        out = [
            e
            for e in await self.read_head(pipeline, after=after, until=until)
            if isinstance(e, ev.Envelope)
        ]
        for eid in await self.execution_ids(pipeline, newest_first=False):
            out += await self.read_execution(pipeline, eid, after=after, until=until)
        out.sort(key=lambda e: e.version)
        return out[:count] if count is not None else out

    async def iter_events(
        self, pipeline: str, after: int = 0, batch: int = 1000, until: int | None = None
    ) -> AsyncIterator[list[ev.Envelope]]:
        """Every event of the pipeline in order, in chunks (see ``read``)."""
        events = await self.read(pipeline, after=after, until=until)
        for i in range(0, len(events), batch):
            yield events[i : i + batch]

    async def read_raw_stream(
        self, key: str, after: int = 0, count: int | None = None, until: int | None = None
    ) -> list[RawEntry]:
        """Entries of one stream as stored (for verification)."""
        hi = f"{until}-0" if until is not None else "+"
        rows: Any = await self.redis.xrange(key, min=f"{after + 1}-0", max=hi, count=count)
        out = []
        for rid, fields in rows:
            ref = b"r" in fields
            out.append(
                RawEntry(
                    _version_of(rid),
                    fields[b"r"] if ref else fields.get(b"e", b""),
                    _text(fields.get(b"h", b"")),
                    ref=ref,
                    tag=_text(fields.get(b"m", b"")),
                )
            )
        return out

    async def stream_keys(self, pipeline: str) -> list[tuple[str, str]]:
        """(stream, key) of every stream of the pipeline: its own (``HEAD``), then each
        execution's in start order."""
        out = [(HEAD, self.keys.log(pipeline))]
        for eid in await self.execution_ids(pipeline, newest_first=False):
            out.append((eid, self.keys.execution_log(pipeline, eid)))
        return out

    async def read_raw(self, pipeline: str) -> list[RawEntry]:
        """Every stored entry of every stream of the pipeline, stream by stream, as stored
        (for verification: each stream's hash chain, and together every seq once)."""
        out: list[RawEntry] = []
        for stream, key in await self.stream_keys(pipeline):
            for r in await self.read_raw_stream(key):
                out.append(dataclasses.replace(r, stream=stream))
        return out

    async def pipelines(self) -> list[str]:
        """Every pipeline that has a stream (including deleted ones), sorted."""
        names: set[str] = set()
        for p in range(self.keys.partitions):
            members: Any = await self.redis.smembers(self.keys.names(p))
            names.update(_text(n) for n in members)
        return sorted(names)

    # --- snapshots (of the head only: bounded) -----------------------------------------------

    async def save_snapshot(self, state: PipelineState) -> bool:
        """Store the head of ``state`` unless a newer one is already there, or the
        pipeline's stream does not reach ``state``'s head (it is ahead of the store)."""
        done = await self._snapshot(
            keys=[self.keys.snapshot(state.name), self.keys.log(state.name)],
            args=[state.headVersion, encode_head(state), HEAD_FORMAT],
        )
        return bool(done)

    async def load_snapshot(self, pipeline: str) -> PipelineState | None:
        """The pipeline's head snapshot; None when there is none or it is of another
        format (written by a release whose head state folded differently: the head is then
        folded from its stream, and the next snapshot replaces it)."""
        got: Any = await self.redis.hmget(self.keys.snapshot(pipeline), ["s", "f"])
        data, fmt = got
        if data is None or fmt is None or int(fmt) != HEAD_FORMAT:
            return None
        return decode_head(data)

    async def drop_snapshot(self, pipeline: str) -> None:
        await self.redis.delete(self.keys.snapshot(pipeline))

    # --- restoring stored entries (audit import, migration) ----------------------------------

    _RESTORE_LUA = r"""
-- KEYS: 1 seq, 2 names, 3 xs, 4 as, 5 tok, 6 apv, 7 log; per execution stream 2 (stream, xa).
-- ARGV: 1 pipeline, 2 stream count, the execution ids, entry count, per entry 10: stream
-- index (0 = the pipeline's), seq, field (e|r), payload, hash, type, action execution id,
-- request token, approval token, audit tag ('' = none).
local function last_of(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return 0, '' end
  local f = last[1][2]
  local h = ''
  for i = 1, #f, 2 do if f[i] == 'h' then h = f[i + 1] end end
  return tonumber(string.match(last[1][1], '^(%d+)-')), h
end
local ns = tonumber(ARGV[2])
local st, sim = {}, {}
local l, h = last_of(KEYS[7])
st[0] = {KEYS[7], '', ''}
sim[0] = {l, h}
for i = 1, ns do
  l, h = last_of(KEYS[6 + 2 * i])
  st[i] = {KEYS[6 + 2 * i], KEYS[7 + 2 * i], ARGV[2 + i]}
  sim[i] = {l, h}
end
local n = tonumber(ARGV[3 + ns])
local b0 = 4 + ns
for j = 0, n - 1 do
  local b = b0 + j * 10
  local si, seq = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
  local s = sim[si]
  if seq < 1 or seq <= s[1] then return {'order', tostring(si), ARGV[b + 1], tostring(s[1])} end
  local tg = ARGV[b + 9]
  if tg ~= '' then tg = '\n' .. tg end
  local hh = redis.sha1hex(s[2] .. '\n' .. ARGV[b + 1] .. '\n' .. ARGV[b + 3] .. tg)
  if hh ~= ARGV[b + 4] then return {'hash', tostring(si), ARGV[b + 1]} end
  s[1] = seq
  s[2] = hh
end
local top, named = 0, false
for j = 0, n - 1 do
  local b = b0 + j * 10
  local si, seq = tonumber(ARGV[b]), ARGV[b + 1]
  local s = st[si]
  if ARGV[b + 9] == '' then
    redis.call('XADD', s[1], seq .. '-0', ARGV[b + 2], ARGV[b + 3], 'h', ARGV[b + 4])
  else
    redis.call('XADD', s[1], seq .. '-0', ARGV[b + 2], ARGV[b + 3], 'h', ARGV[b + 4],
               'm', ARGV[b + 9])
  end
  if tonumber(seq) > top then top = tonumber(seq) end
  if si == 0 then
    if ARGV[b + 2] == 'e' then named = true end
  else
    local typ, aid = ARGV[b + 5], ARGV[b + 6]
    if aid ~= '' then redis.call('HSET', s[2], aid, seq) end
    if typ == 'ExecutionStarted' then redis.call('ZADD', KEYS[3], seq, s[3]) end
    if typ == 'ActionExecutionScheduled' then
      redis.call('ZADD', KEYS[4], seq, s[3] .. '/' .. aid)
    end
    if ARGV[b + 7] ~= '' then redis.call('HSET', KEYS[5], ARGV[b + 7], s[3]) end
    if ARGV[b + 8] ~= '' then redis.call('HSET', KEYS[6], ARGV[b + 8], s[3]) end
  end
end
if top > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], top) end
if named then redis.call('SADD', KEYS[2], ARGV[1]) end
return {'ok', tostring(n)}
"""

    async def restore(self, pipeline: str, entries: Sequence[RawEntry]) -> int:
        """Write stored entries back as they were: each into its stream (``entry.stream``:
        ``HEAD`` or an execution id) under its id ``<seq>-0``, with its payload (a head
        reference when ``entry.ref``), hash and audit tag, in one atomic call; the derived indexes
        (executions, actions, request and approval tokens, last event per action
        execution, the seq counter, the partition's names) are derived from the events
        as the append script does. For ``audit import`` and ``stageline migrate``.

        Each entry must follow its stream's last entry (as stored, or given before it in
        this call) and its hash chain onto it (``chain_hash``): else nothing is written
        and ValueError names the stream and seq. Dispatch streams and command ids are
        not touched. Returns the number of entries written.
        """
        if not entries:
            return 0
        k = self.keys
        streams: list[str] = []
        rows: list[Any] = []
        for e in entries:
            if e.stream == HEAD:
                si = 0
            else:
                if e.stream not in streams:
                    streams.append(e.stream)
                si = streams.index(e.stream) + 1
            typ = aid = tok = apv = ""
            if e.ref and si:
                raise ValueError(
                    f"{pipeline} seq {e.version}: a head reference given for the stream of "
                    f"execution {e.stream}"
                )
            if not e.ref:
                try:
                    body = ev.decode_payload(pipeline, e.version, e.payload).event
                except (msgspec.DecodeError, msgspec.ValidationError) as err:
                    raise ValueError(
                        f"{pipeline} seq {e.version}: payload does not decode: {err}"
                    ) from None
                if (ev.execution_of(body) or HEAD) != e.stream:
                    raise ValueError(
                        f"{pipeline} seq {e.version}: an event of "
                        f"{ev.execution_of(body) or 'the pipeline'} given for the stream of "
                        f"{'the pipeline' if e.stream == HEAD else e.stream}"
                    )
            if si and not e.ref:
                typ = type(body).__name__
                aid = ev.action_of(body) or ""
                tok = getattr(body, "clientRequestToken", None) or ""
                apv = getattr(body, "token", None) or ""
            rows += [
                si, e.version, "r" if e.ref else "e", e.payload, e.hash, typ, aid, tok, apv, e.tag
            ]
        keys = [
            k.sequence(pipeline),
            k.names(k.partition(pipeline)),
            k.executions(pipeline),
            k.actions(pipeline),
            k.request_tokens(pipeline),
            k.approvals(pipeline),
            k.log(pipeline),
        ]
        for eid in streams:
            keys += [k.execution_log(pipeline, eid), k.attempts(pipeline, eid)]
        script = self.redis.register_script(self._RESTORE_LUA)
        raw: Any = await script(
            keys=keys, args=[pipeline, len(streams), *streams, len(entries), *rows]
        )
        status = _text(raw[0])
        if status == "ok":
            return int(raw[1])
        si = int(raw[1])
        where = "pipeline stream" if si == 0 else f"execution {streams[si - 1]}"
        if status == "order":
            raise ValueError(
                f"{pipeline} ({where}) seq {_text(raw[2])}: not after the stream's last "
                f"entry ({_text(raw[3])})"
            )
        raise ValueError(
            f"{pipeline} ({where}) seq {_text(raw[2])}: the hash does not chain onto the "
            "stream's previous entry (altered or missing entries)"
        )


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _entry(f: Any) -> tuple[bool, bytes]:
    """(is a head reference, payload) of a stream entry's fields: the flat [field, value,
    ...] list of a raw reply, or the dict a cluster client's XRANGE callback makes."""
    if isinstance(f, dict):
        ref = f.get(b"r")
        return (False, f[b"e"]) if ref is None else (True, ref)
    if f[0] == b"r":
        return True, f[1]
    return False, f[1] if f[0] == b"e" else _field(f, b"e")


def _field(flat: list[bytes], name: bytes) -> bytes:
    """A field's value in a stream entry's flat [field, value, ...] list."""
    for i in range(0, len(flat) - 1, 2):
        if flat[i] == name:
            return flat[i + 1]
    raise KeyError(name.decode())


def _version_of(entry_id: bytes | str) -> int:
    if isinstance(entry_id, bytes):
        return int(entry_id.split(b"-", 1)[0])
    return int(entry_id.split("-", 1)[0])
