"""The artifact store interface, zip packing, and the local-directory store.

An artifact is one zip file (as in AWS CodePipeline). :meth:`ArtifactStore.put` packs a
directory (all of it, or the paths/glob patterns given as ``files``) and stores the zip under
``<pipeline>/<executionId>/<artifact>/<unique>.zip`` in the pipeline's bucket;
:meth:`ArtifactStore.get` unpacks one into a directory. Both run their file and network work
in a worker thread.

Packing never follows a symbolic link (an action could otherwise point one at a file only the
worker may read): links are left out. Unpacking refuses entries that would land outside the
target directory (absolute names, ``..``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from app.domain.artifacts import ArtifactLocation, StoreKind
from app.domain.model import PipelineDeclaration

ENV_DIR = "STAGELINE_ARTIFACT_DIR"
ENV_S3_ENDPOINT = "STAGELINE_S3_ENDPOINT"
ENV_S3_REGION = "STAGELINE_S3_REGION"
DEFAULT_BUCKET = "stageline-artifacts"
_CHUNK = 1 << 16


class ArtifactError(Exception):
    """An artifact cannot be packed, stored, fetched or unpacked (the message says why)."""


def default_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "stageline-artifacts")


@dataclass(frozen=True)
class ArtifactSettings:
    """Where a deployment keeps artifacts (``--artifact-dir``, ``--s3-endpoint``, or the
    ``STAGELINE_ARTIFACT_DIR`` / ``STAGELINE_S3_ENDPOINT`` / ``STAGELINE_S3_REGION``
    environment). S3 credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_PROFILE`` ...), never
    from a command line."""

    dir: str | None = None  # the local store's root (default: $TMPDIR/stageline-artifacts)
    s3_endpoint: str | None = None  # an S3-compatible endpoint: S3 artifact stores are used
    s3_region: str | None = None

    @property
    def root(self) -> str:
        return self.dir or default_dir()

    @classmethod
    def from_env(
        cls, *, dir: str | None = None, s3_endpoint: str | None = None
    ) -> ArtifactSettings:
        return cls(
            dir=dir or os.environ.get(ENV_DIR) or None,
            s3_endpoint=s3_endpoint or os.environ.get(ENV_S3_ENDPOINT) or None,
            s3_region=os.environ.get(ENV_S3_REGION) or None,
        )


def object_key(pipeline: str, execution_id: str, artifact: str, unique: str | None = None) -> str:
    """``<pipeline>/<executionId>/<artifact>/<unique>.zip`` (unique: e.g. the producing
    action execution's id, so a retried action's artifact never overwrites the first)."""
    return f"{pipeline}/{execution_id}/{artifact}/{unique or uuid.uuid4().hex}.zip"


# --- zip packing -----------------------------------------------------------------------------


def _inside(root: str, rel: str) -> str:
    """``root/rel`` when it stays inside ``root``; ArtifactError otherwise."""
    if os.path.isabs(rel) or rel.startswith("\\"):
        raise ArtifactError(f"path {rel!r} is absolute; artifact paths are relative")
    full = os.path.normpath(os.path.join(root, rel))
    base = os.path.normpath(root)
    if full != base and not full.startswith(base + os.sep):
        raise ArtifactError(f"path {rel!r} leaves the directory")
    return full


def _tree(root: str) -> tuple[list[str], list[str]]:
    """The regular files and the directories under ``root`` (relative, ``/``-separated),
    never through a symbolic link."""
    files: list[str] = []
    dirs: list[str] = []
    for here, subdirs, names in os.walk(root, followlinks=False):
        rel_here = os.path.relpath(here, root)
        prefix = "" if rel_here == "." else rel_here.replace(os.sep, "/") + "/"
        kept = []
        for d in subdirs:
            if not os.path.islink(os.path.join(here, d)):
                kept.append(d)
                dirs.append(prefix + d)
        subdirs[:] = kept
        for n in names:
            if stat.S_ISREG(os.lstat(os.path.join(here, n)).st_mode):
                files.append(prefix + n)
    return sorted(files), sorted(dirs)


def _match(pattern: list[str], path: list[str]) -> bool:
    """Glob match by path segments: ``**`` is any number of segments, others fnmatch."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and _match(rest, path[1:])


