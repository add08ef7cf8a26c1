"""Replay: fold a pipeline's log from scratch into a fresh state, now or as of a past point.

The log is every stream of the pipeline (its own and one per execution) merged in seq
order, read in chunks (``app.audit.common.merged_events``: an execution's stream is opened
when the merge reaches its start and dropped at its end), and each batch is folded and
dropped. So memory holds a chunk of the streams open at that point plus the state being
built: it does not grow with the length of the log, only with the size of the state
itself (the executions one pipeline holds). Pipelines are replayed one after the other
and each state is released after use. No snapshot, cache or other projection is read:
the result depends on the log alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from app import queries
from app.audit.common import AsOf, merged_events, select_pipelines
from app.audit.progress import Progress
from app.domain.state import PipelineState, evolve, new_state
from app.store.eventstore import EventStore


@dataclass(frozen=True)
class Replayed:
    pipeline: str
    state: PipelineState
    events: int  # events folded
    as_of: AsOf | None = None


async def replay_pipeline(
    store: EventStore,
    pipeline: str,
    *,
    as_of: AsOf | None = None,
    batch: int = 1000,
    progress: Progress | None = None,
) -> Replayed:
    """The state of ``pipeline`` folded from its first event (up to ``as_of`` when given)."""
    s = new_state(pipeline)
    until = as_of.version if as_of is not None else None
    limit = as_of.time if as_of is not None else None
    folded = 0
    chunks = merged_events(store, pipeline, batch=batch, until=until)
    try:
        async for chunk in chunks:
            n = 0
            for env in chunk:
                if limit is not None and env.time > limit:
                    break
                evolve(s, env)
                n += 1
            folded += n
            if progress is not None:
                progress.update(n)
            if n < len(chunk):
                break
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    return Replayed(pipeline, s, folded, as_of)


async def replay(
    store: EventStore,
    pipelines: Iterable[str] | None = None,
    *,
    as_of: AsOf | None = None,
    batch: int = 1000,
    progress: Progress | None = None,
) -> AsyncIterator[Replayed]:
    """Replay every pipeline (or those named), one at a time, in name order."""
    names = list(pipelines) if pipelines is not None else await select_pipelines(store, None)
    for name in names:
        yield await replay_pipeline(store, name, as_of=as_of, batch=batch, progress=progress)


async def events_to_replay(
    store: EventStore, pipelines: Iterable[str], as_of: AsOf | None = None
) -> int:
    """How many events a replay will read at most (for a progress bar's total)."""
    total = 0
    for name in pipelines:
        n = await store.version(name)
        if as_of is not None and as_of.version is not None:
            n = min(n, as_of.version)
        total += n
    return total


def projection(r: Replayed, *, full: bool = False) -> dict[str, Any]:
    """The replayed projection as a JSON document.

    ``pipelineState`` is the GetPipelineState output (``app.queries``), ``null`` when the
    pipeline did not exist at that point (not yet created, or deleted). ``full`` adds the
    whole folded state (every execution and attempt) under ``state``.
    """
    s = r.state
    doc: dict[str, Any] = {
        "pipeline": r.pipeline,
        "version": s.version,
        "events": r.events,
        "exists": s.declaration is not None,
        "pipelineState": queries.get_pipeline_state(s) if s.declaration is not None else None,
    }
    if r.as_of is not None:
        doc["asOf"] = str(r.as_of)
    if full:
        doc["state"] = msgspec.to_builtins(s)
    return doc
