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


# --- through the API (the CloudWatch Logs subset on the stageline endpoint) ----------------


def _api_line(e: dict[str, object], where: str) -> str:
    ms = int(e.get("timestamp", 0))  # type: ignore[call-overload]
    ts = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{ts[:-3]}Z [{where}] {e.get('message', '')}"


def print_logs_via_api(
    cp: object,
    logs: object,
    pipeline: str,
    *,
    execution: str | None = None,
    action: str | None = None,
    follow: bool = False,
    out: TextIO = sys.stdout,
    poll_s: float = FOLLOW_POLL_S,
) -> int:
    """``print_logs`` through the API: ``logs`` a botocore ``logs`` client and ``cp`` a
    ``codepipeline`` client of the same endpoint (DescribeLogStreams / GetLogEvents for the
    lines, ListActionExecutions for stage and action names, GetPipelineExecution to know
    when a followed execution has ended). Blocking: run it in a thread."""
    import time

    from app.logs import group_name, parse_stream_name

    group = group_name(pipeline)
    tokens: dict[str, str | None] = {}  # stream -> next forward token
    names: dict[str, str] = {}  # action execution id -> "stage/action"
    printed = 0
    last_pass = not follow
    while True:
        streams: list[dict[str, object]] = []
        paging: dict[str, str] = {}
        while True:
            page = logs.describe_log_streams(logGroupName=group, **paging)  # type: ignore[attr-defined]
            streams += page.get("logStreams", [])
            if not page.get("nextToken"):
                break
            paging = {"nextToken": page["nextToken"]}
        parsed = [(s, parse_stream_name(str(s["logStreamName"]))) for s in streams]
        mine = [(s, p) for s, p in parsed if p is not None]
        if execution is None and mine:  # the latest execution that has logs
            newest = max(mine, key=lambda sp: int(sp[0].get("creationTime", 0)))  # type: ignore[call-overload]
            assert newest[1] is not None
            execution = newest[1][0]
        chosen = [(s, p) for s, p in mine if p[0] == execution]
        if chosen and any(p[1] not in names for _, p in chosen):
            for d in cp.list_action_executions(  # type: ignore[attr-defined]
                pipelineName=pipeline, filter={"pipelineExecutionId": execution}
            )["actionExecutionDetails"]:
                names[d["actionExecutionId"]] = f"{d['stageName']}/{d['actionName']}"
        if action is not None:
            chosen = [(s, p) for s, p in chosen if names.get(p[1], "").endswith(f"/{action}")]
        for s, p in sorted(chosen, key=lambda sp: int(sp[0].get("creationTime", 0))):  # type: ignore[call-overload]
            stream = str(s["logStreamName"])
            where = names.get(p[1], stream)
            while True:
                args: dict[str, object] = {
                    "logGroupName": group,
                    "logStreamName": stream,
                    "startFromHead": True,
                }
                if tokens.get(stream):
                    args["nextToken"] = tokens[stream]
                got = logs.get_log_events(**args)  # type: ignore[attr-defined]
                for e in got.get("events", []):
                    print(_api_line(e, where), file=out)
                    printed += 1
                same = got.get("nextForwardToken") == tokens.get(stream)
                tokens[stream] = got.get("nextForwardToken")
                if same or not got.get("events"):
                    break
        out.flush()
        if last_pass:
            break
        if execution is not None:
            x = cp.get_pipeline_execution(  # type: ignore[attr-defined]
                pipelineName=pipeline, pipelineExecutionId=execution
            )["pipelineExecution"]
            if x["status"] not in _RUNNING:
                last_pass = True
                continue
        time.sleep(poll_s)
    if not tokens:
        which = f"execution {execution}" if execution else f"pipeline {pipeline}"
        what = f" of action {action}" if action else ""
        raise NoLogs(f"no action logs{what} for {which}")
    return printed