def select_files(directory: str, files: Sequence[str] | None = None) -> dict[str, str]:
    """The regular files to pack: relative name -> path. ``files`` are paths or glob
    patterns (``*``, ``?``, ``[..]``, ``**`` for any depth; hidden files included) relative to
    ``directory``; a directory matched means everything under it; none given means the whole
    directory. Symbolic links are never followed nor packed. A path or pattern that matches
    nothing raises ArtifactError naming it."""
    all_files, all_dirs = _tree(directory)
    if not files:
        return {f: os.path.join(directory, f) for f in all_files}
    out: dict[str, str] = {}
    for pattern in files:
        _inside(directory, pattern)
        parts = [p for p in os.path.normpath(pattern).replace(os.sep, "/").split("/") if p]
        if parts == ["."]:
            parts = ["**"]
        hit = False
        for f in all_files:
            if _match(parts, f.split("/")):
                out[f] = os.path.join(directory, f)
                hit = True
        for d in all_dirs:
            if _match(parts, d.split("/")):
                hit = True
                for f in all_files:
                    if f.startswith(d + "/"):
                        out[f] = os.path.join(directory, f)
        if not hit:
            raise ArtifactError(f"declared output path {pattern!r} matched no file")
    return out


def pack(directory: str, zip_path: str, files: Sequence[str] | None = None) -> int:
    """Zip ``directory`` (or its ``files``) into ``zip_path``; returns the number of files.
    Permission bits are kept (an executable stays executable)."""
    chosen = select_files(directory, files)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for rel in sorted(chosen):
            full = chosen[rel]
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as src:
                st = os.fstat(src.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = zipfile.ZipInfo(rel.replace(os.sep, "/"))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | stat.S_IMODE(st.st_mode)) << 16
                with z.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    return len(chosen)


def unpack(zip_path: str, into: str, owner: tuple[int, int] | None = None) -> int:
    """Unzip ``zip_path`` into ``into`` (created if needed); with ``owner`` (uid, gid) what
    is created belongs to that user. Returns the number of files."""
    count = 0
    try:
        z = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise ArtifactError(f"the artifact is not a zip file: {err}") from err
    made: list[str] = []
    if not os.path.isdir(into):
        os.makedirs(into, exist_ok=True)
        made.append(into)
    with z:
        for info in z.infolist():
            name = info.filename
            target = _inside(into, name)
            if info.is_dir():
                if not os.path.isdir(target):
                    os.makedirs(target, exist_ok=True)
                    made.append(target)
                continue
            parent = os.path.dirname(target)
            if not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
                made.append(parent)
            if os.path.lexists(target) and (os.path.islink(target) or os.path.isdir(target)):
                raise ArtifactError(f"artifact entry {name!r} would replace a link or directory")
            mode = (info.external_attr >> 16) & 0o777 or 0o644
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            os.chmod(target, mode | stat.S_IRUSR | stat.S_IWUSR)
            if owner is not None:
                os.chown(target, *owner)
            count += 1
    if owner is not None:
        for d in made:
            os.chown(d, *owner)
    return count


# --- stores ----------------------------------------------------------------------------------


class ArtifactStore(Protocol):
    """Where artifacts are kept. ``put`` packs a directory into a new zip object;
    ``get`` unpacks one."""

    kind: StoreKind
    bucket: str

    async def put(
        self,
        pipeline: str,
        execution_id: str,
        artifact_name: str,
        directory: str,
        *,
        files: Sequence[str] | None = None,
        unique: str | None = None,
    ) -> ArtifactLocation: ...

    async def get(
        self,
        location: ArtifactLocation,
        into_directory: str,
        *,
        owner: tuple[int, int] | None = None,
    ) -> int: ...


