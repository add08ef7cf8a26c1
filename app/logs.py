"""Action logs: every action execution's complete output, in Redis streams.

One stream per action execution holds its output lines (stdout and stderr interleaved, as
the action wrote them), each with the time it was read. The stream is capped at
``max_lines`` entries (``XADD ... MAXLEN``): past the cap the oldest lines are dropped, and
readers show a marker line saying how many. Lines longer than ``line_bytes`` are split.
Entry ids are ``<line number>-0`` (line numbers start at 1 and count dropped lines too), so
"how many were dropped" is the first entry's number minus one, and paging by line number is
an indexed ``XRANGE``.

Names, as the CloudWatch Logs-compatible API shows them:

* log group ``/aws/codepipeline/<pipeline>``
* log stream ``<pipelineExecutionId>/<actionExecutionId>``
* ARN ``arn:aws:logs:<region>:<account>:log-group:<group>:log-stream:<stream>``
  (:func:`log_stream_arn`)

Key layout (every key of a pipeline carries its partition's hash tag, like the event log):

* ``<ns>:{<ns>.<n>}:alog:<pipeline>:<actionExecutionId>`` (stream): the lines, entry id
  ``<n>-0``, fields ``t`` (ms), ``m`` (bytes) and ``x`` on the runner's closing line;
* ``<ns>:{<ns>.<n>}:alogs:<pipeline>`` (zset): the pipeline's streams by creation (ms);
* ``<ns>:{<ns>.<n>}:alogmeta:<pipeline>`` (hash): stream name -> JSON (stage, action, ids);
* ``<ns>:loggroups`` (zset): pipelines that have logs, by first log (ms).

Every key gets the retention (``EXPIRE``) again on each write; the default keeps logs for 30
days after an action's last line.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import anyio
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from app.store.keys import Keys

__all__ = [
    "DEFAULT_LINE_BYTES",
    "DEFAULT_MAX_LINES",
    "DEFAULT_RETENTION_S",
    "ActionLogWriter",
    "LogEvent",
    "LogKeys",
    "StreamInfo",
    "group_name",
    "log_stream_arn",
    "parse_stream_name",
    "stream_name",
]

log = logging.getLogger("stageline.logs")

DEFAULT_MAX_LINES = 20_000
DEFAULT_LINE_BYTES = 2048
DEFAULT_RETENTION_S = 30 * 24 * 3600
GROUP_PREFIX = "/aws/codepipeline/"
_FLUSH_EVERY_S = 0.2
_FLUSH_BATCH = 2000


def group_name(pipeline: str) -> str:
    return f"{GROUP_PREFIX}{pipeline}"


def pipeline_of_group(group: str) -> str | None:
    if not group.startswith(GROUP_PREFIX) or len(group) == len(GROUP_PREFIX):
        return None
    return group[len(GROUP_PREFIX) :]


def stream_name(execution_id: str, action_execution_id: str) -> str:
    return f"{execution_id}/{action_execution_id}"


def parse_stream_name(name: str) -> tuple[str, str] | None:
    """``(executionId, actionExecutionId)`` of a stream name, or None."""
    execution_id, sep, action_execution_id = name.partition("/")
    if not sep or not execution_id or not action_execution_id or "/" in action_execution_id:
        return None
    return execution_id, action_execution_id


def log_stream_arn(
    region: str, account: str, pipeline: str, execution_id: str, action_execution_id: str
) -> str:
    """The ``logStreamARN`` of an action execution's log (for ListActionExecutions)."""
    group = group_name(pipeline)
    stream = stream_name(execution_id, action_execution_id)
    return f"arn:aws:logs:{region}:{account}:log-group:{group}:log-stream:{stream}"


def log_group_arn(region: str, account: str, pipeline: str) -> str:
    return f"arn:aws:logs:{region}:{account}:log-group:{group_name(pipeline)}:*"


