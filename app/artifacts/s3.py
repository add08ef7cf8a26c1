"""The S3 artifact store: zip objects in an S3-compatible service, through botocore.

The endpoint comes from the deployment (``STAGELINE_S3_ENDPOINT`` / ``--s3-endpoint``), the
credentials from botocore's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_PROFILE`` ...), never from a command line. The bucket
is the pipeline's ``artifactStore.location`` and must exist (as in AWS).
"""

from __future__ import annotations

import shutil
import threading
from typing import Any

import botocore.exceptions
import botocore.session
from botocore.config import Config

from app.artifacts.store import ArtifactError, ArtifactSettings, ZipStore
from app.domain.artifacts import StoreKind

_clients: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()
_CHUNK = 1 << 16


def s3_client(settings: ArtifactSettings) -> Any:
    """One botocore S3 client per endpoint and region (clients are thread-safe)."""
    endpoint = settings.s3_endpoint or ""
    region = settings.s3_region or "us-east-1"
    with _lock:
        client = _clients.get((endpoint, region))
        if client is None:
            client = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=endpoint or None,
                region_name=region,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
            )
            _clients[(endpoint, region)] = client
    return client


class S3ArtifactStore(ZipStore):
    kind: StoreKind = "S3"

    def __init__(self, bucket: str, settings: ArtifactSettings) -> None:
        self.bucket = bucket
        self.settings = settings

    def _fail(self, what: str, bucket: str, key: str, err: Exception) -> ArtifactError:
        return ArtifactError(f"{what} s3://{bucket}/{key} at {self.settings.s3_endpoint}: {err}")

    def upload(self, zip_path: str, bucket: str, key: str) -> None:
        try:
            with open(zip_path, "rb") as f:
                s3_client(self.settings).put_object(
                    Bucket=bucket, Key=key, Body=f, ContentType="application/zip"
                )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            raise self._fail("storing", bucket, key, err) from err

    def download(self, bucket: str, key: str, zip_path: str) -> None:
        try:
            reply = s3_client(self.settings).get_object(Bucket=bucket, Key=key)
            with reply["Body"] as body, open(zip_path, "wb") as f:
                shutil.copyfileobj(body, f, _CHUNK)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            raise self._fail("fetching", bucket, key, err) from err
