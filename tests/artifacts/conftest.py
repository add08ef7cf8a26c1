"""An S3-compatible server for artifact tests: moto's server mode on a free port.

Without moto (``pip install 'moto[server]'``, in the test extras) the tests that need it
skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from app.artifacts import ArtifactSettings
from tests.conftest import IN_CI

FAKE_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"CI=true and no moto server: {err}", pytrace=False)
        pytest.skip(f"no moto server (pip install 'moto[server]'): {err}")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_settings(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> ArtifactSettings:
    """Settings for the S3 store on the moto server (credentials from the environment, as a
    deployment would pass them)."""
    for k, v in FAKE_KEYS.items():
        monkeypatch.setenv(k, v)
    return ArtifactSettings(dir=str(tmp_path), s3_endpoint=s3_endpoint, s3_region="us-east-1")


def make_bucket(settings: ArtifactSettings, name: str) -> None:
    from app.artifacts.s3 import s3_client

    client = s3_client(settings)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)