@dataclass(frozen=True)
class LogKeys:
    keys: Keys

    def _p(self, pipeline: str) -> str:
        k = self.keys
        return f"{k.namespace}:{k.tag(k.partition(pipeline))}"

    def stream(self, pipeline: str, action_execution_id: str) -> str:
        return f"{self._p(pipeline)}:alog:{pipeline}:{action_execution_id}"

    def index(self, pipeline: str) -> str:
        return f"{self._p(pipeline)}:alogs:{pipeline}"

    def meta(self, pipeline: str) -> str:
        return f"{self._p(pipeline)}:alogmeta:{pipeline}"

    def groups(self) -> str:
        return f"{self.keys.namespace}:loggroups"


class StreamMeta(msgspec.Struct, frozen=True):
    executionId: str
    actionExecutionId: str
    stage: str
    action: str
    created: int  # ms


@dataclass(frozen=True)
class LogEvent:
    seq: int  # line number, from 1
    timestamp: int  # ms
    message: str
    last: bool = False  # the runner's closing line


@dataclass(frozen=True)
class StreamInfo:
    name: str
    meta: StreamMeta
    first: LogEvent | None
    last: LogEvent | None
    stored_bytes: int

    @property
    def finished(self) -> bool:
        return self.last is not None and self.last.last


# --- writing ---------------------------------------------------------------------------------


_Line = tuple[int, int, bytes]  # seq, ms, message


