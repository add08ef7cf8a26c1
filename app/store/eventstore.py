"""The event store: Redis Streams, one stream per pipeline, atomic appends in Lua.

``append`` is one Lua script, so it is atomic: it checks the expected version (optimistic
concurrency), checks the command id (a repeated command appends nothing and returns the
first result), writes every event to the pipeline's stream with entry id ``<version>-0`` and
a hash chained to the previous event (tamper evidence), and copies each event to the
partition's dispatch streams that workers consume. Only the dispatch streams are trimmed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.domain import events as ev
from app.domain.state import PipelineState
from app.store.keys import Keys

APPEND_LUA = r"""
-- KEYS: 1 log, 2 command ids, 3 partition names, 4 partition events, 5 partition run queue
-- ARGV: 1 pipeline, 2 expected version, 3 command id ('' = none), 4 dispatch maxlen,
--       5 event count, then per event: type, route ('1' = also to the run queue), payload
local cmd = ARGV[3]
if cmd ~= '' then
  local seen = redis.call('HGET', KEYS[2], cmd)
  if seen then return {'dup', seen} end
end
local cur = 0
local prev = ''
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  cur = tonumber(string.match(last[1][1], '^(%d+)-'))
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'h' then prev = f[i + 1] end
  end
end
local expected = tonumber(ARGV[2])
if cur ~= expected then
  -- also the events the writer missed (a few), so it can decide again without a read
  local out = {'conflict', tostring(cur)}
  if cur > expected and cur - expected <= 32 then
    local rows = redis.call('XRANGE', KEYS[1], (expected + 1) .. '-0', '+')
    for i = 1, #rows do
      local f = rows[i][2]
      for j = 1, #f, 2 do
        if f[j] == 'e' then out[#out + 1] = f[j + 1] end
      end
    end
  end
  return out
end
local n = tonumber(ARGV[5])
local maxlen = ARGV[4]
for i = 0, n - 1 do
  local typ = ARGV[6 + i * 3]
  local route = ARGV[7 + i * 3]
  local payload = ARGV[8 + i * 3]
  local v = cur + i + 1
  local h = redis.sha1hex(prev .. '\n' .. v .. '\n' .. payload)
  redis.call('XADD', KEYS[1], v .. '-0', 'e', payload, 'h', h)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
             'p', ARGV[1], 'v', v, 't', typ, 'e', payload)
  if route == '1' then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'p', ARGV[1], 'v', v, 'e', payload)
  end
  prev = h
end
if cur == 0 then redis.call('SADD', KEYS[3], ARGV[1]) end
if cmd ~= '' then redis.call('HSET', KEYS[2], cmd, (cur + 1) .. ':' .. (cur + n)) end
return {'ok', tostring(cur + n)}
"""

SNAPSHOT_LUA = r"""
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
  return 1
end
return 0
"""


class ConcurrencyError(Exception):
    """The stream is not at the expected version (someone else appended first).

    ``missing``: the events after ``expected`` up to ``actual`` when the append script sent
    them along (a few at most), else empty.
    """

    def __init__(
        self,
        pipeline: str,
        expected: int,
        actual: int,
        missing: Sequence[ev.Envelope] = (),
    ) -> None:
        super().__init__(f"{pipeline}: expected version {expected}, stream is at {actual}")
        self.pipeline = pipeline
        self.expected = expected
        self.actual = actual
        self.missing = list(missing)


@dataclass(frozen=True)
class AppendResult:
    first: int
    last: int
    duplicate: bool = False


@dataclass(frozen=True)
class RawEntry:
    """One stored event as it is in Redis: version, payload bytes, chained hash."""

    version: int
    payload: bytes
    hash: str


def runs_on_engine(e: ev.Event) -> bool:
    """Events that go to the partition's run queue: actions the engine runs itself."""
    return isinstance(e, ev.ActionExecutionScheduled) and e.kind == "commands"


def chain_hash(prev: str, version: int, payload: bytes) -> str:
    """The hash the append script stores: sha1(prev \\n version \\n payload), hex."""
    import hashlib

    return hashlib.sha1(prev.encode() + b"\n" + str(version).encode() + b"\n" + payload).hexdigest()


_snap_encoder = msgspec.json.Encoder()
_snap_decoder = msgspec.json.Decoder(PipelineState)


class EventStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys | None = None,
        *,
        dispatch_maxlen: int = 200_000,
        route: Callable[[ev.Event], bool] = runs_on_engine,
    ) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.dispatch_maxlen = dispatch_maxlen
        self._route = route
        self._append = redis.register_script(APPEND_LUA)
        self._snapshot = redis.register_script(SNAPSHOT_LUA)
        # The same connections, but XRANGE replies stay as Redis sends them (no per-entry
        # dict): ``read`` is the hot path of every load, catch-up and replay.
        self._raw = Redis(connection_pool=redis.connection_pool)
        self._raw.response_callbacks.pop("XRANGE", None)

    async def ensure_config(self) -> None:
        """Record the partition count on first use; refuse to run with a different one."""
        key = self.keys.config()
        await self.redis.hsetnx(key, "partitions", str(self.keys.partitions))
        stored: Any = await self.redis.hget(key, "partitions")
        if stored is not None and int(stored) != self.keys.partitions:
            raise RuntimeError(
                f"this Redis holds stageline data laid out in {int(stored)} partitions, "
                f"not {self.keys.partitions}; start with --partitions {int(stored)}"
            )

    async def append(
        self,
        pipeline: str,
        expected_version: int,
        envelopes: Sequence[ev.Envelope],
        *,
        command_id: str | None = None,
    ) -> AppendResult:
        """Append atomically at ``expected_version``; raises ConcurrencyError otherwise."""
        if not envelopes:
            return AppendResult(expected_version + 1, expected_version)
        k = self.keys
        part = k.partition(pipeline)
        argv: list[Any] = [
            pipeline,
            expected_version,
            command_id or "",
            self.dispatch_maxlen,
            len(envelopes),
        ]
        for i, env in enumerate(envelopes):
            if env.version != expected_version + i + 1 or env.pipeline != pipeline:
                raise ValueError(f"envelope {env.id} is not version {expected_version + i + 1}")
            argv += [
                type(env.event).__name__,
                "1" if self._route(env.event) else "0",
                ev.encode_payload(env),
            ]
        status, value, *missed = await self._append(
            keys=[
                k.log(pipeline),
                k.commands(pipeline),
                k.names(part),
                k.events(part),
                k.run(part),
            ],
            args=argv,
        )
        status = status.decode() if isinstance(status, bytes) else status
        value = value.decode() if isinstance(value, bytes) else value
        if status == "ok":
            return AppendResult(expected_version + 1, int(value))
        if status == "dup":
            first, last = value.split(":")
            return AppendResult(int(first), int(last), duplicate=True)
        missing = [
            ev.decode_payload(pipeline, expected_version + 1 + i, payload)
            for i, payload in enumerate(missed)
        ]
        raise ConcurrencyError(pipeline, expected_version, int(value), missing)

    async def command_seen(self, pipeline: str, command_id: str) -> bool:
        """Whether an append with this command id went through."""
        return bool(await self.redis.hexists(self.keys.commands(pipeline), command_id))

    async def command_versions(self, pipeline: str, command_id: str) -> tuple[int, int] | None:
        """The versions (first, last) an append with this command id wrote, if any."""
        raw: Any = await self.redis.hget(self.keys.commands(pipeline), command_id)
        if raw is None:
            return None
        first, last = _text(raw).split(":")
        return int(first), int(last)

    async def version(self, pipeline: str) -> int:
        last: Any = await self.redis.xrevrange(self.keys.log(pipeline), count=1)
        if not last:
            return 0
        return _version_of(last[0][0])

    async def read_raw(
        self, pipeline: str, after: int = 0, count: int | None = None, until: int | None = None
    ) -> list[RawEntry]:
        hi = f"{until}-0" if until is not None else "+"
        rows: Any = await self.redis.xrange(
            self.keys.log(pipeline), min=f"{after + 1}-0", max=hi, count=count
        )
        return [
            RawEntry(_version_of(rid), fields[b"e"], _text(fields.get(b"h", b"")))
            for rid, fields in rows
        ]

    async def read(
        self, pipeline: str, after: int = 0, count: int | None = None, until: int | None = None
    ) -> list[ev.Envelope]:
        """Events with version > ``after`` (and <= ``until``), in order."""
        hi = f"{until}-0" if until is not None else "+"
        rows: Any = await self._raw.xrange(
            self.keys.log(pipeline), min=f"{after + 1}-0", max=hi, count=count
        )
        # rows: [[id, [field, value, ...]], ...]; the append script writes "e" first
        decode = ev.decode_payload
        return [
            decode(pipeline, _version_of(rid), f[1] if f[0] == b"e" else _field(f, b"e"))
            for rid, f in rows
        ]

    async def iter_events(
        self, pipeline: str, after: int = 0, batch: int = 1000, until: int | None = None
    ) -> AsyncIterator[list[ev.Envelope]]:
        """The whole stream from ``after`` in batches (memory stays bounded)."""
        pos = after
        while True:
            chunk = await self.read(pipeline, pos, batch, until)
            if not chunk:
                return
            yield chunk
            pos = chunk[-1].version
            if len(chunk) < batch:
                return

    async def pipelines(self) -> list[str]:
        """Every pipeline that has a stream (including deleted ones), sorted."""
        names: set[str] = set()
        for p in range(self.keys.partitions):
            members: Any = await self.redis.smembers(self.keys.names(p))
            names.update(_text(n) for n in members)
        return sorted(names)

    async def save_snapshot(self, state: PipelineState) -> bool:
        """Store a projection snapshot unless a newer one is already there."""
        if state.partial:
            raise ValueError("only a full state can be a snapshot")
        done = await self._snapshot(
            keys=[self.keys.snapshot(state.name)],
            args=[state.version, _snap_encoder.encode(state)],
        )
        return bool(done)

    async def load_snapshot(self, pipeline: str) -> PipelineState | None:
        data: Any = await self.redis.hget(self.keys.snapshot(pipeline), "s")
        if data is None:
            return None
        return _snap_decoder.decode(data)

    async def drop_snapshot(self, pipeline: str) -> None:
        await self.redis.delete(self.keys.snapshot(pipeline))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


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
