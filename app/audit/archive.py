"""Export the event log to a portable JSONL archive, and import one into an empty Redis.

Archive format (one JSON object per line, ``kind`` says which):

- first line ``{"kind": "header", "format": "stageline-audit-archive", "formatVersion": 1,
  "namespace", "partitions", "exportedAt"}``;
- one line per stored event, pipeline by pipeline, in version order:
  ``{"kind": "event", "pipeline", "version", "hash", "type", "payload"}`` where ``payload`` is
  the stored payload *as a string, byte for byte* (so the chained hashes can be recomputed
  from the archive alone) and ``hash`` the hash stored with it;
- last line ``{"kind": "end", "entries", "pipelines": {name: {"last", "head"}}}``, so a cut
  archive (lost tail) is detected.

Import checks the whole archive first (versions consecutive from 1, every hash recomputed,
every payload decodes, the end line agrees), refuses a target that holds any stageline
pipeline log, then appends every event through the store's own append script, so the
target computes the hashes again and they are compared with the archived ones. Events that
one command appended together are appended together again with the same command id, so the
command-id table (idempotency) is restored too. The copies the append script puts on the
work-dispatch streams are removed afterwards unless ``keep_dispatch``: an imported archive
is inert, workers started on it do not re-run old actions.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import msgspec

from app.audit.common import (
    AuditError,
    StreamEntry,
    iso,
    iter_stream,
    log_streams,
    select_pipelines,
)
from app.audit.progress import Progress
from app.domain import events as ev
from app.store.eventstore import APPEND_LUA, EventStore, chain_hash, runs_on_engine

FORMAT = "stageline-audit-archive"
FORMAT_VERSION = 1


class Header(msgspec.Struct, tag_field="kind", tag="header", omit_defaults=True):
    format: str
    formatVersion: int
    namespace: str
    partitions: int
    exportedAt: str


class Entry(msgspec.Struct, tag_field="kind", tag="event", omit_defaults=True):
    pipeline: str
    version: int
    hash: str | None
    type: str | None = None
    payload: str | None = None
    payloadBase64: str | None = None  # only for a payload that is not UTF-8
    entryId: str | None = None  # only when the stream entry id is not <version>-0

    def raw(self) -> bytes:
        if self.payload is not None:
            return self.payload.encode()
        if self.payloadBase64 is not None:
            return base64.b64decode(self.payloadBase64, validate=True)
        raise ValueError("no payload")


class Head(msgspec.Struct):
    last: int
    head: str | None


class End(msgspec.Struct, tag_field="kind", tag="end"):
    entries: int
    pipelines: dict[str, Head]


Line = Header | Entry | End

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Line)


@dataclass(frozen=True)
class ArchiveStats:
    pipelines: int
    entries: int


class _Tag(msgspec.Struct):
    type: str


class _TypeOnly(msgspec.Struct):
    event: _Tag


_type_dec = msgspec.json.Decoder(_TypeOnly)


def _type_of(payload: bytes) -> str | None:
    """The event type of a payload (informational; None when it does not say)."""
    try:
        return _type_dec.decode(payload).event.type
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def export_archive(
    store: EventStore,
    out: TextIO,
    pipelines: Iterable[str] | None = None,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> ArchiveStats:
    """Write every stored event of the pipelines (all when None) to ``out`` as JSONL.

    Entries are written exactly as stored, tampered or not: run ``verify`` to judge them.
    """
    names = list(pipelines) if pipelines is not None else await select_pipelines(store, None)
    header = Header(
        FORMAT, FORMAT_VERSION, store.keys.namespace, store.keys.partitions, iso(time.time())
    )
    out.write(_enc.encode(header).decode() + "\n")
    heads: dict[str, Head] = {}
    total = 0
    for name in names:
        last, head = 0, None
        async for chunk in iter_stream(store.redis, store.keys.log(name), batch):
            lines = []
            for e in chunk:
                entry = _entry(name, e)
                lines.append(_enc.encode(entry).decode())
                last, head = e.version, e.hash
            out.write("\n".join(lines) + "\n")
            total += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
        if last:
            heads[name] = Head(last, head)
    out.write(_enc.encode(End(total, heads)).decode() + "\n")
    return ArchiveStats(len(names), total)


def _entry(pipeline: str, e: StreamEntry) -> Entry:
    odd = None if e.entry_id.endswith("-0") else e.entry_id
    if e.payload is None:
        return Entry(pipeline, e.version, e.hash, entryId=odd)
    try:
        payload = e.payload.decode()
    except UnicodeDecodeError:
        b64 = base64.b64encode(e.payload).decode()
        return Entry(pipeline, e.version, e.hash, payloadBase64=b64, entryId=odd)
    return Entry(pipeline, e.version, e.hash, _type_of(e.payload), payload, entryId=odd)


# --- reading and checking an archive ---------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, Line]]:
    try:
        f = path.open("rb")
    except OSError as err:
        raise AuditError(f"{path}: {err.strerror or err}") from None
    with f:
        first = True
        for no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = _dec.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                if first:
                    raise AuditError(f"{path}: not a stageline audit archive") from None
                raise AuditError(f"{path}:{no}: not an archive line: {err}") from None
            first = False
            yield no, line


@dataclass
class _Cursor:
    pipeline: str = ""
    last: int = 0
    head: str = ""


def check_archive(path: Path, *, progress: Progress | None = None) -> ArchiveStats:
    """Check an archive without touching Redis; raises AuditError at the first problem."""
    header_seen = False
    end: End | None = None
    done: dict[str, Head] = {}
    cur = _Cursor()
    commands: set[str] = set()
    prev_command: str | None = None
    entries = 0

    def close_pipeline() -> None:
        if cur.pipeline:
            done[cur.pipeline] = Head(cur.last, cur.head)

    for no, line in _lines(path):
        where = f"{path}:{no}"
        if not header_seen:
            if not isinstance(line, Header) or line.format != FORMAT:
                raise AuditError(f"{where}: not a stageline audit archive (no header line)")
            if line.formatVersion > FORMAT_VERSION:
                raise AuditError(
                    f"{where}: archive format {line.formatVersion} is newer "
                    f"than this stageline reads ({FORMAT_VERSION})"
                )
            header_seen = True
            continue
        if end is not None:
            raise AuditError(f"{where}: data after the end line")
        if isinstance(line, Header):
            raise AuditError(f"{where}: a second header line")
        if isinstance(line, End):
            end = line
            continue
        e = line
        if e.pipeline != cur.pipeline:
            close_pipeline()
            if e.pipeline in done:
                raise AuditError(f"{where}: pipeline {e.pipeline!r} appears twice")
            cur = _Cursor(e.pipeline)
            commands.clear()
            prev_command = None
        spot = f"{where}: pipeline {e.pipeline!r} version {e.version}"
        if e.entryId is not None:
            raise AuditError(f"{spot}: stream entry id {e.entryId} is not <version>-0")
        if e.version != cur.last + 1:
            raise AuditError(
                f"{spot}: expected version {cur.last + 1} (events missing or out of order)"
            )
        try:
            payload = e.raw()
        except (ValueError, binascii.Error) as err:
            raise AuditError(f"{spot}: bad payload: {err}") from None
        if e.hash is None or chain_hash(cur.head, e.version, payload) != e.hash:
            raise AuditError(
                f"{spot}: hash mismatch (the archive, or the log it was "
                "exported from, was altered; run verify on the source)"
            )
        try:
            env = ev.decode_payload(e.pipeline, e.version, payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise AuditError(f"{spot}: payload does not decode: {err}") from None
        if env.commandId is not None and env.commandId != prev_command:
            if env.commandId in commands:
                raise AuditError(f"{spot}: command id {env.commandId} appended twice")
            commands.add(env.commandId)
        prev_command = env.commandId
        cur.last, cur.head = e.version, e.hash
        entries += 1
        if progress is not None:
            progress.update(1)
    close_pipeline()
    if not header_seen:
        raise AuditError(f"{path}: empty file, not an archive")
    if end is None:
        raise AuditError(f"{path}: no end line: the archive is cut short")
    if end.entries != entries or end.pipelines != done:
        raise AuditError(
            f"{path}: the end line does not match the entries ({end.entries} "
            f"recorded, {entries} found; or a pipeline's last version/hash "
            "differs): the archive is incomplete or altered"
        )
    return ArchiveStats(len(done), entries)


# --- import ----------------------------------------------------------------------------------


@dataclass
class _Batch:
    pipeline: str
    command_id: str | None
    items: list[tuple[Entry, bytes, ev.Envelope]]


def _batches(path: Path, size: int) -> Iterator[_Batch]:
    """Entries grouped as they were appended: one command's events together, else by size."""
    b: _Batch | None = None
    for _no, line in _lines(path):
        if not isinstance(line, Entry):
            continue
        payload = line.raw()
        env = ev.decode_payload(line.pipeline, line.version, payload)
        same = (
            b is not None
            and b.pipeline == line.pipeline
            and b.command_id == env.commandId
            and (env.commandId is not None or len(b.items) < size)
        )
        if not same:
            if b is not None:
                yield b
            b = _Batch(line.pipeline, env.commandId, [])
        assert b is not None
        b.items.append((line, payload, env))
    if b is not None:
        yield b


