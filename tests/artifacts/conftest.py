"""Artifact store tests: the S3 server fixture (tests/s3_server.py) and settings for it."""

from __future__ import annotations

import pytest

from app.artifacts import ArtifactSettings
from tests.s3_server import FAKE_KEYS, s3_endpoint

__all__ = ["s3_endpoint"]


@pytest.fixture
def s3_settings(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> ArtifactSettings:
    """Settings for the S3 store on the moto server (credentials from the environment, as a
    deployment would pass them)."""
    for k, v in FAKE_KEYS.items():
        monkeypatch.setenv(k, v)
    return ArtifactSettings(dir=str(tmp_path), s3_endpoint=s3_endpoint, s3_region="us-east-1")
