"""An S3-compatible server for tests: moto's server mode on a free port (a fixture).

Without moto (``pip install 'moto[server]'``, in the test extras) the tests that need it
skip with the reason, except under ``CI=true``, where they fail. Import ``s3_endpoint``
into a test module or conftest to use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from app.artifacts import ArtifactSettings
from tests.conftest import IN_CI
from tests.redis_server import free_port

FAKE_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"CI=true and no moto server: {err}", pytrace=False)
        pytest.skip(f"no moto server (pip install 'moto[server]'): {err}")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_bucket(settings: ArtifactSettings, name: str) -> None:
    from app.artifacts.s3 import s3_client

    client = s3_client(settings)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)