async def _ensure_empty(store: EventStore) -> None:
    logs = await log_streams(store)
    listed = await store.pipelines()
    found = sorted(logs | set(listed))
    if found:
        some = ", ".join(repr(n) for n in found[:3]) + (", ..." if len(found) > 3 else "")
        raise AuditError(
            f"refused: the target Redis is not empty: it holds {len(found)} stageline "
            f"pipeline log(s) ({some}); import only into an empty Redis"
        )


async def import_archive(
    store: EventStore,
    path: Path,
    *,
    batch: int = 500,
    keep_dispatch: bool = False,
    progress: Progress | None = None,
) -> ArchiveStats:
    """Import an archive into an empty Redis; raises AuditError when refused."""
    stats = check_archive(path)
    await _ensure_empty(store)
    try:
        await store.ensure_config()
    except RuntimeError as err:
        raise AuditError(f"refused: {err}") from None
    append = store.redis.register_script(APPEND_LUA)
    k = store.keys
    partitions: set[int] = set()
    for b in _batches(path, batch):
        part = k.partition(b.pipeline)
        partitions.add(part)
        first = b.items[0][0].version
        argv: list[Any] = [
            b.pipeline,
            first - 1,
            b.command_id or "",
            store.dispatch_maxlen,
            len(b.items),
        ]
        for _e, payload, env in b.items:
            route = "1" if runs_on_engine(env.event) else "0"
            argv += [ev.event_type(env.event), route, payload]
        status, value = await append(
            keys=[
                k.log(b.pipeline),
                k.commands(b.pipeline),
                k.names(part),
                k.events(part),
                k.run(part),
            ],
            args=argv,
        )
        if (status.decode() if isinstance(status, bytes) else status) != "ok":
            raise AuditError(
                f"import failed at pipeline {b.pipeline!r} version {first}: the store answered "
                f"{status!r} {value!r} (someone else writes to this Redis?); the target holds a "
                "partial import: flush it before trying again"
            )
        last = b.items[-1][0]
        got = await store.read_raw(b.pipeline, after=last.version - 1, count=1)
        if not got or got[0].hash != last.hash:
            raise AuditError(
                f"refused: the hash the store computed for pipeline {b.pipeline!r} version "
                f"{last.version} differs from the archive's; the target holds a partial import: "
                "flush it before trying again"
            )
        if progress is not None:
            progress.update(len(b.items))
    if not keep_dispatch:
        for part in sorted(partitions):
            await store.redis.xtrim(k.events(part), maxlen=0, approximate=False)
            await store.redis.xtrim(k.run(part), maxlen=0, approximate=False)
    return stats


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ArchiveStats",
    "check_archive",
    "export_archive",
    "import_archive",
]