class ActionLogWriter:
    """Collects one action execution's output and appends it to its stream.

    ``write``/``note`` are synchronous and never block: lines wait in a buffer of at most
    ``max_lines`` (older ones are dropped there already, as they would be in Redis), and
    :meth:`run` sends them every 0.2 s. So memory stays bounded however fast an action
    prints, and a slow or unreachable Redis never stalls the action.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        pipeline: str,
        execution_id: str,
        action_execution_id: str,
        stage: str,
        action: str,
        max_lines: int = DEFAULT_MAX_LINES,
        line_bytes: int = DEFAULT_LINE_BYTES,
        retention_s: int = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_lines < 1 or line_bytes < 16:
            raise ValueError("max_lines must be >= 1 and line_bytes >= 16")
        self.redis = redis
        self.lkeys = LogKeys(keys)
        self.pipeline = pipeline
        self.key = self.lkeys.stream(pipeline, action_execution_id)
        self.name = stream_name(execution_id, action_execution_id)
        self.meta = StreamMeta(execution_id, action_execution_id, stage, action, 0)
        self.max_lines = max_lines
        self.line_bytes = line_bytes
        self.retention_s = retention_s
        self.clock = clock
        self.pending: deque[_Line] = deque(maxlen=max_lines)
        self.partial = b""
        self.seq = 0  # last line number given out
        self.sent = 0  # last line number stored
        self.last_seq = 0  # the closing line's number, once closed
        self.registered = False
        self._wake = anyio.Event()

    # -- collecting (sync) --

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def write(self, data: bytes) -> None:
        if not data:
            return
        buf = self.partial + data if self.partial else data
        lines = buf.split(b"\n")
        self.partial = lines.pop()
        while len(self.partial) > self.line_bytes:  # an unfinished line is cut as it grows
            head, self.partial = _cut(self.partial, self.line_bytes)
            lines.append(head)
        self._add(lines, self._now())

    def note(self, text: str) -> None:
        """A line of stageline's own (``[stageline] text``); ends an unfinished line first."""
        lines = [self.partial] if self.partial else []
        self.partial = b""
        self._add([*lines, f"[stageline] {text}".encode()], self._now())

    def _add(self, lines: list[bytes], ms: int) -> None:
        if not lines:
            return
        if max(map(len, lines)) > self.line_bytes:
            lines = list(_split_long(lines, self.line_bytes))
        if len(lines) > self.max_lines:  # only the last max_lines could be kept anyway
            self.seq += len(lines) - self.max_lines
            lines = lines[-self.max_lines :]
        first = self.seq + 1
        self.seq += len(lines)
        self.pending.extend(zip(range(first, self.seq + 1), repeat(ms), lines, strict=False))
        if len(self.pending) >= _FLUSH_BATCH:
            self._wake.set()

    # -- storing (async) --

    async def open(self) -> None:
        """Register the stream, so readers see it before its first line. Never raises for
        Redis trouble: registering is tried again with every flush until it succeeded."""
        self.meta = msgspec.structs.replace(self.meta, created=self._now())
        try:
            await self._register()
        except (RedisError, OSError) as err:
            log.warning("action log %s: %s (will retry)", self.name, err)

    async def _register(self) -> None:
        meta, now, lk = self.meta, self.meta.created, self.lkeys
        async with self.redis.pipeline(transaction=False) as p:
            p.zadd(lk.index(self.pipeline), {self.name: now}, nx=True)
            p.hset(lk.meta(self.pipeline), self.name, msgspec.json.encode(meta))
            p.zadd(lk.groups(), {self.pipeline: now}, nx=True)
            if self.retention_s:
                p.expire(lk.index(self.pipeline), self.retention_s)
                p.expire(lk.meta(self.pipeline), self.retention_s)
            await p.execute()
        self.registered = True

    async def flush(self) -> None:
        if not self.registered:
            await self._register()
        while self.pending:
            batch = [line for line in self.pending if line[0] > self.sent][:_FLUSH_BATCH]
            if not batch:
                break
            async with self.redis.pipeline(transaction=False) as p:
                for seq, ms, msg in batch:
                    fields: dict[Any, Any] = {"t": ms, "m": msg}
                    if seq == self.last_seq:
                        fields["x"] = 1
                    p.xadd(
                        self.key, fields, id=f"{seq}-0", maxlen=self.max_lines, approximate=False
                    )
                if self.retention_s:
                    p.expire(self.key, self.retention_s)
                results = await p.execute(raise_on_error=False)
            for r in results:
                # a retried batch: the lines that got through the first time are refused
                if isinstance(r, ResponseError) and "equal or smaller" not in str(r):
                    raise r
            self.sent = batch[-1][0]
            while self.pending and self.pending[0][0] <= self.sent:
                self.pending.popleft()

    async def run(self) -> None:
        """Send what was collected every 0.2 s until cancelled (errors are logged)."""
        while True:
            with anyio.move_on_after(_FLUSH_EVERY_S):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.flush()
            except (RedisError, OSError) as err:
                log.warning("action log %s: %s (will retry)", self.name, err)

    async def close(self, text: str, *, patience_s: float = 10.0) -> None:
        """Store the unfinished last line, the closing ``[stageline] text`` line, and the rest."""
        if self.partial:
            self._add([self.partial], self._now())
            self.partial = b""
        self.note(text)
        self.last_seq = self.seq
        with anyio.move_on_after(patience_s):
            while True:
                try:
                    await self.flush()
                    return
                except (RedisError, OSError) as err:
                    log.warning("action log %s: %s (retrying)", self.name, err)
                    await anyio.sleep(0.5)
        log.error("action log %s: gave up storing its last %d lines", self.name, len(self.pending))


def _cut(data: bytes, limit: int) -> tuple[bytes, bytes]:
    """Cut ``data`` at most ``limit`` bytes in, not inside a UTF-8 sequence when avoidable."""
    cut = limit
    while cut > limit - 4 and cut < len(data) and 0x80 <= data[cut] <= 0xBF:
        cut -= 1
    if cut <= limit - 4:
        cut = limit
    return data[:cut], data[cut:]


def _split_long(lines: Iterable[bytes], limit: int) -> Iterable[bytes]:
    for line in lines:
        while len(line) > limit:
            head, line = _cut(line, limit)
            yield head
        yield line


# --- reading ---------------------------------------------------------------------------------


