"""Artifact stores: where actions' output artifacts go (zip files) and input artifacts come from.

* :class:`~app.artifacts.store.LocalArtifactStore` — a directory (the default);
* :class:`~app.artifacts.s3.S3ArtifactStore` — an S3-compatible service through boto3, for a
  pipeline whose ``artifactStore`` is ``{type: S3, location: <bucket>}`` when the deployment
  configures an endpoint (``STAGELINE_S3_ENDPOINT``).

:func:`~app.artifacts.store.store_for` picks one for a pipeline declaration.
"""

from app.artifacts.store import (
    ArtifactError,
    ArtifactSettings,
    ArtifactStore,
    LocalArtifactStore,
    object_key,
    pack,
    store_for,
    unpack,
)
from app.domain.artifacts import ArtifactLocation

__all__ = [
    "ArtifactError",
    "ArtifactLocation",
    "ArtifactSettings",
    "ArtifactStore",
    "LocalArtifactStore",
    "object_key",
    "pack",
    "store_for",
    "unpack",
]
