"""Source actions as a worker runs them: a git repository or an S3 object becomes the
action's output artifact, and the revision fetched is recorded with the result.

- ``AWS/Source/CodeStarSourceConnection/1`` (``FullRepositoryId``, ``BranchName``,
  ``ConnectionArn``, ``OutputArtifactFormat``) and ``AWS/Source/CodeCommit/1``
  (``RepositoryName``, ``BranchName``, ``OutputArtifactFormat``): the repository is found
  through the deployment's :class:`SourceSettings` (``STAGELINE_GIT_ROOT``, a connections
  file ``STAGELINE_GIT_CONNECTIONS``; docs/pipelines.md, "Sources"), cloned with the git CLI
  into a private temporary directory, the branch head (or the execution's ``COMMIT_ID``
  override) resolved to a commit, and the tree at that commit exported with ``git archive``
  (``CODE_ZIP``, the default) or checked out with its history (``CODEBUILD_CLONE_REF``).
- ``AWS/Source/S3/1`` (``S3Bucket``, ``S3ObjectKey``): the zip object is read from the
  deployment's S3 endpoint (the artifact store's, ``STAGELINE_S3_ENDPOINT``) with botocore;
  the revision is its version id (or its ETag when the bucket is not versioned); overrides
  ``S3_OBJECT_KEY`` and ``S3_OBJECT_VERSION_ID``.

Nothing of the user's repository runs: the clone is bare (no hooks, no checkout filters of
the source's configuration), external transports (``ext::``) stay disabled, names from the
declaration are checked before they reach a command line, and every argument list ends its
options with ``--`` where git allows it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from app.domain.events import ArtifactRevision
from app.domain.model import ActionDeclaration
from app.domain.sources import overrides_for, source_family

ENV_GIT_ROOT = "STAGELINE_GIT_ROOT"
ENV_GIT_CONNECTIONS = "STAGELINE_GIT_CONNECTIONS"
ENV_S3_ENDPOINT = "STAGELINE_S3_ENDPOINT"  # the artifact store's endpoint (same setting)
ENV_S3_REGION = "STAGELINE_S3_REGION"
REVISION_SUMMARY_KEY = "codepipeline-artifact-revision-summary"  # S3 object metadata
GIT_TIMEOUT_S = 600.0
REVISION_SUMMARY_MAX = 2048  # the model's RevisionSummary
MESSAGE_VARIABLE_MAX = 4096  # the CommitMessage output variable (a long message is cut)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SEGMENT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")

# (artifact name, directory) -> where the artifact store put it
PutArtifact = Callable[[str, str], Awaitable[Any]]


class SourceError(Exception):
    """The source cannot be fetched: ``code`` is the recorded error code, the message says
    why in words a pipeline's author can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Connection:
    """Where the repositories of one connection live: ``url`` is a base (the repository id
    is appended as a path) or a template with ``{FullRepositoryId}``/``{RepositoryName}``;
    ``commit_url`` a template for ``revisionUrl`` (``{CommitId}`` and the repository id)."""

    url: str
    commit_url: str | None = None


@dataclass(frozen=True)
class SourceSettings:
    """A deployment's source settings (``stageline worker`` reads them from the environment).

    ``git_root``: a directory (or a ``file://``/``https://``/``ssh://`` base URL) under
    which ``FullRepositoryId`` / ``RepositoryName`` is the repository's path.
    ``connections``: per ``ConnectionArn`` (``*``: any other; ``CodeCommit``: CodeCommit
    actions) a :class:`Connection`, from the JSON file named by ``STAGELINE_GIT_CONNECTIONS``.
    """

    git_root: str | None = None
    connections: Mapping[str, Connection] = field(default_factory=dict)
    s3_endpoint: str | None = None
    s3_region: str | None = None
    git: str = "git"  # the git CLI

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SourceSettings:
        e = os.environ if env is None else env
        path = e.get(ENV_GIT_CONNECTIONS) or None
        return cls(
            git_root=e.get(ENV_GIT_ROOT) or None,
            connections=load_connections(path) if path else {},
            s3_endpoint=e.get(ENV_S3_ENDPOINT) or None,
            s3_region=e.get(ENV_S3_REGION) or None,
        )


