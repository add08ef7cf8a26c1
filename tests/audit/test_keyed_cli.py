"""``--audit-key-file`` / ``$STAGELINE_AUDIT_KEY_FILE`` on the command line, ``audit
checkpoint`` and ``audit verify --checkpoint`` through ``app.cli.main`` against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from app.cli import _audit_key, build_parser, main
from app.store.keys import Keys
from tests.audit.scenario import PARTITIONS, build

SECRET = "correct-horse-battery-staple-0123456789"  # 39 bytes


def audit(url: str, *args: str) -> list[str]:
    return ["audit", *args, "--redis-url", url, "--partitions", str(PARTITIONS)]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    f = tmp_path / "audit.key"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def keyed_url(real_redis_url: str) -> str:
    async def go() -> None:
        redis = Redis.from_url(real_redis_url)
        try:
            await redis.flushdb()
            await build(redis, audit_key=SECRET.encode())
            await build(redis, "second", audit_key=SECRET.encode())
        finally:
            await redis.aclose()

    anyio.run(go)
    return real_redis_url


def test_the_key_file_option_and_variable(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for command in (
        ["serve"],
        ["worker"],
        ["audit", "verify"],
        ["audit", "checkpoint", "--out", "x"],
    ):
        a = build_parser().parse_args([*command, "--audit-key-file", str(key_file)])
        assert _audit_key(a) == SECRET.encode()  # the trailing newline is not part of it
    a = build_parser().parse_args(["serve"])
    assert _audit_key(a) is None  # no key configured: events are written unkeyed
    monkeypatch.setenv("STAGELINE_AUDIT_KEY_FILE", str(key_file))
    assert _audit_key(build_parser().parse_args(["worker"])) == SECRET.encode()


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "no such file"),
        ("dir", "is a directory"),
        ("short-key\n", "the key is 9 bytes, at least 32 are needed"),
        ("", "the key is 0 bytes"),
    ],
)
def test_a_bad_key_file_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    real_redis_url: str,
    content: str | None,
    error: str,
) -> None:
    path = tmp_path / "audit.key"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    for argv in (
        ["serve", "--port", "0", "--audit-key-file", str(path)],
        ["worker", "--redis-url", real_redis_url, "--audit-key-file", str(path)],
        audit(real_redis_url, "verify", "--audit-key-file", str(path)),
        audit(real_redis_url, "checkpoint", "--out", "cp.json", "--audit-key-file", str(path)),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"stageline: audit key file {path}: {error}" + err.split(error, 1)[1]
        assert err.count("\n") == 1 and err.startswith("stageline: audit key file")
        if content and content != "dir":
            assert content.strip() not in err  # the key is never shown


def test_checkpoint_and_verify_with_it(
    keyed_url: str, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, k = keyed_url, ["--audit-key-file", str(key_file)]
    assert main(audit(url, "verify", *k)) == 0
    out = capsys.readouterr().out
    assert "audit tags valid" in out and "verified 2 pipeline(s)" in out
    assert SECRET not in out
    assert main(audit(url, "verify", "--require-tags", *k)) == 0  # tagged from the start
    capsys.readouterr()
    assert main(audit(url, "verify", "--require-tags")) == 2
    assert "--require-tags needs the audit key" in capsys.readouterr().err

    cp = tmp_path / "cp.json"
    assert main(audit(url, "checkpoint", "--out", str(cp))) == 2  # no key, no checkpoint
    assert "checkpoint needs the audit key" in capsys.readouterr().err
    assert main(audit(url, "checkpoint", "--out", str(cp), *k)) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"checkpoint {cp}: 2 pipeline(s), 6 streams, signed with key ")
    doc = json.loads(cp.read_text())
    assert set(doc["pipelines"]) == {"audited", "second"} and SECRET not in cp.read_text()
    assert main(audit(url, "verify", "--checkpoint", str(cp), *k)) == 0
    capsys.readouterr()
    assert main(audit(url, "verify", "--checkpoint", str(cp))) == 2
    assert "--checkpoint needs the audit key" in capsys.readouterr().err
    other = tmp_path / "other.key"
    other.write_text("y" * 40)
    assert main(audit(url, "verify", "--checkpoint", str(cp), "--audit-key-file", str(other))) == 2
    assert "signature does not verify (signed with another audit key)" in capsys.readouterr().err

    async def delete_pipeline() -> None:
        redis = Redis.from_url(url)
        keys = Keys(partitions=PARTITIONS)
        async for name in redis.scan_iter(match="*audited*", count=1000):
            await redis.delete(name)
        await redis.srem(keys.names(keys.partition("audited")), "audited")
        await redis.aclose()

    anyio.run(delete_pipeline)
    assert main(audit(url, "verify", *k)) == 0  # the log alone cannot tell
    capsys.readouterr()
    assert main(audit(url, "verify", "--checkpoint", str(cp), *k)) == 1
    got = capsys.readouterr()
    assert "FAIL audited: deleted: the checkpoint recorded this pipeline at seq 58" in got.out
    assert got.err.startswith("stageline: verify: audited: deleted")
    assert main(audit(url, "verify", "--pipeline", "audited", "--checkpoint", str(cp), *k)) == 1
    assert "FAIL audited: deleted" in capsys.readouterr().out
    # what is left verifies on its own, so a new checkpoint of it is signed: only the older
    # checkpoint, kept outside Redis, knows of the deleted pipeline
    assert main(audit(url, "checkpoint", "--out", str(tmp_path / "cp2.json"), *k)) == 0
    assert "1 pipeline(s), 3 streams" in capsys.readouterr().err


def test_checkpoint_refuses_a_tampered_store(
    keyed_url: str, key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def cut() -> None:
        redis = Redis.from_url(keyed_url)
        keys = Keys(partitions=PARTITIONS)
        rows = await redis.xrange(keys.log("second"), count=1)
        await redis.xdel(keys.log("second"), rows[0][0])
        await redis.aclose()

    anyio.run(cut)
    cp = tmp_path / "cp.json"
    args = audit(keyed_url, "checkpoint", "--out", str(cp), "--audit-key-file", str(key_file))
    assert main(args) == 1
    got = capsys.readouterr()
    assert "FAIL second: seq 1 missing" in got.out
    assert got.err.startswith("stageline: checkpoint: not written, the store does not verify")
    assert not cp.exists()