class ZipStore(ABC):
    """Packing and unpacking around two file transfers a concrete store provides."""

    kind: StoreKind = "local"
    bucket: str = DEFAULT_BUCKET

    @abstractmethod
    def upload(self, zip_path: str, bucket: str, key: str) -> None:
        """Store the zip file at ``zip_path`` as ``bucket``/``key``."""

    @abstractmethod
    def download(self, bucket: str, key: str, zip_path: str) -> None:
        """Fetch ``bucket``/``key`` into the file ``zip_path``."""

    def _put_sync(self, key: str, directory: str, files: Sequence[str] | None) -> ArtifactLocation:
        with tempfile.TemporaryDirectory(prefix="stageline-zip-") as tmp:
            zip_path = os.path.join(tmp, "artifact.zip")
            pack(directory, zip_path, files)
            self.upload(zip_path, self.bucket, key)
        return ArtifactLocation(bucket=self.bucket, key=key, store=self.kind)

    def _get_sync(
        self, location: ArtifactLocation, into: str, owner: tuple[int, int] | None
    ) -> int:
        with tempfile.TemporaryDirectory(prefix="stageline-zip-") as tmp:
            zip_path = os.path.join(tmp, "artifact.zip")
            self.download(location.bucket, location.key, zip_path)
            return unpack(zip_path, into, owner)

    async def put(
        self,
        pipeline: str,
        execution_id: str,
        artifact_name: str,
        directory: str,
        *,
        files: Sequence[str] | None = None,
        unique: str | None = None,
    ) -> ArtifactLocation:
        key = object_key(pipeline, execution_id, artifact_name, unique)
        return await anyio.to_thread.run_sync(self._put_sync, key, directory, files)

    async def get(
        self,
        location: ArtifactLocation,
        into_directory: str,
        *,
        owner: tuple[int, int] | None = None,
    ) -> int:
        return await anyio.to_thread.run_sync(self._get_sync, location, into_directory, owner)


class LocalArtifactStore(ZipStore):
    """Artifacts as files ``<root>/<bucket>/<key>``. Every process of a deployment that runs
    actions must see the same ``root`` (one host, or a shared file system)."""

    kind: StoreKind = "local"

    def __init__(self, root: str, bucket: str = DEFAULT_BUCKET) -> None:
        self.root = root
        self.bucket = bucket

    def path(self, bucket: str, key: str) -> str:
        return _inside(self.root, os.path.join(bucket, key))

    def check_root(self) -> None:
        """Make the root (mode 0700) or check it: a directory of this process's user that
        nobody else may write, not a link (in a shared temp dir, an action could have made
        the path first to read or plant artifacts)."""
        with contextlib.suppress(FileExistsError):
            os.makedirs(self.root, mode=0o700)
        st = os.lstat(self.root)
        if (
            not stat.S_ISDIR(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            raise ArtifactError(
                f"artifact directory {self.root} must be a directory of this process's user "
                "that nobody else can write (not a link)"
            )

    def upload(self, zip_path: str, bucket: str, key: str) -> None:
        self.check_root()
        dst = self.path(bucket, key)
        os.makedirs(os.path.dirname(dst), mode=0o700, exist_ok=True)
        part = f"{dst}.{uuid.uuid4().hex}.part"
        shutil.copyfile(zip_path, part)
        os.replace(part, dst)  # never a half-written artifact under its name

    def download(self, bucket: str, key: str, zip_path: str) -> None:
        self.check_root()
        src = self.path(bucket, key)
        if not os.path.isfile(src):
            raise ArtifactError(f"artifact {bucket}/{key} is not in the store ({self.root})")
        shutil.copyfile(src, zip_path)


def _declared_store(decl: PipelineDeclaration) -> dict[str, object] | None:
    if decl.artifactStore is not None:
        return decl.artifactStore
    if decl.artifactStores:
        return next(iter(decl.artifactStores.values()))
    return None


def store_for(decl: PipelineDeclaration, settings: ArtifactSettings) -> ArtifactStore:
    """The store a pipeline's artifacts go to: S3 when its ``artifactStore`` is
    ``{type: S3, location: bucket}`` and the deployment has an S3 endpoint, else the local
    directory (in a sub-directory named after the declared bucket, if any)."""
    declared = _declared_store(decl)
    bucket = DEFAULT_BUCKET
    if declared is not None and isinstance(declared.get("location"), str):
        bucket = str(declared["location"])
    if declared is not None and declared.get("type") == "S3" and settings.s3_endpoint:
        from app.artifacts.s3 import S3ArtifactStore

        return S3ArtifactStore(bucket, settings)
    return LocalArtifactStore(settings.root, bucket)


def store_of(location: ArtifactLocation, settings: ArtifactSettings) -> ArtifactStore:
    """The store that holds ``location``."""
    if location.store == "S3":
        if not settings.s3_endpoint:
            raise ArtifactError(
                f"artifact s3://{location.bucket}/{location.key} is in S3 but this process "
                f"has no S3 endpoint (set {ENV_S3_ENDPOINT})"
            )
        from app.artifacts.s3 import S3ArtifactStore

        return S3ArtifactStore(location.bucket, settings)
    return LocalArtifactStore(settings.root, location.bucket)