def load_connections(path: str) -> dict[str, Connection]:
    """The connections file: ``{"<ConnectionArn>" | "*" | "CodeCommit": "<url>" |
    {"url": "<url>", "commitUrl": "<template>"}}``."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a JSON object of connection -> url is expected")
    out: dict[str, Connection] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            out[str(key)] = Connection(value)
        elif isinstance(value, dict) and isinstance(value.get("url"), str):
            cu = value.get("commitUrl")
            out[str(key)] = Connection(value["url"], cu if isinstance(cu, str) else None)
        else:
            raise ValueError(f"{path}: connection {key!r} needs a url")
    return out


@dataclass(frozen=True)
class SourceOutcome:
    revision: ArtifactRevision
    output_variables: dict[str, str]
    summary: str
    artifacts: dict[str, Any]  # output artifact name -> stored location


# --- configuration ---------------------------------------------------------------------------


def _config(a: ActionDeclaration, key: str, required: bool = True) -> str | None:
    value = (a.configuration or {}).get(key)
    if required and not value:
        raise SourceError(
            "ConfigurationError",
            f"source action '{a.name}' needs configuration '{key}'",
        )
    return value or None


def _repository_id(value: str, key: str, *, nested: bool) -> str:
    """A repository id safe to use as a path below a root: segments of letters, digits,
    ``._-`` (no ``.``/``..``, none starting with ``-``); one segment unless ``nested``."""
    parts = value.split("/")
    if (not nested and len(parts) != 1) or any(
        p in (".", "..") or _SEGMENT.fullmatch(p) is None for p in parts
    ):
        raise SourceError(
            "ConfigurationError",
            f"{key} '{value}' is not a repository name (letters, digits, '.', '_', '-'"
            + (", segments separated by '/')" if nested else ")"),
        )
    return value


@dataclass(frozen=True)
class GitSource:
    url: str  # what git clones
    shown: str  # the repository as the user named it (messages)
    branch: str
    commit_url: str | None  # revisionUrl template
    variables: dict[str, str]  # output variables that do not depend on the commit


def git_source(a: ActionDeclaration, settings: SourceSettings) -> GitSource:
    """Where a git source action's repository is (``SourceError`` when it cannot say)."""
    provider = a.actionTypeId.provider
    branch = _config(a, "BranchName")
    assert branch is not None
    if provider == "CodeCommit":
        repo = _repository_id(_config(a, "RepositoryName") or "", "RepositoryName", nested=False)
        conn = settings.connections.get("CodeCommit")
        names = {"RepositoryName": repo, "FullRepositoryId": repo}
        variables = {"BranchName": branch, "RepositoryName": repo}
    else:
        repo = _repository_id(_config(a, "FullRepositoryId") or "", "FullRepositoryId", nested=True)
        arn = _config(a, "ConnectionArn", required=False) or ""
        conn = settings.connections.get(arn) or settings.connections.get("*")
        names = {"FullRepositoryId": repo, "RepositoryName": repo.rsplit("/", 1)[-1]}
        variables = {"BranchName": branch, "FullRepositoryName": repo}
        if arn:
            variables["ConnectionArn"] = arn
    base = conn.url if conn is not None else settings.git_root
    if not base:
        raise SourceError(
            "ConfigurationError",
            f"no git location for repository '{repo}': set {ENV_GIT_ROOT} (a directory or "
            f"base URL) or map the connection in {ENV_GIT_CONNECTIONS}",
        )
    url = _repository_url(base, names)
    template = conn.commit_url if conn is not None else None
    if template is None and re.match(r"^https?://", url):
        template = re.sub(r"\.git/?$", "", url).rstrip("/") + "/commit/{CommitId}"
    return GitSource(url, repo, branch, _fill(template, names) if template else None, variables)


def _fill(template: str, names: Mapping[str, str]) -> str:
    out = template
    for k, v in names.items():
        out = out.replace("{" + k + "}", v)
    return out


