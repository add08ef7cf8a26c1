"""The console in headless Chromium against a real ``stageline serve`` (embedded Redis, workers
on, SigV4 auth on): log in, see a failed action, retry the failed actions while a sibling
still runs, watch the stage go green without reloading, approve, read the action output
and the audit timeline. Screenshots go to ``.ci/artifacts/screenshots`` (CI keeps them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api.server import ServeConfig
from tests.api_helpers import AKID, SECRET, Stageline, client, run_stageline
from tests.console.browser import browser_page, screenshot
from tests.workers.helpers import AS_TEST_USER
from workers.config import WorkerConfig

pytestmark = pytest.mark.timeout(180)

COMMANDS = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}
MANUAL = {"category": "Approval", "owner": "AWS", "provider": "Manual", "version": "1"}


@pytest.fixture
def server() -> Iterator[Stageline]:
    cfg = ServeConfig(
        port=0,
        credentials={AKID: SECRET},
        # actions as the test user: they write marker files under its private tmp dir
        worker=WorkerConfig(
            name="browser-test", block_ms=None, reap_every_s=0.5, actions=AS_TEST_USER
        ),
    )
    with run_stageline(cfg) as s:
        yield s


def demo(marks: Path, name: str = "web") -> dict[str, Any]:
    def cmd(name: str, *lines: str) -> dict[str, Any]:
        return {"name": name, "actionTypeId": COMMANDS, "commands": list(lines)}

    return {
        "name": name,
        "roleArn": "arn:aws:iam::123456789012:role/console",
        "stages": [
            {
                "name": "Build",
                "actions": [
                    cmd("flaky", "echo checking", f"test -f {marks}/fixed"),
                    # the sibling keeps running until the test lets it finish
                    cmd("slow", f"while [ ! -f {marks}/release ]; do sleep 0.1; done", "echo ok"),
                ],
            },
            {"name": "Approve", "actions": [{"name": "ship-it", "actionTypeId": MANUAL}]},
            {"name": "Deploy", "actions": [cmd("deploy", "echo deploying")]},
        ],
    }


def stage(page: Any, name: str) -> Any:
    return page.locator(f'section.stage[data-stage="{name}"]')


def action(page: Any, stage_name: str, name: str) -> Any:
    return stage(page, stage_name).locator(f'[data-action="{name}"]')


def test_console_retry_while_sibling_runs_approve_and_read_output(
    server: Stageline, tmp_path: Path
) -> None:
    cp = client(server.url)
    cp.create_pipeline(pipeline=demo(tmp_path))
    eid = cp.start_pipeline_execution(name="web")["pipelineExecutionId"]

    with browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/console")
        # auth is on: the console asks for a key and signs its calls
        page.get_by_label("Access key ID").fill(AKID)
        page.get_by_label("Secret access key").fill("wrong")
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("alert").filter(has_text="InvalidSignatureException").wait_for()
        page.get_by_label("Access key ID").fill(AKID)
        page.get_by_label("Secret access key").fill(SECRET)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("heading", name="Pipelines").wait_for()
        page.locator('tr[data-pipeline="web"]').wait_for()
        screenshot(page, "01-pipelines")

        page.get_by_role("link", name="web", exact=True).click()
        page.locator("#live.on").wait_for()
        # a marker that a reload would wipe: every later check happens on this same page
        page.evaluate("window.__sameDocument = true")

        flaky = action(page, "Build", "flaky")
        slow = action(page, "Build", "slow")
        flaky.and_(page.locator('[data-status="Failed"]')).wait_for(timeout=20_000)
        assert slow.get_attribute("data-status") == "InProgress"
        build = stage(page, "Build")
        retry_failed = build.get_by_role("button", name="Retry failed actions")
        retry_all = build.get_by_role("button", name="Retry all actions")
        assert retry_failed.is_enabled()
        assert retry_all.is_disabled()  # the sibling still runs: ALL_ACTIONS would be refused
        why = page.locator("#" + retry_all.get_attribute("aria-describedby"))
        assert "still has actions in progress" in why.inner_text()
        assert "attempt 1" in flaky.inner_text()
        screenshot(page, "02-failed-action-sibling-running")

        (tmp_path / "fixed").touch()
        retry_failed.focus()  # keyboard only: focus the button, press Enter
        page.keyboard.press("Enter")
        page.get_by_role("alert").filter(has_text="accepted").wait_for()
        flaky.and_(page.locator('[data-status="Succeeded"]')).wait_for(timeout=20_000)
        assert "attempt 2" in flaky.inner_text()
        assert slow.get_attribute("data-status") == "InProgress"  # it kept running
        assert "manual retries: 1" in build.inner_text()
        screenshot(page, "03-retried-sibling-still-running")

        (tmp_path / "release").touch()
        build.and_(page.locator('[data-status="Succeeded"]')).wait_for(timeout=20_000)
        approve = stage(page, "Approve").get_by_role("button", name="Approve ship-it")
        approve.wait_for(timeout=20_000)
        screenshot(page, "04-build-green-awaiting-approval")
        approve.click()
        stage(page, "Deploy").and_(page.locator('[data-status="Succeeded"]')).wait_for(
            timeout=20_000
        )
        assert page.evaluate("window.__sameDocument") is True  # no reload happened
        screenshot(page, "05-approved-deployed")

        # the execution page: every attempt with its output, and who did what
        page.get_by_role("link", name=eid).click()
        page.locator("table[data-timeline]").wait_for()
        attempts = page.locator('section[data-stage="Build"] [data-action="flaky"] li')
        assert attempts.count() == 2
        flaky_attempt = page.locator(
            'section[data-stage="Build"] [data-action="flaky"] li[data-attempt="1"]'
        )
        flaky_attempt.get_by_text("Output of attempt 1").click()  # closed: not the latest
        first = flaky_attempt.locator("pre")
        output = first.inner_text()
        assert re.search(r"command 2 'test -f .*' exited with 1", output)
        assert "checking" in output  # the command's own output (echo checking)
        timeline = page.locator("table[data-timeline]").inner_text()
        assert "StageRetryRequested" in timeline and AKID in timeline
        assert "ApprovalRecorded" in timeline
        screenshot(page, "06-execution-attempts-and-audit")
        assert errors == []

    x = cp.get_pipeline_execution(pipelineName="web", pipelineExecutionId=eid)
    assert x["pipelineExecution"]["status"] == "Succeeded"


def test_console_without_auth_stops_an_execution(tmp_path: Path) -> None:
    # (the embedded Redis is one per test process: default partitions, another pipeline name)
    cfg = ServeConfig(
        port=0, worker=WorkerConfig(name="browser-stop", block_ms=None, actions=AS_TEST_USER)
    )
    with run_stageline(cfg) as s:
        cp = client(s.url)
        decl = demo(tmp_path, "stoppable")
        decl["stages"][0]["actions"] = decl["stages"][0]["actions"][1:]  # only "slow"
        cp.create_pipeline(pipeline=decl)
        eid = cp.start_pipeline_execution(name="stoppable")["pipelineExecutionId"]
        with browser_page() as page:
            page.goto(s.url + "/console#/p/stoppable")
            assert page.locator("#who").inner_text() == "auth off"  # no login asked
            action(page, "Build", "slow").and_(page.locator('[data-status="InProgress"]')).wait_for(
                timeout=20_000
            )
            page.get_by_role("button", name="Stop execution").click()
            page.get_by_role("alert").filter(has_text="Stop: accepted").wait_for()
            (tmp_path / "release").touch()  # let the running action end; the stop completes
            row = page.locator("tr", has=page.get_by_role("link", name=eid))
            row.locator(".badge.s-Stopped").wait_for(timeout=20_000)
            screenshot(page, "07-stopped-without-auth")
        x = cp.get_pipeline_execution(pipelineName="stoppable", pipelineExecutionId=eid)
        assert x["pipelineExecution"]["status"] == "Stopped"
