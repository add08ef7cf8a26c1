"""``stageline logs PIPELINE [--execution ID] [--action NAME] [--follow]``.

Prints the action logs of one execution (default: the pipeline's latest execution that has
logs), oldest action first, each line as ``<time> [<stage>/<action>] <line>``. With
``--follow`` it keeps printing new lines (and new actions' logs) until the execution has
ended and every log it printed is complete.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TextIO

import anyio
from redis.asyncio import Redis

from app.domain.errors import DomainError
from app.engine import Engine
from app.logs import LogEvent, LogReader, StreamInfo, dropped_marker
from app.store.keys import Keys

__all__ = ["print_logs"]

FOLLOW_POLL_S = 0.3
_PAGE = 1000
_RUNNING = ("InProgress", "Stopping")


class NoLogs(Exception):
    pass


def _line(e: LogEvent, info: StreamInfo) -> str:
    ts = dt.datetime.fromtimestamp(e.timestamp / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{ts[:-3]}Z [{info.meta.stage}/{info.meta.action}] {e.message}"


async def _select(
    reader: LogReader, pipeline: str, execution: str | None, action: str | None
) -> tuple[str | None, list[StreamInfo]]:
    infos = await reader.streams(pipeline)
    if execution is None:
        if not infos:
            return None, []
        execution = max(infos, key=lambda i: i.meta.created).meta.executionId
    chosen = [i for i in infos if i.meta.executionId == execution]
    if action is not None:
        chosen = [i for i in chosen if i.meta.action == action]
    return execution, chosen


async def print_logs(
    redis: Redis,
    keys: Keys,
    pipeline: str,
    *,
    execution: str | None = None,
    action: str | None = None,
    follow: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Print the selected logs; the number of lines printed. ``NoLogs`` when there are none
    (and, with ``follow``, none can come any more)."""
    reader = LogReader(redis, keys)
    engine = Engine(redis, keys) if follow else None
    cursors: dict[str, int] = {}  # stream name -> next line number
    printed = 0
    last_pass = not follow
    while True:
        chosen_execution, chosen = await _select(reader, pipeline, execution, action)
        if execution is None and follow and chosen_execution is not None:
            execution = chosen_execution  # follow the execution we started with
        for info in sorted(chosen, key=lambda i: i.meta.created):
            n = cursors.get(info.name, 1)
            while True:
                page = await reader.forward(pipeline, info.name, n, _PAGE)
                if not page:
                    break
                if page[0].seq > n:  # lines dropped past the cap before we read them
                    gap = LogEvent(page[0].seq - n + 1, page[0].timestamp, "")
                    marker = dropped_marker(gap)
                    if marker is not None:
                        print(_line(marker, info), file=out)
                for e in page:
                    print(_line(e, info), file=out)
                printed += len(page)
                n = page[-1].seq + 1
            cursors[info.name] = n
        out.flush()
        if last_pass:
            break
        assert engine is not None
        if await _finished(engine, pipeline, execution):
            last_pass = True  # one more read: lines written just before it ended
            continue
        await anyio.sleep(FOLLOW_POLL_S)
    if not cursors:
        which = f"execution {execution}" if execution else f"pipeline {pipeline}"
        what = f" of action {action}" if action else ""
        raise NoLogs(f"no action logs{what} for {which}")
    return printed


async def _finished(engine: Engine, pipeline: str, execution: str | None) -> bool:
    """True once the followed execution is over (its logs are complete by then: a runner
    stores an action's last lines before it records the result)."""
    if execution is None:
        return False  # nothing yet: wait for the first log
    try:
        _, x = await engine.execution(pipeline, execution)
    except DomainError:
        return True  # the pipeline or the execution is gone
    return x.status not in _RUNNING