def _repository_url(base: str, names: Mapping[str, str]) -> str:
    if "{FullRepositoryId}" in base or "{RepositoryName}" in base:
        return _fill(base, names)
    repo = names["FullRepositoryId"]
    if _SCHEME.match(base):
        return base.rstrip("/") + "/" + repo
    path = os.path.join(base, repo)
    if not os.path.exists(path) and os.path.isdir(path + ".git"):
        path += ".git"  # a bare repository named <name>.git
    return path


# --- git -------------------------------------------------------------------------------------


# the worker's own git environment that reaches git: how it authenticates over ssh
_GIT_ENV_KEPT = frozenset({"GIT_SSH", "GIT_SSH_COMMAND"})


def _git_env(global_config: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _GIT_ENV_KEPT}
    env.update(
        GIT_TERMINAL_PROMPT="0",  # never wait for a password
        GIT_CONFIG_NOSYSTEM="1",
        GIT_ALLOW_PROTOCOL="file:git:http:https:ssh",  # no ext::, no fd::
        LC_ALL="C",
    )
    if global_config is not None:
        env["GIT_CONFIG_GLOBAL"] = global_config
    return env


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def trusting_config(work: str, repository: str) -> str:
    """A global git configuration for one fetch: the worker user's own (included) plus
    ``safe.directory`` for the local repository the operator's mapping names, so a worker
    may read repositories another user owns (e.g. a git service's), which git otherwise
    refuses as "dubious ownership". Returns its path."""
    home = os.path.expanduser("~")
    own = os.environ.get("GIT_CONFIG_GLOBAL") or os.path.join(home, ".gitconfig")
    xdg = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "git")
    real = os.path.realpath(repository)
    lines = ["[include]", f"\tpath = {_quoted(os.path.join(xdg, 'config'))}"]
    lines += [f"\tpath = {_quoted(own)}", "[safe]"]
    for d in dict.fromkeys([repository, real, os.path.join(real, ".git")]):
        lines.append(f"\tdirectory = {_quoted(d)}")
    path = os.path.join(work, "gitconfig")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


