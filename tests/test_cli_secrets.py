"""Secrets reach the CLI through files and the environment; on a command line they warn."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from app.cli import main
from tests.redis_server import free_port


def test_redis_url_file_is_read_and_a_missing_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens: the command gets as far as connecting
    url_file = tmp_path / "url"
    url_file.write_text(f"redis://:from-the-file@127.0.0.1:{port}/0\n")
    url_file.chmod(0o600)
    assert main(["logs", "demo", "--redis-url-file", str(url_file)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err
    assert "from-the-file" not in err
    assert not any("command line" in r.getMessage() for r in caplog.records)

    assert main(["logs", "demo", "--redis-url-file", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stageline: --redis-url-file file ") and err.count("\n") == 1


def test_a_password_on_the_command_line_gets_a_warning(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stageline")
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    assert main(["logs", "demo", "--redis-url", url]) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("password is on the command line" in w for w in warnings), warnings
    assert all("hunter2" not in w for w in warnings)


def test_access_keys_file_adds_keys(tmp_path: Path) -> None:
    import argparse

    from app.cli import _parse_access_keys, _resolve_secrets

    keys = tmp_path / "keys"
    keys.write_text("AKID1:one\n\nAKID2:two\n")
    a = argparse.Namespace(redis_url=None, access_key=["AKID0:zero"], access_keys_file=[str(keys)])
    _resolve_secrets(a, [])
    creds, _ = _parse_access_keys(a.access_key, a.access_keys_file)
    assert creds == {"AKID0": "zero", "AKID1": "one", "AKID2": "two"}
