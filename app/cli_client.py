"""The CLI's side of the HTTP API: a botocore CodePipeline client, a SigV4-signed ``GET
/status``, ``retry --wait``, ``status`` and ``watch`` rendering.

Credentials come from the usual botocore chain (environment, ``--profile``/``$AWS_PROFILE``,
shared files). When there are none (a first run against the embedded server, auth off), the
requests are signed with the placeholder key ``cli:<os user>``, which a server without
access keys accepts and records as the actor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

JSON = dict[str, Any]
StateFn = Callable[[], Awaitable[JSON]]

STATUS_PATH = "/status"


class ApiError(Exception):
    """A one-line failure talking to the API, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _codes() -> Any:
    from app import cli

    return cli


class ApiClient:
    def __init__(self, endpoint: str, region: str, profile: str | None) -> None:
        import botocore.config
        import botocore.session
        from botocore.exceptions import ProfileNotFound

        from app.cli import os_user

        self.endpoint = endpoint.rstrip("/")
        self.region = region
        try:
            session = botocore.session.Session(profile=profile)
            creds = session.get_credentials()
        except ProfileNotFound as err:
            raise ApiError(str(err), _codes().EXIT_USAGE) from None
        kwargs: dict[str, Any] = {}
        if creds is None:
            kwargs = {
                "aws_access_key_id": f"cli:{os_user()}",
                "aws_secret_access_key": "unused",
            }
        self.credentials = creds
        self.placeholder = kwargs
        config = botocore.config.Config(
            retries={"total_max_attempts": 2}, connect_timeout=5, read_timeout=30
        )
        self.client = session.create_client(
            "codepipeline", endpoint_url=self.endpoint, region_name=region, config=config, **kwargs
        )
        # the action logs: the CloudWatch Logs subset served on the same endpoint
        self.logs = session.create_client(
            "logs", endpoint_url=self.endpoint, region_name=region, config=config, **kwargs
        )

    def call(self, op: str, **params: Any) -> JSON:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            ParamValidationError,
        )

        c = _codes()
        try:
            result: JSON = getattr(self.client, op)(**params)
            return result
        except ClientError as err:
            e = err.response.get("Error", {})
            code = e.get("Code", "Error")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            exit_code = c.EXIT_REFUSED
            if code in ("ValidationException",):
                exit_code = c.EXIT_USAGE
            elif status >= 500:
                exit_code = c.EXIT_UNAVAILABLE
            raise ApiError(f"{code}: {e.get('Message', '')}", exit_code) from None
        except EndpointConnectionError:
            raise ApiError(
                f"cannot reach the API at {self.endpoint} (is 'stageline serve' running? "
                "set --endpoint-url)",
                c.EXIT_UNAVAILABLE,
            ) from None
        except ParamValidationError as err:
            raise ApiError(" ".join(str(err).split()), c.EXIT_USAGE) from None
        except NoCredentialsError:
            raise ApiError("no AWS credentials found", c.EXIT_USAGE) from None

    def state_async(self, pipeline: str) -> StateFn:
        async def get() -> JSON:
            return await anyio.to_thread.run_sync(
                lambda: self.call("get_pipeline_state", name=pipeline)
            )

        return get

    def status(self) -> JSON:
        """``GET /status``, SigV4-signed like every API call."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        c = _codes()
        url = self.endpoint + STATUS_PATH
        creds = self.credentials
        if creds is None:
            creds = Credentials(
                self.placeholder["aws_access_key_id"], self.placeholder["aws_secret_access_key"]
            )
        req = AWSRequest(method="GET", url=url, headers={})
        SigV4Auth(creds.get_frozen_credentials(), "codepipeline", self.region).add_auth(req)
        prepared = urllib.request.Request(url, headers=dict(req.headers.items()), method="GET")
        try:
            with urllib.request.urlopen(prepared, timeout=10) as resp:
                doc: JSON = json.loads(resp.read())
                return doc
        except urllib.error.HTTPError as err:
            try:
                body = json.loads(err.read())
                message = f"{body.get('__type', err.code)}: {body.get('message', '')}"
            except ValueError:
                message = f"HTTP {err.code}"
            code = c.EXIT_REFUSED if err.code < 500 else c.EXIT_UNAVAILABLE
            raise ApiError(message, code) from None
        except (urllib.error.URLError, OSError) as err:
            raise ApiError(
                f"cannot reach the API at {self.endpoint}: {getattr(err, 'reason', err)}",
                c.EXIT_UNAVAILABLE,
            ) from None


def api_client(a: argparse.Namespace) -> ApiClient:
    from app.cli import DEFAULT_ENDPOINT, ENV_ENDPOINT

    endpoint = a.endpoint_url or os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT
    if not endpoint.startswith(("http://", "https://")):
        raise ApiError(
            f"--endpoint-url {endpoint!r}: expected http://HOST:PORT", _codes().EXIT_USAGE
        )
    region = a.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    return ApiClient(endpoint, region or "us-east-1", a.profile)


def retry_via_api(api: ApiClient, a: argparse.Namespace) -> str:
    out = api.call(
        "retry_stage_execution",
        pipelineName=a.pipeline,
        stageName=a.stage,
        pipelineExecutionId=a.execution_id,
        retryMode=a.mode,
    )
    return str(out["pipelineExecutionId"])


# --- retry --wait --------------------------------------------------------------------------


def _stage(doc: JSON, stage: str) -> JSON:
    for s in doc.get("stageStates", []):
        if s.get("stageName") == stage:
            return dict(s)
    return {}


def _attempts(stage_doc: JSON) -> int:
    meta = stage_doc.get("retryStageMetadata") or {}
    return int(meta.get("manualStageRetryAttempt") or 0) + int(
        meta.get("autoStageRetryAttempt") or 0
    )


async def wait_for_stage(
    state: StateFn,
    before: JSON,
    stage: str,
    eid: str,
    timeout: float,  # noqa: ASYNC109  (exit code 5 on timeout, not an exception)
    poll: float = 0.3,
) -> int:
    """Wait until the accepted retry has started and the stage ended; its exit code."""
    c = _codes()
    n0 = _attempts(_stage(before, stage))
    deadline = time.monotonic() + timeout
    while True:
        st = _stage(await state(), stage)
        latest = st.get("latestExecution") or {}
        status = latest.get("status")
        if latest.get("pipelineExecutionId") not in (None, eid):
            print(
                f"stageline: stage {stage} was entered by execution "
                f"{latest.get('pipelineExecutionId')}",
                file=sys.stderr,
            )
            return int(c.EXIT_FAILED)
        if _attempts(st) > n0 and status not in ("InProgress", None):
            print(f"{stage}: {status}", flush=True)
            return int(c.EXIT_OK if status == "Succeeded" else c.EXIT_FAILED)
        if time.monotonic() > deadline:
            print(
                f"stageline: timed out after {timeout:g}s waiting for stage {stage} "
                f"(last status {status})",
                file=sys.stderr,
            )
            return int(c.EXIT_TIMEOUT)
        await anyio.sleep(poll)


# --- status --------------------------------------------------------------------------------


def print_status(doc: JSON, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.print(
        f"partitions: {doc.get('partitions')}  "
        f"Redis round trip: {doc.get('redisRoundTripMs', 0):.1f} ms"
    )
    workers = doc.get("workers", [])
    known = {w["name"] for w in workers}
    console.print(f"workers alive: {doc.get('workersAlive', 0)} of {len(known)} known")
    if not doc.get("livenessExact", True):
        console.print(
            f"(Redis {doc.get('redisVersion') or '< 7.2'}: a consumer's idle time restarts only "
            "when it gets entries, so an idle worker may show as not alive; Redis 7.2+ is exact)"
        )
    wt = Table("worker", "group", "alive", "idle s", "pending")
    for w in workers:
        wt.add_row(
            w["name"],
            w["group"],
            "yes" if w["alive"] else "no",
            f"{w['idleMs'] / 1000:.1f}",
            str(w["pending"]),
        )
    console.print(wt)
    pt = Table("partition", "group", "lag", "pending", "dead letters")
    for p in doc.get("partitions_detail", []):
        for g in p["groups"]:
            pt.add_row(
                str(p["partition"]),
                g["group"],
                "-" if g["lag"] is None else str(g["lag"]),
                str(g["pending"]),
                str(p["deadLetters"]),
            )
    console.print(pt)
    t = doc.get("totals", {})
    console.print(
        f"totals: lag {t.get('lag', 0)}, pending {t.get('pending', 0)}, "
        f"dead letters {t.get('deadLetters', 0)}"
    )


# --- watch ---------------------------------------------------------------------------------

_COLOURS = {
    "Succeeded": "green",
    "Failed": "red",
    "InProgress": "yellow",
    "Stopped": "magenta",
    "Stopping": "magenta",
    "Abandoned": "bright_black",
    "Cancelled": "bright_black",
}


def render_state(doc: JSON, pipeline: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{pipeline} (version {doc.get('pipelineVersion', '?')})", expand=False)
    t.add_column("stage")
    t.add_column("execution")
    t.add_column("status")
    t.add_column("retries")
    t.add_column("actions")
    for s in doc.get("stageStates", []):
        latest = s.get("latestExecution") or {}
        status = latest.get("status", "-")
        meta = s.get("retryStageMetadata") or {}
        retries = ""
        if meta:
            retries = (
                f"manual {meta.get('manualStageRetryAttempt', 0)}, "
                f"auto {meta.get('autoStageRetryAttempt', 0)}"
            )
        actions = Text()
        for a in s.get("actionStates", []):
            ax = a.get("latestExecution") or {}
            ast = ax.get("status", "-")
            if actions:
                actions.append("  ")
            actions.append(f"{a['actionName']}: ", style="bold")
            actions.append(ast, style=_COLOURS.get(ast, ""))
        t.add_row(
            s["stageName"],
            str(latest.get("pipelineExecutionId", "-"))[:8],
            Text(status, style=_COLOURS.get(status, "")),
            retries,
            actions,
        )
    return t


async def watch(state: StateFn, pipeline: str, *, once: bool, interval: float) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(highlight=False)
    doc = await state()
    if once:
        console.print(render_state(doc, pipeline))
        return 0
    with Live(render_state(doc, pipeline), console=console, refresh_per_second=4) as live:
        while True:
            await anyio.sleep(interval)
            live.update(render_state(await state(), pipeline))
