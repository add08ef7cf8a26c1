"""``stageline audit ...`` through ``app.cli.main`` against a real Redis (the embedded
fakeredis is not shared between processes, so the CLI needs a URL)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from app.cli import main
from tests.audit.conftest import other_db
from tests.audit.scenario import PARTITIONS, Scenario, build


class Built:
    def __init__(self, url: str, sc: Scenario) -> None:
        self.url = url
        self.name = sc.name
        self.exec1 = sc.exec1
        self.captures = sc.captures


@pytest.fixture
def built(real_redis_url: str) -> Built:
    async def go() -> Built:
        redis = Redis.from_url(real_redis_url)
        try:
            await redis.flushdb()
            return Built(real_redis_url, await build(redis))
        finally:
            await redis.aclose()

    return anyio.run(go)


def audit(url: str, *args: str) -> list[str]:
    return ["audit", *args, "--redis-url", url, "--partitions", str(PARTITIONS)]


def test_log_table_and_jsonl(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(audit(built.url, "log", "--pipeline", built.name)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["VER", "TIME", "ACTOR", "EVENT"]
    assert len(out) == 1 + built.captures[-1].version
    requested = [line for line in out if "StageRetryRequested" in line]
    assert len(requested) == 2
    assert "AKIABOB" in requested[0] and "FAILED_ACTIONS" in requested[0]
    assert "retry 1" in requested[0] and "req-retry-failed" in requested[0]
    assert "cli:carol" in requested[1] and "ALL_ACTIONS" in requested[1]
    assert any("Build/b1" in x and "2 (retry 1)" in x and "Failed" in x for x in out)
    assert any("Build/b1" in x and "3 (retry 2)" in x and "Succeeded" in x for x in out)

    args = audit(built.url, "log", "--pipeline", built.name, "--format", "jsonl")
    assert main([*args, "--execution", built.exec1]) == 0
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert docs and all(d["event"]["executionId"] == built.exec1 for d in docs)
    assert [d["version"] for d in docs] == sorted(d["version"] for d in docs)
    retries = [d for d in docs if d["event"]["type"] == "StageRetryStarted"]
    assert [(d["actor"], d["audit"]["retry"], d["audit"]["mode"]) for d in retries] == [
        ("worker:orch1", 1, "FAILED_ACTIONS"),
        ("worker:orch1", 2, "ALL_ACTIONS"),
        ("worker:w1", 1, "FAILED_ACTIONS"),  # Deploy's automatic retry
    ]

    since = f"@{built.captures[3].time}"
    assert main([*args, "--since", since]) == 0
    assert (
        capsys.readouterr().out.count("\n") == built.captures[4].version - built.captures[3].version
    )


def test_replay_as_of(built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for cap in built.captures:
        for point in (str(cap.version), f"@{cap.time}"):
            assert main(audit(built.url, "replay", "--pipeline", built.name, "--as-of", point)) == 0
            (doc,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
            assert doc["version"] == cap.version
            assert doc["pipelineState"] == cap.document
    out = tmp_path / "now.jsonl"
    assert main(audit(built.url, "replay", "--out", str(out), "--full", "--progress")) == 0
    (doc,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert doc["pipelineState"] == built.captures[-1].document and "state" in doc
    assert "replay" in capsys.readouterr().err  # the progress bar


def test_verify_ok_then_tampered(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(audit(built.url, "verify")) == 0
    out = capsys.readouterr().out
    assert (
        f"ok   {built.name}: {built.captures[-1].version} events in 3 streams, chains intact" in out
    )
    assert "verified 1 pipeline(s)" in out

    async def delete() -> None:
        redis = Redis.from_url(built.url)
        from app.store.keys import Keys

        await redis.xdel(Keys(partitions=PARTITIONS).execution_log(built.name, built.exec1), "12-0")
        await redis.aclose()

    anyio.run(delete)
    assert main(audit(built.url, "verify", "--pipeline", built.name)) == 1
    got = capsys.readouterr()
    assert (
        f"FAIL {built.name}: seq 12 missing (deleted event): execution {built.exec1}'s stream "
        "goes from entry 11-0 to entry 13-0" in got.out
    )
    assert "verification FAILED: 1 problem(s)" in got.out
    assert got.err.startswith(f"stageline: verify: {built.name}: seq 12 missing")


def test_export_import_roundtrip(
    built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    archive = tmp_path / "archive.jsonl"
    assert main(audit(built.url, "export", "--out", str(archive))) == 0
    assert "exported" in capsys.readouterr().err
    target = other_db(built.url)

    async def flush() -> None:
        redis = Redis.from_url(target)
        await redis.flushdb()
        await redis.aclose()

    anyio.run(flush)
    try:
        assert main(audit(target, "import", str(archive))) == 0
        capsys.readouterr()
        assert main(audit(target, "verify")) == 0
        capsys.readouterr()
        assert main(audit(built.url, "replay", "--full")) == 0
        source = capsys.readouterr().out
        assert main(audit(target, "replay", "--full")) == 0
        assert capsys.readouterr().out == source
        # a second import into the (now non-empty) target is refused, with one line
        assert main(audit(target, "import", str(archive))) == 3  # refused (docs/cli.md)
        err = capsys.readouterr().err
        assert err.startswith("stageline: refused: the target Redis is not empty")
        assert err.count("\n") == 1
    finally:
        anyio.run(flush)


def test_errors_are_one_line(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    # exit codes from the one table in docs/cli.md: 3 not found/refused, 2 usage
    assert main(audit(built.url, "log", "--pipeline", "nope")) == 3
    assert capsys.readouterr().err == "stageline: pipeline 'nope' has no event log in this Redis\n"
    assert main(audit(built.url, "log", "--pipeline", built.name, "--execution", "nope")) == 3
    assert capsys.readouterr().err == (
        f"stageline: pipeline {built.name!r} has no execution 'nope' in this Redis\n"
    )
    assert main(audit(built.url, "replay", "--as-of", "soon")) == 2
    assert capsys.readouterr().err.startswith("stageline: invalid time 'soon'")
    assert main(["audit", "verify", "--redis-url", ""]) == 2
    assert "needs --redis-url" in capsys.readouterr().err
    assert main(audit(built.url, "import", "/nonexistent.jsonl")) == 2
    assert capsys.readouterr().err.startswith("stageline: /nonexistent.jsonl: No such file")