async def _git(
    settings: SourceSettings, *args: str, check: bool = True, config: str | None = None
) -> tuple[int, str, str]:
    with anyio.fail_after(GIT_TIMEOUT_S):
        p = await anyio.run_process(
            [settings.git, "-c", "core.hooksPath=/dev/null", *args],
            check=False,
            env=_git_env(config),
        )
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace").strip()
    if check and p.returncode != 0:
        raise SourceError("GitError", f"git {args[0]} failed: {err or p.returncode}")
    return p.returncode, out, err


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def fetch_git(
    a: ActionDeclaration,
    overrides: Mapping[str, str],
    settings: SourceSettings,
    into: str,
    work: str,
) -> tuple[ArtifactRevision, dict[str, str], str]:
    """Fetch a git source into directory ``into`` (``work``: a private scratch directory):
    the revision, the output variables and a one-line summary."""
    src = git_source(a, settings)
    fmt = _config(a, "OutputArtifactFormat", required=False) or "CODE_ZIP"
    if fmt not in ("CODE_ZIP", "CODEBUILD_CLONE_REF"):
        raise SourceError(
            "ConfigurationError",
            f"OutputArtifactFormat '{fmt}' is not CODE_ZIP or CODEBUILD_CLONE_REF",
        )
    rc, _, _ = await _git(settings, "check-ref-format", "--branch", src.branch, check=False)
    if rc != 0 or src.branch.startswith("-"):
        raise SourceError("ConfigurationError", f"BranchName '{src.branch}' is not a branch name")
    if not _SCHEME.match(src.url) and not await anyio.Path(src.url).is_dir():
        raise SourceError("RepositoryNotFound", f"repository '{src.shown}' not found ({src.url})")
    config = None
    if not _SCHEME.match(src.url) or src.url.startswith("file://"):
        local = src.url.removeprefix("file://")
        config = await anyio.to_thread.run_sync(trusting_config, work, local)
    bare = os.path.join(work, "repo.git")
    rc, _, err = await _git(
        settings, "clone", "--bare", "--quiet", "--", src.url, bare, check=False, config=config
    )
    if rc != 0:
        raise SourceError(
            "RepositoryNotFound", f"repository '{src.shown}' cannot be cloned from {src.url}: {err}"
        )
    gd = f"--git-dir={bare}"
    wanted = overrides.get("COMMIT_ID")
    rc, head, _ = await _git(
        settings,
        gd,
        "rev-parse",
        "--verify",
        "--quiet",
        f"refs/heads/{src.branch}^{{commit}}",
        check=False,
    )
    if rc != 0:
        raise SourceError(
            "BranchNotFound", f"branch '{src.branch}' not found in repository '{src.shown}'"
        )
    commit = head.strip()
    if wanted is not None:
        rc, out, _ = await _git(
            settings, gd, "rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", check=False
        )
        if rc != 0 or not out.strip().startswith(wanted.lower()):  # not a ref named so
            raise SourceError(
                "RevisionNotFound",
                f"commit '{wanted}' (source revision override) not found in repository "
                f"'{src.shown}'",
            )
        commit = out.strip()
    _, meta, _ = await _git(
        settings, gd, "log", "-1", "--format=%aI%x00%cI%x00%ct%x00%B", commit, "--"
    )
    author_date, committer_date, ctime, message = meta.split("\x00", 3)
    message = message.strip()
    if fmt == "CODE_ZIP":
        tar_path = os.path.join(work, "tree.tar")
        await _git(settings, gd, "archive", "--format=tar", f"--output={tar_path}", commit)
        await anyio.to_thread.run_sync(_extract_tar, tar_path, into)
    else:
        await _git(settings, "clone", "--quiet", "--no-checkout", "--", bare, into)
        await _git(settings, "-C", into, "checkout", "--quiet", "-B", src.branch, commit)
        if _SCHEME.match(src.url) or os.path.isabs(src.url):
            await _git(settings, "-C", into, "remote", "set-url", "origin", src.url)
    created = int(ctime)
    variables = dict(src.variables)
    variables.update(
        CommitId=commit,
        CommitMessage=message[:MESSAGE_VARIABLE_MAX],
        AuthorDate=_iso_of(author_date),
    )
    if a.actionTypeId.provider == "CodeCommit":
        variables["CommitterDate"] = _iso_of(committer_date)
    url = src.commit_url.replace("{CommitId}", commit) if src.commit_url else None
    revision = ArtifactRevision(
        revisionId=commit,
        revisionSummary=message[:REVISION_SUMMARY_MAX] or None,
        revisionUrl=url,
        created=float(created),
        revisionChangeIdentifier=_iso(created),
    )
    first = message.splitlines()[0] if message else ""
    return revision, variables, f"{src.shown}@{src.branch} {commit[:12]} {first}".strip()


def _iso_of(git_iso: str) -> str:
    """git's strict ISO-8601 (with offset) as UTC ``...Z``."""
    return datetime.fromisoformat(git_iso.strip()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _extract_tar(tar_path: str, into: str) -> None:
    os.makedirs(into, exist_ok=True)
    with tarfile.open(tar_path) as tf:
        if hasattr(tarfile, "tar_filter"):
            tf.extractall(into, filter="tar")
        else:  # pragma: no cover - Python before 3.11.4; git archive writes no '..' names
            tf.extractall(into)


# --- S3 --------------------------------------------------------------------------------------


def _s3_client(settings: SourceSettings) -> Any:
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def _s3_fetch(
    settings: SourceSettings, bucket: str, key: str, version: str | None, zip_path: str
) -> dict[str, Any]:
    import botocore.exceptions

    client = _s3_client(settings)
    where = f"s3://{bucket}/{key}" + (f" (version {version})" if version else "")
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version:
        args["VersionId"] = version
    try:
        reply = client.get_object(**args)
        with reply["Body"] as body, open(zip_path, "wb") as f:
            shutil.copyfileobj(body, f, 1 << 16)
    except botocore.exceptions.ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "InvalidArgument"):
            raise SourceError("ObjectNotFound", f"{where} not found: {code}") from err
        raise SourceError("S3Error", f"reading {where}: {err}") from err
    except botocore.exceptions.BotoCoreError as err:
        raise SourceError("S3Error", f"reading {where} at {settings.s3_endpoint}: {err}") from err
    return dict(reply)


