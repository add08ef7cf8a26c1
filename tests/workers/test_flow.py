"""Workers drive executions end to end: stages, parallel runOrder groups, failures with
running siblings, FAILED_ACTIONS / ALL_ACTIONS retries, automatic retries.

Every test runs on fakeredis (polling) and on a real Redis server (blocking reads), with an
in-process Worker started in the test's own task group. Side-effect files count how many
times each action really ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.domain import events as ev
from app.domain.errors import DomainError
from tests.workers.helpers import (
    attempts,
    count,
    counted,
    execution,
    flaky_sh,
    latest,
    make_engine,
    pipeline,
    running,
    runs,
    wait_action,
    wait_file_sh,
    wait_retried,
    wait_status,
)

pytestmark = pytest.mark.timeout(60)


async def test_three_stages_parallel_group_then_second_run_order(
    redis: Redis, tmp_path: Path
) -> None:
    c = tmp_path / "runs"
    up1, up2 = tmp_path / "b1.up", tmp_path / "b2.up"
    engine = make_engine(redis)
    await engine.start()
    # b1 and b2 each wait for the other to have started: they can only both succeed when
    # they run at the same time. b3 (runOrder 2) must start after both succeeded.
    await engine.create_pipeline(
        pipeline(
            "three",
            {
                "Source": [counted("src", c)],
                "Build": [
                    counted("b1", c, f"touch {up1}", wait_file_sh(up2, 10)),
                    counted("b2", c, f"touch {up2}", wait_file_sh(up1, 10)),
                    counted("b3", c, run_order=2),
                ],
                "Deploy": [counted("dep", c)],
            },
        )
    )
    async with running(redis):
        eid = await engine.start_execution("three")
        x = await wait_status(engine, "three", eid, "Succeeded", "Failed")

    assert x.status == "Succeeded"
    assert {n: r.status for n, r in x.stages.items()} == {
        "Source": "Succeeded",
        "Build": "Succeeded",
        "Deploy": "Succeeded",
    }
    assert sorted(runs(c)) == ["b1", "b2", "b3", "dep", "src"]
    assert len(x.actions) == 5
    assert all(a.status == "Succeeded" and a.worker == "w1" for a in x.actions.values())
    assert latest(x, "Build", "b1").summary == "3 commands succeeded"
    assert latest(x, "Source", "src").summary == "1 command succeeded"

    log = await engine.store.read("three")
    pos = {
        (type(e.event).__name__, getattr(e.event, "actionExecutionId", None)): e.version
        for e in log
    }
    ids = {a.actionName: a.actionExecutionId for a in x.actions.values()}
    b3_scheduled = pos[("ActionExecutionScheduled", ids["b3"])]
    assert pos[("ActionExecutionSucceeded", ids["b1"])] < b3_scheduled
    assert pos[("ActionExecutionSucceeded", ids["b2"])] < b3_scheduled
    # b1 and b2 were scheduled in the same decision (one group), b3 later
    assert (
        abs(
            pos[("ActionExecutionScheduled", ids["b1"])]
            - pos[("ActionExecutionScheduled", ids["b2"])]
        )
        == 1
    )
    started = [e for e in log if isinstance(e.event, ev.ActionExecutionStarted)]
    assert {e.actor for e in started} == {"worker:w1"}
    assert isinstance(log[-1].event, ev.ExecutionSucceeded)


async def test_failure_while_sibling_runs_fails_stage_and_sibling_is_recorded(
    redis: Redis, tmp_path: Path
) -> None:
    c = tmp_path / "runs"
    release = tmp_path / "release"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline(
            "sib",
            {
                "Build": [counted("bad", c, "exit 3"), counted("slow", c, wait_file_sh(release))],
                "Deploy": [counted("dep", c)],
            },
        )
    )
    async with running(redis):
        eid = await engine.start_execution("sib")
        x = await wait_status(engine, "sib", eid, "Failed")
        # the stage failed while its sibling is still running
        assert x.stages["Build"].status == "Failed"
        assert latest(x, "Build", "bad").status == "Failed"
        assert latest(x, "Build", "bad").errorCode == "CommandFailed"
        slow = latest(x, "Build", "slow")
        assert slow.status == "InProgress" and slow.worker == "w1"
        # ALL_ACTIONS is refused while anything in the stage runs
        with pytest.raises(DomainError) as err:
            await engine.retry_stage("sib", "Build", eid, "ALL_ACTIONS")
        assert err.value.type_name == "StageNotRetryableException"
        release.touch()
        done = await wait_action(
            engine, "sib", eid, "slow", lambda a: a.status != "InProgress", "ended"
        )
    assert done.status == "Succeeded"
    assert done.actionExecutionId == slow.actionExecutionId
    x = await execution(engine, "sib", eid)
    assert x.status == "Failed" and x.stages["Build"].status == "Failed"
    assert "Deploy" not in x.stages
    assert sorted(runs(c)) == ["bad", "slow"]


async def test_failed_actions_retry_while_sibling_runs(redis: Redis, tmp_path: Path) -> None:
    c = tmp_path / "runs"
    release = tmp_path / "release"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline(
            "fa",
            {
                "Source": [counted("src", c)],
                "Build": [
                    counted("flaky", c, flaky_sh(tmp_path / "flaky.once")),
                    counted("slow", c, wait_file_sh(release)),
                    counted("after", c, run_order=2),
                ],
                "Deploy": [counted("dep", c)],
            },
        )
    )
    async with running(redis):
        eid = await engine.start_execution("fa")
        x = await wait_status(engine, "fa", eid, "Failed")
        first_flaky = latest(x, "Build", "flaky")
        slow_id = latest(x, "Build", "slow").actionExecutionId
        assert first_flaky.status == "Failed"
        assert latest(x, "Build", "slow").status == "InProgress"

        assert await engine.retry_stage("fa", "Build", eid, "FAILED_ACTIONS") == eid
        await wait_retried(engine, "fa", eid, "Build")
        retried = await wait_action(
            engine,
            "fa",
            eid,
            "flaky",
            lambda a: (
                a.actionExecutionId != first_flaky.actionExecutionId and a.status == "Succeeded"
            ),
            "retried attempt succeeded",
        )
        x = await execution(engine, "fa", eid)
        # the stage is running again; the sibling kept its attempt and is still running
        assert x.status == "InProgress" and x.stages["Build"].status == "InProgress"
        assert latest(x, "Build", "slow").actionExecutionId == slow_id
        assert latest(x, "Build", "slow").status == "InProgress"
        assert [a.actionExecutionId for a in attempts(x, "slow")] == [slow_id]
        assert "after" not in x.stages["Build"].latest  # runOrder 2 waits for slow

        release.touch()
        x = await wait_status(engine, "fa", eid, "Succeeded", "Failed")

    assert x.status == "Succeeded"
    assert [a.status for a in attempts(x, "flaky")] == ["Failed", "Succeeded"]
    assert latest(x, "Build", "flaky").actionExecutionId == retried.actionExecutionId
    assert [a.actionExecutionId for a in attempts(x, "slow")] == [slow_id]
    assert latest(x, "Build", "slow").status == "Succeeded"
    assert x.stages["Build"].manualRetries == 1
    assert x.stages["Build"].latestTrigger == "ManualStageRetry"
    assert x.stages["Deploy"].status == "Succeeded"
    # side effects: the sibling ran once, the failed action twice, nothing else repeated
    assert count(c, "slow") == 1
    assert count(c, "flaky") == 2
    assert count(c, "src") == count(c, "after") == count(c, "dep") == 1
    assert x.pipelineVersion == 1
    assert (await engine.execution("fa", eid))[1].executionId == eid  # same execution


async def test_all_actions_retry_reruns_every_action(redis: Redis, tmp_path: Path) -> None:
    c = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline(
            "aa",
            {
                "Build": [
                    counted("ok", c),
                    counted("flaky", c, flaky_sh(tmp_path / "flaky.once")),
                    counted("second", c, run_order=2),
                ],
                "Deploy": [counted("dep", c)],
            },
        )
    )
    async with running(redis):
        eid = await engine.start_execution("aa")
        x = await wait_status(engine, "aa", eid, "Failed")
        await wait_action(
            engine, "aa", eid, "ok", lambda a: a.status != "InProgress", "first run ended"
        )
        x = await execution(engine, "aa", eid)
        before = {a.actionExecutionId for a in x.actions.values()}
        await engine.retry_stage("aa", "Build", eid, "ALL_ACTIONS")
        await wait_retried(engine, "aa", eid, "Build")
        x = await wait_status(engine, "aa", eid, "Succeeded", "Failed")
        # a repeat of the same (applied) retry is refused: nothing failed any more
        with pytest.raises(DomainError) as err:
            await engine.retry_stage("aa", "Build", eid, "ALL_ACTIONS")
        assert err.value.type_name == "StageNotRetryableException"

    assert x.status == "Succeeded"
    assert len(attempts(x, "ok")) == 2 and len(attempts(x, "flaky")) == 2
    for name in ("ok", "flaky"):
        new = latest(x, "Build", name)
        assert new.actionExecutionId not in before
        assert new.status == "Succeeded"
    assert count(c, "ok") == 2 and count(c, "flaky") == 2
    assert count(c, "second") == 1 and count(c, "dep") == 1
    assert x.stages["Build"].manualRetries == 1


async def test_on_failure_retry_retries_once_by_itself(redis: Redis, tmp_path: Path) -> None:
    c = tmp_path / "runs"
    engine = make_engine(redis)
    await engine.start()
    await engine.create_pipeline(
        pipeline(
            "auto",
            {
                "Build": [counted("flaky", c, flaky_sh(tmp_path / "once")), counted("ok", c)],
                "Deploy": [counted("dep", c)],
            },
            auto_retry={"Build": "FAILED_ACTIONS"},
        )
    )
    await engine.create_pipeline(
        pipeline(
            "auto-hopeless",
            {"Build": [counted("never", c, "exit 9")], "Deploy": [counted("nodep", c)]},
            auto_retry={"Build": "ALL_ACTIONS"},
        )
    )
    async with running(redis):
        eid = await engine.start_execution("auto")
        hopeless = await engine.start_execution("auto-hopeless")
        x = await wait_status(engine, "auto", eid, "Succeeded", "Failed")
        h = await wait_status(engine, "auto-hopeless", hopeless, "Succeeded", "Failed")

    assert x.status == "Succeeded"
    run = x.stages["Build"]
    assert run.autoRetries == 1 and run.manualRetries == 0
    assert run.latestTrigger == "AutomatedStageRetry"
    assert [a.status for a in attempts(x, "flaky")] == ["Failed", "Succeeded"]
    assert len(attempts(x, "ok")) == 1  # FAILED_ACTIONS: the succeeded sibling is kept
    assert count(c, "flaky") == 2 and count(c, "ok") == 1 and count(c, "dep") == 1

    # one automatic attempt only: the second failure fails the execution
    assert h.status == "Failed"
    assert h.stages["Build"].autoRetries == 1
    assert [a.status for a in attempts(h, "never")] == ["Failed", "Failed"]
    assert count(c, "never") == 2 and count(c, "nodep") == 0
    log = await engine.store.read("auto-hopeless")
    retries = [e.event for e in log if isinstance(e.event, ev.StageRetryStarted)]
    assert [(r.trigger, r.retryMode) for r in retries] == [("AutomatedStageRetry", "ALL_ACTIONS")]