def _event(entry_id: Any, fields: Any) -> LogEvent:
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return LogEvent(
        seq=int(raw_id.split("-", 1)[0]),
        timestamp=int(fields.get(b"t", b"0")),
        message=fields.get(b"m", b"").decode("utf-8", errors="replace"),
        last=b"x" in fields,
    )


class LogReader:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.lkeys = LogKeys(keys)

    async def groups(self) -> list[tuple[str, int]]:
        """``(pipeline, created ms)`` of every pipeline with logs, by name."""
        raw: Any = await self.redis.zrange(self.lkeys.groups(), 0, -1, withscores=True)
        return sorted((m.decode(), int(s)) for m, s in raw)

    async def stream_names(self, pipeline: str) -> list[tuple[str, int]]:
        """``(stream name, created ms)`` of a pipeline's streams, oldest first."""
        raw: Any = await self.redis.zrange(self.lkeys.index(pipeline), 0, -1, withscores=True)
        return [(m.decode(), int(s)) for m, s in raw]

    async def streams(self, pipeline: str, names: list[str] | None = None) -> list[StreamInfo]:
        """Details of the pipeline's streams (all, or ``names``), oldest first."""
        if names is None:
            names = [n for n, _ in await self.stream_names(pipeline)]
        if not names:
            return []
        metas: Any = await self.redis.hmget(self.lkeys.meta(pipeline), names)
        async with self.redis.pipeline(transaction=False) as p:
            for name in names:
                key = self._key(pipeline, name)
                p.xrange(key, count=1)
                p.xrevrange(key, count=1)
                p.xlen(key)
            raw = await p.execute()
        out = []
        for i, name in enumerate(names):
            if metas[i] is None:
                continue
            meta = msgspec.json.decode(metas[i], type=StreamMeta)
            first, last, length = raw[3 * i : 3 * i + 3]
            f = _event(*first[0]) if first else None
            la = _event(*last[0]) if last else None
            # an estimate (CloudWatch's storedBytes is deprecated and approximate too)
            size = 0
            if f is not None and la is not None:
                size = int(length) * max(1, (len(f.message) + len(la.message)) // 2 + 8)
            out.append(StreamInfo(name, meta, f, la, size))
        return out

    def _key(self, pipeline: str, name: str) -> str:
        parsed = parse_stream_name(name)
        assert parsed is not None
        return self.lkeys.stream(pipeline, parsed[1])

    async def exists(self, pipeline: str, name: str) -> bool:
        return bool(await self.redis.hexists(self.lkeys.meta(pipeline), name))

    async def forward(
        self, pipeline: str, name: str, from_seq: int, count: int
    ) -> list[LogEvent]:
        """Up to ``count`` lines numbered ``>= from_seq``, oldest first."""
        raw: Any = await self.redis.xrange(
            self._key(pipeline, name), min=f"{max(1, from_seq)}-0", count=count
        )
        return [_event(i, f) for i, f in raw]

    async def backward(
        self, pipeline: str, name: str, before_seq: int | None, count: int
    ) -> list[LogEvent]:
        """Up to ``count`` lines numbered ``< before_seq`` (None: the newest), oldest first."""
        if before_seq is not None and before_seq <= 1:
            return []
        top = "+" if before_seq is None else f"({before_seq}-0"
        raw: Any = await self.redis.xrevrange(self._key(pipeline, name), max=top, count=count)
        return [_event(i, f) for i, f in reversed(raw)]

    async def first_seq(self, pipeline: str, name: str) -> int | None:
        raw: Any = await self.redis.xrange(self._key(pipeline, name), count=1)
        return _event(*raw[0]).seq if raw else None


def dropped_marker(first: LogEvent) -> LogEvent | None:
    """The line shown in place of lines dropped past the cap (None when nothing was)."""
    if first.seq <= 1:
        return None
    n = first.seq - 1
    noun = "line" if n == 1 else "lines"
    return LogEvent(
        0,
        first.timestamp,
        f"[stageline] {n} earlier {noun} dropped: the log keeps an action's last lines only",
    )
