"""A CloudWatch Logs-compatible subset over the action logs (:mod:`app.logs`).

Served on the same endpoint and with the same authentication as the CodePipeline API, with
``X-Amz-Target: Logs_20140328.<Operation>``, so ``boto3.client("logs", endpoint_url=...)``
and ``aws logs ... --endpoint-url ...`` work unchanged:

* ``GetLogEvents``: one stream's lines; ``startFromHead``, ``startTime``/``endTime``,
  ``limit`` (at most 10,000) and forward (``f/<n>``) / backward (``b/<n>``) tokens. Reading
  forward to the end returns the same ``nextForwardToken`` that was passed, as AWS does.
* ``FilterLogEvents``: lines of a group's streams (``logStreamNames`` or
  ``logStreamNamePrefix``) matching a ``filterPattern`` of terms (all must appear),
  ``"quoted phrases"``, ``?alternatives`` (one of them must appear) and ``-exclusions``.
  JSON/space-delimited patterns are refused.
* ``DescribeLogStreams`` and ``DescribeLogGroups`` with prefixes, ordering and paging.

Groups are ``/aws/codepipeline/<pipeline>``, streams ``<executionId>/<actionExecutionId>``.
Lines dropped past the log's cap show as one ``[stageline] N earlier lines dropped`` event.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app.api.errors import AwsError
from app.api.wire import RequestContext
from app.logs import (
    LogEvent,
    LogReader,
    StreamInfo,
    dropped_marker,
    group_name,
    log_group_arn,
    log_stream_arn,
    parse_stream_name,
    pipeline_of_group,
)
from app.store.keys import Keys

__all__ = ["LOGS_TARGET_PREFIX", "RawHandler", "build_logs_handlers"]

LOGS_TARGET_PREFIX = "Logs_20140328."
RawHandler = Callable[[Any, RequestContext], Awaitable[Any]]

REGION = "us-east-1"
ACCOUNT = "123456789012"
MAX_EVENTS = 10_000
MAX_DESCRIBE = 50
FILTER_SCAN = 10_000  # lines examined per FilterLogEvents call, then a nextToken
_PAGE = 1000


class _Base(msgspec.Struct, forbid_unknown_fields=False):
    pass


class GetLogEventsIn(_Base):
    logStreamName: str
    logGroupName: str | None = None
    logGroupIdentifier: str | None = None
    startTime: int | None = None
    endTime: int | None = None
    nextToken: str | None = None
    limit: int | None = None
    startFromHead: bool | None = None
    unmask: bool | None = None


class FilterLogEventsIn(_Base):
    logGroupName: str | None = None
    logGroupIdentifier: str | None = None
    logStreamNames: list[str] | None = None
    logStreamNamePrefix: str | None = None
    startTime: int | None = None
    endTime: int | None = None
    filterPattern: str | None = None
    nextToken: str | None = None
    limit: int | None = None
    interleaved: bool | None = None
    unmask: bool | None = None


class DescribeLogStreamsIn(_Base):
    logGroupName: str | None = None
    logGroupIdentifier: str | None = None
    logStreamNamePrefix: str | None = None
    orderBy: str | None = None
    descending: bool | None = None
    nextToken: str | None = None
    limit: int | None = None


class DescribeLogGroupsIn(_Base):
    logGroupNamePrefix: str | None = None
    logGroupNamePattern: str | None = None
    nextToken: str | None = None
    limit: int | None = None
    accountIdentifiers: list[str] | None = None
    includeLinkedAccounts: bool | None = None
    logGroupClass: str | None = None


def _invalid(message: str) -> AwsError:
    return AwsError("InvalidParameterException", message)


def _not_found(message: str) -> AwsError:
    return AwsError("ResourceNotFoundException", message)


def _decode(cls: type[Any], body: Any) -> Any:
    try:
        return msgspec.convert(body, cls)
    except msgspec.ValidationError as err:
        raise _invalid(f"1 validation error detected: {err}") from None


def _limit(value: int | None, default: int, top: int) -> int:
    if value is None:
        return default
    if not 1 <= value <= top:
        raise _invalid(f"limit must be between 1 and {top}, got {value}")
    return value


def _group(name: str | None, identifier: str | None) -> str:
    """The pipeline of a log group given by name or identifier (name or ARN)."""
    if name is not None and identifier is not None:
        raise _invalid("give logGroupName or logGroupIdentifier, not both")
    value = name if name is not None else identifier
    if value is None:
        raise _invalid("logGroupName (or logGroupIdentifier) is required")
    if value.startswith("arn:"):
        m = re.fullmatch(r"arn:aws:logs:[^:]*:[^:]*:log-group:([^:]+)(?::\*)?", value)
        if m is None:
            raise _invalid(f"not a log group ARN: {value}")
        value = m.group(1)
    pipeline = pipeline_of_group(value)
    if pipeline is None:
        raise _not_found(f"The specified log group does not exist: {value}")
    return pipeline


def _event_json(e: LogEvent) -> dict[str, Any]:
    return {"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.timestamp}


def _token(value: str, kinds: str) -> tuple[str, int]:
    m = re.fullmatch(r"([fb])/(\d{1,19})", value)
    if m is None or m.group(1) not in kinds:
        raise _invalid("The specified nextToken is invalid.")
    return m.group(1), int(m.group(2))


class _Logs:
    def __init__(self, reader: LogReader) -> None:
        self.reader = reader

    async def _require_group(self, pipeline: str) -> None:
        names = {p for p, _ in await self.reader.groups()}
        if pipeline not in names:
            raise _not_found(f"The specified log group does not exist: {group_name(pipeline)}")

    async def _require_stream(self, pipeline: str, stream: str) -> None:
        if parse_stream_name(stream) is None or not await self.reader.exists(pipeline, stream):
            await self._require_group(pipeline)
            raise _not_found(f"The specified log stream does not exist: {stream}")

    # -- GetLogEvents --

    async def get_log_events(self, body: Any, ctx: RequestContext) -> dict[str, Any]:
        inp: GetLogEventsIn = _decode(GetLogEventsIn, body)
        pipeline = _group(inp.logGroupName, inp.logGroupIdentifier)
        stream = inp.logStreamName
        await self._require_stream(pipeline, stream)
        limit = _limit(inp.limit, MAX_EVENTS, MAX_EVENTS)
        if inp.nextToken is not None:
            kind, n = _token(inp.nextToken, "fb")
        elif inp.startFromHead:
            kind, n = "f", 1
        else:
            kind, n = "b", 0  # the newest
        timed = inp.startTime is not None or inp.endTime is not None
        if kind == "f":
            events = await self._forward(pipeline, stream, n, limit, inp) if timed else (
                await self.reader.forward(pipeline, stream, n, limit)
            )
            if not events:
                return {"events": [], "nextForwardToken": f"f/{n}", "nextBackwardToken": f"b/{n}"}
            shown = list(events)
            if events[0].seq > n and (marker := _gap(n, events[0])) is not None:
                shown.insert(0, marker)
        else:
            before = None if n == 0 else n
            events = await self._backward(pipeline, stream, before, limit, inp)
            if not events:
                top = 1 if before is None else before
                return {
                    "events": [],
                    "nextForwardToken": f"f/{top}",
                    "nextBackwardToken": f"b/{top}",
                }
            shown = list(events)
            if len(events) < limit and (marker := dropped_marker(events[0])) is not None:
                shown.insert(0, marker)  # reached the oldest stored line
        return {
            "events": [_event_json(e) for e in shown],
            "nextForwardToken": f"f/{events[-1].seq + 1}",
            "nextBackwardToken": f"b/{events[0].seq}",
        }

    async def _forward(
        self, pipeline: str, stream: str, n: int, limit: int, inp: GetLogEventsIn
    ) -> list[LogEvent]:
        out: list[LogEvent] = []
        while len(out) < limit:
            page = await self.reader.forward(pipeline, stream, n, _PAGE)
            if not page:
                break
            for e in page:
                if inp.endTime is not None and e.timestamp >= inp.endTime:
                    return out
                if inp.startTime is None or e.timestamp >= inp.startTime:
                    out.append(e)
                    if len(out) == limit:
                        break
            n = page[-1].seq + 1
        return out

    async def _backward(
        self, pipeline: str, stream: str, before: int | None, limit: int, inp: GetLogEventsIn
    ) -> list[LogEvent]:
        if inp.startTime is None and inp.endTime is None:
            return await self.reader.backward(pipeline, stream, before, limit)
        out: list[LogEvent] = []
        while len(out) < limit:
            page = await self.reader.backward(pipeline, stream, before, _PAGE)
            if not page:
                break
            for e in reversed(page):
                if inp.startTime is not None and e.timestamp < inp.startTime:
                    return list(reversed(out))
                if inp.endTime is None or e.timestamp < inp.endTime:
                    out.append(e)
                    if len(out) == limit:
                        break
            before = page[0].seq
        return list(reversed(out))

    # -- FilterLogEvents --

    async def filter_log_events(self, body: Any, ctx: RequestContext) -> dict[str, Any]:
        inp: FilterLogEventsIn = _decode(FilterLogEventsIn, body)
        pipeline = _group(inp.logGroupName, inp.logGroupIdentifier)
        await self._require_group(pipeline)
        if inp.logStreamNames is not None and inp.logStreamNamePrefix is not None:
            raise _invalid("give logStreamNames or logStreamNamePrefix, not both")
        limit = _limit(inp.limit, MAX_EVENTS, MAX_EVENTS)
        match = _pattern(inp.filterPattern)
        names = [n for n, _ in await self.reader.stream_names(pipeline)]
        if inp.logStreamNames is not None:
            wanted = set(inp.logStreamNames)
            names = [n for n in names if n in wanted]
        elif inp.logStreamNamePrefix is not None:
            names = [n for n in names if n.startswith(inp.logStreamNamePrefix)]
        index, seq = 0, 1
        if inp.nextToken is not None:
            index, seq = _filter_token(inp.nextToken)
        events: list[dict[str, Any]] = []
        scanned = 0
        searched: list[dict[str, Any]] = []
        while index < len(names) and len(events) < limit and scanned < FILTER_SCAN:
            name = names[index]
            page = await self.reader.forward(pipeline, name, seq, _PAGE)
            if not page:
                searched.append({"logStreamName": name, "searchedCompletely": True})
                index, seq = index + 1, 1
                continue
            for e in page:
                seq = e.seq + 1
                scanned += 1
                if inp.startTime is not None and e.timestamp < inp.startTime:
                    continue
                if inp.endTime is not None and e.timestamp > inp.endTime:
                    continue
                if match(e.message):
                    events.append(
                        {
                            "logStreamName": name,
                            "timestamp": e.timestamp,
                            "message": e.message,
                            "ingestionTime": e.timestamp,
                            "eventId": f"{index}-{e.seq}",
                        }
                    )
                    if len(events) == limit:
                        break
        out: dict[str, Any] = {"events": events, "searchedLogStreams": searched}
        if index < len(names):
            out["nextToken"] = _make_filter_token(index, seq)
        return out

    # -- Describe* --

    async def describe_log_streams(self, body: Any, ctx: RequestContext) -> dict[str, Any]:
        inp: DescribeLogStreamsIn = _decode(DescribeLogStreamsIn, body)
        pipeline = _group(inp.logGroupName, inp.logGroupIdentifier)
        await self._require_group(pipeline)
        order = inp.orderBy or "LogStreamName"
        if order not in ("LogStreamName", "LastEventTime"):
            raise _invalid(f"orderBy must be LogStreamName or LastEventTime, got {order}")
        if order == "LastEventTime" and inp.logStreamNamePrefix:
            raise _invalid("Cannot order by LastEventTime with a logStreamNamePrefix.")
        limit = _limit(inp.limit, MAX_DESCRIBE, MAX_DESCRIBE)
        start = _offset_token(inp.nextToken)
        infos = await self.reader.streams(pipeline)
        if inp.logStreamNamePrefix:
            infos = [i for i in infos if i.name.startswith(inp.logStreamNamePrefix)]

        def last_time(i: StreamInfo) -> int:
            return i.last.timestamp if i.last is not None else i.meta.created

        infos.sort(key=(lambda i: i.name) if order == "LogStreamName" else last_time)
        if inp.descending:
            infos.reverse()
        page = infos[start : start + limit]
        out: dict[str, Any] = {
            "logStreams": [
                {
                    "logStreamName": i.name,
                    "creationTime": i.meta.created,
                    **(
                        {
                            "firstEventTimestamp": i.first.timestamp,
                            "lastEventTimestamp": i.last.timestamp,
                            "lastIngestionTime": i.last.timestamp,
                        }
                        if i.first is not None and i.last is not None
                        else {}
                    ),
                    "arn": log_stream_arn(
                        REGION, ACCOUNT, pipeline, i.meta.executionId, i.meta.actionExecutionId
                    ),
                    "storedBytes": i.stored_bytes,
                }
                for i in page
            ]
        }
        if start + limit < len(infos):
            out["nextToken"] = str(start + limit)
        return out

    async def describe_log_groups(self, body: Any, ctx: RequestContext) -> dict[str, Any]:
        inp: DescribeLogGroupsIn = _decode(DescribeLogGroupsIn, body)
        if inp.logGroupNamePrefix is not None and inp.logGroupNamePattern is not None:
            raise _invalid("give logGroupNamePrefix or logGroupNamePattern, not both")
        limit = _limit(inp.limit, MAX_DESCRIBE, MAX_DESCRIBE)
        start = _offset_token(inp.nextToken)
        groups = [(group_name(p), p, created) for p, created in await self.reader.groups()]
        groups.sort()
        if inp.logGroupNamePrefix is not None:
            groups = [g for g in groups if g[0].startswith(inp.logGroupNamePrefix)]
        if inp.logGroupNamePattern is not None:
            needle = inp.logGroupNamePattern.lower()
            groups = [g for g in groups if needle in g[0].lower()]
        page = groups[start : start + limit]
        out: dict[str, Any] = {
            "logGroups": [
                {
                    "logGroupName": name,
                    "creationTime": created,
                    "arn": log_group_arn(REGION, ACCOUNT, pipeline),
                    "logGroupArn": log_group_arn(REGION, ACCOUNT, pipeline).removesuffix(":*"),
                    "storedBytes": 0,
                    "logGroupClass": "STANDARD",
                }
                for name, pipeline, created in page
            ]
        }
        if start + limit < len(groups):
            out["nextToken"] = str(start + limit)
        return out


def _gap(requested: int, first: LogEvent) -> LogEvent | None:
    """A marker for lines between ``requested`` and ``first`` that are no longer stored."""
    if requested < 1:
        requested = 1
    if first.seq <= requested:
        return None
    return dropped_marker(LogEvent(first.seq - requested + 1, first.timestamp, ""))


def _offset_token(token: str | None) -> int:
    if token is None:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise _invalid("The specified nextToken is invalid.")
    return int(token)


def _make_filter_token(index: int, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{index}:{seq}".encode()).decode()


def _filter_token(token: str) -> tuple[int, int]:
    try:
        index, seq = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        return int(index), int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid("The specified nextToken is invalid.") from None


_TERM = re.compile(r'([?-]?)(?:"((?:[^"\\]|\\.)*)"|(\S+))')


def _pattern(pattern: str | None) -> Callable[[str], bool]:
    """CloudWatch's plain filter pattern: terms (all), ?terms (any), -terms (none)."""
    text = (pattern or "").strip()
    if not text:
        return lambda message: True
    if text.startswith(("{", "[")):
        raise _invalid("JSON and space-delimited filter patterns are not supported")
    required: list[str] = []
    anyof: list[str] = []
    excluded: list[str] = []
    for m in _TERM.finditer(text):
        term = m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3)
        {"": required, "?": anyof, "-": excluded}[m.group(1)].append(term)

    def match(message: str) -> bool:
        if any(t not in message for t in required):
            return False
        if anyof and not any(t in message for t in anyof):
            return False
        return not any(t in message for t in excluded)

    return match


def build_logs_handlers(redis: Any, keys: Keys) -> dict[str, RawHandler]:
    """``X-Amz-Target`` -> handler taking the request's JSON object."""
    logs = _Logs(LogReader(redis, keys))
    return {
        f"{LOGS_TARGET_PREFIX}GetLogEvents": logs.get_log_events,
        f"{LOGS_TARGET_PREFIX}FilterLogEvents": logs.filter_log_events,
        f"{LOGS_TARGET_PREFIX}DescribeLogStreams": logs.describe_log_streams,
        f"{LOGS_TARGET_PREFIX}DescribeLogGroups": logs.describe_log_groups,
    }