def _unzip(zip_path: str, into: str, where: str) -> None:
    try:
        z = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise SourceError("InvalidArtifact", f"{where} is not a zip file") from err
    base = os.path.realpath(into)
    with z:
        for info in z.infolist():
            target = os.path.realpath(os.path.join(into, info.filename))
            if target != base and not target.startswith(base + os.sep):
                raise SourceError(
                    "InvalidArtifact", f"{where}: entry {info.filename!r} leaves the directory"
                )
        z.extractall(into)


async def fetch_s3(
    a: ActionDeclaration,
    overrides: Mapping[str, str],
    settings: SourceSettings,
    into: str,
    work: str,
) -> tuple[ArtifactRevision, dict[str, str], str]:
    """Fetch an S3 source (a zip object) into ``into``."""
    bucket = _config(a, "S3Bucket")
    key = overrides.get("S3_OBJECT_KEY") or _config(a, "S3ObjectKey")
    assert bucket is not None and key is not None
    if not settings.s3_endpoint:
        raise SourceError(
            "ConfigurationError",
            f"no S3 endpoint for s3://{bucket}/{key}: set {ENV_S3_ENDPOINT}",
        )
    version = overrides.get("S3_OBJECT_VERSION_ID")
    zip_path = os.path.join(work, "object.zip")
    reply = await anyio.to_thread.run_sync(_s3_fetch, settings, bucket, key, version, zip_path)
    where = f"s3://{bucket}/{key}"
    await anyio.to_thread.run_sync(_unzip, zip_path, into, where)
    etag = str(reply.get("ETag") or "").strip('"')
    vid = reply.get("VersionId")
    vid = str(vid) if vid and vid != "null" else None
    modified = reply.get("LastModified")
    created = modified.timestamp() if isinstance(modified, datetime) else None
    summary = (reply.get("Metadata") or {}).get(REVISION_SUMMARY_KEY)
    revision = ArtifactRevision(
        revisionId=vid or etag,
        revisionSummary=summary or None,
        created=created,
        revisionChangeIdentifier=etag or None,
    )
    variables = {"ETag": etag} if etag else {}
    if vid:
        variables["VersionId"] = vid
    return revision, variables, f"{where} {vid or etag}"


# --- the action ------------------------------------------------------------------------------


def output_names(a: ActionDeclaration) -> list[str]:
    return [str(o["name"]) for o in a.outputArtifacts or [] if isinstance(o, dict) and "name" in o]


async def run_source_job(
    declaration: ActionDeclaration,
    source_revisions: Sequence[Mapping[str, str]] | None,
    settings: SourceSettings,
    put_artifact: PutArtifact | None,
    *,
    workdir: str | None = None,
) -> SourceOutcome:
    """Fetch the source and store it as the action's output artifact(s) with
    ``put_artifact(name, directory) -> location``. ``SourceError`` when it cannot."""
    family = source_family(declaration)
    if family is None:
        t = declaration.actionTypeId
        raise SourceError(
            "ActionTypeNotSupported", f"{t.owner}/{t.category}/{t.provider} is not a source"
        )
    overrides = overrides_for(source_revisions, declaration.name)
    work = tempfile.mkdtemp(prefix="stageline-source-", dir=workdir)
    try:
        into = os.path.join(work, "out")
        os.makedirs(into)
        fetch = fetch_git if family == "git" else fetch_s3
        revision, variables, summary = await fetch(
            declaration, overrides, settings, into, os.path.join(work, "")
        )
        artifacts: dict[str, Any] = {}
        if put_artifact is not None:
            for name in output_names(declaration):
                artifacts[name] = await put_artifact(name, into)
        return SourceOutcome(revision, variables, summary, artifacts)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))
