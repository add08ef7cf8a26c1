"""The git source runner against real repositories made by the test (git CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.domain.model import ActionDeclaration, ActionTypeId
from workers.runners.sources import (
    Connection,
    SourceError,
    SourceSettings,
    git_source,
    load_connections,
    run_source_job,
)

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None and os.environ.get("CI") != "true", reason="no git CLI"
)

ARN = "arn:aws:codestar-connections:us-east-1:123456789012:connection/abc"


def git(cwd: Path, *args: str, date: str = "2024-01-02T03:04:05+01:00") -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Bob",
        "GIT_COMMITTER_EMAIL": "bob@example.com",
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


class Repo:
    def __init__(self, root: Path, name: str = "team/app") -> None:
        self.root = root
        self.path = root / name
        self.path.mkdir(parents=True)
        p = self.path
        git(p, "init", "--quiet", "--initial-branch=main")
        (p / "app.txt").write_text("one\n")
        git(p, "add", "app.txt")
        git(p, "commit", "--quiet", "-m", "first commit", date="2024-01-01T00:00:00+00:00")
        self.first = git(p, "rev-parse", "HEAD")
        (p / "app.txt").write_text("two\n")
        (p / "sub").mkdir()
        (p / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
        os.chmod(p / "sub" / "run.sh", 0o755)
        git(p, "add", "-A")
        git(p, "commit", "--quiet", "-m", "second commit\n\nwith a body")
        self.second = git(p, "rev-parse", "HEAD")
        git(p, "checkout", "--quiet", "-b", "feature")
        (p / "app.txt").write_text("feature\n")
        git(p, "commit", "--quiet", "-am", "on a branch")
        self.feature = git(p, "rev-parse", "HEAD")
        git(p, "checkout", "--quiet", "main")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "git")


def connection_action(
    repo_id: str = "team/app", branch: str = "main", **extra: str
) -> ActionDeclaration:
    return ActionDeclaration(
        name="Src",
        actionTypeId=ActionTypeId(
            category="Source", owner="AWS", provider="CodeStarSourceConnection", version="1"
        ),
        configuration={
            "FullRepositoryId": repo_id,
            "BranchName": branch,
            "ConnectionArn": ARN,
            **extra,
        },
        outputArtifacts=[{"name": "SourceOut"}],
    )


def codecommit_action(name: str = "app", branch: str = "main") -> ActionDeclaration:
    return ActionDeclaration(
        name="Src",
        actionTypeId=ActionTypeId(
            category="Source", owner="AWS", provider="CodeCommit", version="1"
        ),
        configuration={"RepositoryName": name, "BranchName": branch},
        outputArtifacts=[{"name": "SourceOut"}],
    )


def _mkdir(p: Path) -> None:
    p.mkdir(parents=True, exist_ok=True)


def leftovers(tmp: Path) -> list[Path]:
    """The runner's scratch directories still there (it removes its own)."""
    return [p for p in tmp.iterdir() if p.name.startswith("stageline-source-")]


class Sink:
    """Copies what the runner stores (the artifact store's put, without zipping)."""

    def __init__(self, into: Path) -> None:
        self.into = into
        self.names: list[str] = []

    async def __call__(self, name: str, directory: str) -> dict[str, str]:
        self.names.append(name)
        dst = self.into / name
        shutil.copytree(directory, dst, symlinks=True)
        return {"stored": str(dst)}


async def fetch(
    a: ActionDeclaration,
    settings: SourceSettings,
    tmp: Path,
    revisions: list[dict[str, str]] | None = None,
) -> tuple[Any, Path]:
    _mkdir(tmp)
    sink = Sink(tmp / "stored")
    out = await run_source_job(a, revisions, settings, sink, workdir=str(tmp))
    assert sink.names == ["SourceOut"]
    assert out.artifacts == {"SourceOut": {"stored": str(tmp / "stored" / "SourceOut")}}
    return out, tmp / "stored" / "SourceOut"


async def test_branch_head_is_exported(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    out, tree = await fetch(connection_action(), settings, tmp_path)
    assert (tree / "app.txt").read_text() == "two\n"
    assert (tree / "sub" / "run.sh").read_text().startswith("#!/bin/sh")
    assert os.stat(tree / "sub" / "run.sh").st_mode & 0o111  # modes kept
    assert not (tree / ".git").exists()  # CODE_ZIP: the tree only
    r = out.revision
    assert r.revisionId == repo.second
    assert r.revisionSummary == "second commit\n\nwith a body"
    assert r.revisionUrl is None  # a local path has no commit page
    assert r.created == 1704161045.0  # 2024-01-02T02:04:05Z
    assert r.revisionChangeIdentifier == "2024-01-02T02:04:05Z"
    assert out.output_variables == {
        "BranchName": "main",
        "FullRepositoryName": "team/app",
        "ConnectionArn": ARN,
        "CommitId": repo.second,
        "CommitMessage": "second commit\n\nwith a body",
        "AuthorDate": "2024-01-02T02:04:05Z",
    }
    assert repo.second[:12] in out.summary and "second commit" in out.summary
    assert leftovers(tmp_path) == []


async def test_another_branch(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    out, tree = await fetch(connection_action(branch="feature"), settings, tmp_path)
    assert (tree / "app.txt").read_text() == "feature\n"
    assert out.revision.revisionId == repo.feature
    assert out.output_variables["BranchName"] == "feature"


@pytest.mark.parametrize("short", [False, True])
async def test_commit_override(repo: Repo, tmp_path: Path, short: bool) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    value = repo.first[:10] if short else repo.first
    revs = [
        {"actionName": "Other", "revisionType": "COMMIT_ID", "revisionValue": repo.second},
        {"actionName": "Src", "revisionType": "COMMIT_ID", "revisionValue": value},
    ]
    out, tree = await fetch(connection_action(), settings, tmp_path, revs)
    assert (tree / "app.txt").read_text() == "one\n"
    assert not (tree / "sub").exists()
    assert out.revision.revisionId == repo.first  # the full id, also for a short one
    assert out.output_variables["CommitId"] == repo.first
    assert out.revision.revisionSummary == "first commit"


async def test_override_may_name_a_commit_of_another_branch(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    revs = [{"actionName": "Src", "revisionType": "COMMIT_ID", "revisionValue": repo.feature}]
    _, tree = await fetch(connection_action(), settings, tmp_path, revs)
    assert (tree / "app.txt").read_text() == "feature\n"


async def _error(
    a: ActionDeclaration, settings: SourceSettings, tmp: Path, **kw: Any
) -> SourceError:
    with pytest.raises(SourceError) as info:
        await run_source_job(a, kw.get("revisions"), settings, Sink(tmp / "s"), workdir=str(tmp))
    assert not (tmp / "s").exists()  # nothing stored
    assert leftovers(tmp) == []
    return info.value


async def test_missing_branch_fails_clearly(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    err = await _error(connection_action(branch="nope"), settings, tmp_path)
    assert err.code == "BranchNotFound"
    assert err.message == "branch 'nope' not found in repository 'team/app'"


async def test_missing_repository_fails_clearly(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    err = await _error(connection_action("team/gone"), settings, tmp_path)
    assert err.code == "RepositoryNotFound"
    assert "repository 'team/gone' not found" in err.message


async def test_a_directory_that_is_no_repository(repo: Repo, tmp_path: Path) -> None:
    (repo.root / "team" / "empty").mkdir()
    settings = SourceSettings(git_root=str(repo.root))
    err = await _error(connection_action("team/empty"), settings, tmp_path)
    assert err.code == "RepositoryNotFound"
    assert "cannot be cloned" in err.message


async def test_unknown_commit_override(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    revs = [{"actionName": "Src", "revisionType": "COMMIT_ID", "revisionValue": "deadbeef"}]
    err = await _error(connection_action(), settings, tmp_path, revisions=revs)
    assert err.code == "RevisionNotFound"
    assert "commit 'deadbeef'" in err.message and "'team/app'" in err.message


@pytest.mark.parametrize(
    ("repo_id", "branch"),
    [("../etc", "main"), ("team/../../x", "main"), ("-x/app", "main"), ("team/app", "-f")],
)
async def test_unsafe_names_never_reach_git(
    repo: Repo, tmp_path: Path, repo_id: str, branch: str
) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    err = await _error(connection_action(repo_id, branch), settings, tmp_path)
    assert err.code == "ConfigurationError"


async def test_missing_configuration(repo: Repo, tmp_path: Path) -> None:
    a = ActionDeclaration(
        name="Src",
        actionTypeId=ActionTypeId(
            category="Source", owner="AWS", provider="CodeCommit", version="1"
        ),
        configuration={"RepositoryName": "app"},
    )
    err = await _error(a, SourceSettings(git_root=str(repo.root)), tmp_path)
    assert err.code == "ConfigurationError"
    assert err.message == "source action 'Src' needs configuration 'BranchName'"


async def test_no_git_location_configured(tmp_path: Path) -> None:
    err = await _error(connection_action(), SourceSettings(), tmp_path)
    assert err.code == "ConfigurationError"
    assert "STAGELINE_GIT_ROOT" in err.message


async def test_clone_ref_format_keeps_history(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    a = connection_action(OutputArtifactFormat="CODEBUILD_CLONE_REF")
    _, tree = await fetch(a, settings, tmp_path)
    assert (tree / ".git").is_dir()
    assert git(tree, "rev-parse", "HEAD") == repo.second
    assert git(tree, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(tree, "log", "--format=%s") == "second commit\nfirst commit"
    assert git(tree, "remote", "get-url", "origin") == str(repo.path)
    assert (tree / "app.txt").read_text() == "two\n"


async def test_bad_output_format(repo: Repo, tmp_path: Path) -> None:
    settings = SourceSettings(git_root=str(repo.root))
    err = await _error(connection_action(OutputArtifactFormat="TAR"), settings, tmp_path)
    assert err.code == "ConfigurationError"


async def test_codecommit_bare_repository(tmp_path: Path) -> None:
    work = Repo(tmp_path / "work", "app")
    root = tmp_path / "srv"
    root.mkdir()
    git(root, "clone", "--quiet", "--bare", str(work.path), "app.git")
    settings = SourceSettings(git_root=str(root))
    out, tree = await fetch(codecommit_action(), settings, tmp_path / "t")
    assert (tree / "app.txt").read_text() == "two\n"
    v = out.output_variables
    assert v["RepositoryName"] == "app"
    assert v["CommitterDate"] == "2024-01-02T02:04:05Z"
    assert v["CommitId"] == work.second
    assert "FullRepositoryName" not in v and "ConnectionArn" not in v


async def test_codecommit_names_one_repository(tmp_path: Path) -> None:
    err = await _error(codecommit_action("team/app"), SourceSettings(git_root="/x"), tmp_path)
    assert err.code == "ConfigurationError"


async def test_connections_file_maps_a_connection(repo: Repo, tmp_path: Path) -> None:
    path = tmp_path / "connections.json"
    path.write_text(
        json.dumps(
            {
                ARN: {
                    "url": f"file://{repo.root}/{{FullRepositoryId}}",
                    "commitUrl": "https://git.example.com/{FullRepositoryId}/-/commit/{CommitId}",
                },
                "*": "/nowhere",
            }
        )
    )
    settings = SourceSettings(connections=load_connections(str(path)))
    out, tree = await fetch(connection_action(), settings, tmp_path / "t")
    assert (tree / "app.txt").read_text() == "two\n"
    assert out.revision.revisionUrl == (f"https://git.example.com/team/app/-/commit/{repo.second}")


def test_repository_locations() -> None:
    s = SourceSettings(
        git_root="https://git.example.com/",
        connections={"CodeCommit": Connection("ssh://git@cc.example.com/repos/{RepositoryName}")},
    )
    g = git_source(connection_action("org/sub/app"), s)
    assert g.url == "https://git.example.com/org/sub/app"
    assert g.commit_url == "https://git.example.com/org/sub/app/commit/{CommitId}"
    c = git_source(codecommit_action("app"), s)
    assert c.url == "ssh://git@cc.example.com/repos/app"
    assert c.commit_url is None
    star = SourceSettings(connections={"*": Connection("https://h/{FullRepositoryId}.git")})
    g = git_source(connection_action(), star)
    assert g.url == "https://h/team/app.git"
    assert g.commit_url == "https://h/team/app/commit/{CommitId}"


def test_settings_from_env(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({ARN: "https://h"}))
    s = SourceSettings.from_env(
        {
            "STAGELINE_GIT_ROOT": "/srv/git",
            "STAGELINE_GIT_CONNECTIONS": str(path),
            "STAGELINE_S3_ENDPOINT": "http://s3:9000",
        }
    )
    assert s.git_root == "/srv/git"
    assert s.connections == {ARN: Connection("https://h")}
    assert s.s3_endpoint == "http://s3:9000"
    assert SourceSettings.from_env({}) == SourceSettings()
    path.write_text(json.dumps({ARN: 3}))
    with pytest.raises(ValueError, match="needs a url"):
        load_connections(str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository away")
async def test_repository_of_another_user(repo: Repo, tmp_path: Path) -> None:
    """A repository owned by another user (a git service's) under the operator's root is
    read (git's "dubious ownership" refusal is lifted for that repository only)."""
    _chown(repo.root, 65534)
    settings = SourceSettings(git_root=str(repo.root))
    out, tree = await fetch(connection_action(), settings, tmp_path / "t")
    assert (tree / "app.txt").read_text() == "two\n"
    assert out.revision.revisionId == repo.second
    cc = SourceSettings(git_root=f"file://{repo.root}/team")
    out, _ = await fetch(codecommit_action(), cc, tmp_path / "u")
    assert out.revision.revisionId == repo.second


def _chown(root: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(root, uid, uid)


async def test_a_commit_override_is_never_a_ref_name(repo: Repo, tmp_path: Path) -> None:
    git(repo.path, "branch", "beef1234", repo.first)  # a branch named like a commit id
    settings = SourceSettings(git_root=str(repo.root))
    revs = [{"actionName": "Src", "revisionType": "COMMIT_ID", "revisionValue": "beef1234"}]
    err = await _error(connection_action(), settings, tmp_path, revisions=revs)
    assert err.code == "RevisionNotFound"


def test_worker_command_line_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import CliError, _worker_config, build_parser

    monkeypatch.delenv("STAGELINE_GIT_ROOT", raising=False)
    monkeypatch.setenv("STAGELINE_GIT_CONNECTIONS", "")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"*": "https://git.example.com"}))
    args = build_parser().parse_args(
        ["worker", "--git-root", "/srv/git", "--git-connections", str(path)]
    )
    cfg = _worker_config(args)
    assert cfg.sources.git_root == "/srv/git"
    assert cfg.sources.connections == {"*": Connection("https://git.example.com")}
    monkeypatch.setenv("STAGELINE_GIT_ROOT", "/from/env")
    assert _worker_config(build_parser().parse_args(["worker"])).sources.git_root == "/from/env"
    bad = build_parser().parse_args(["worker", "--git-connections", str(tmp_path / "none")])
    with pytest.raises(CliError, match="--git-connections"):
        _worker_config(bad)


async def test_no_output_artifact_still_records_the_revision(repo: Repo, tmp_path: Path) -> None:
    a = msgspec.structs.replace(connection_action(), outputArtifacts=None)
    sink = Sink(tmp_path / "stored")
    out = await run_source_job(
        a, None, SourceSettings(git_root=str(repo.root)), sink, workdir=str(tmp_path)
    )
    assert sink.names == [] and out.artifacts == {}
    assert out.revision.revisionId == repo.second


async def test_a_long_commit_message_is_cut(repo: Repo, tmp_path: Path) -> None:
    message = "subject\n\n" + "x" * 10_000
    git(repo.path, "commit", "--quiet", "--allow-empty", "-m", message)
    try:
        out, _ = await fetch(connection_action(), SourceSettings(git_root=str(repo.root)), tmp_path)
        assert out.revision.revisionSummary == message[:2048]
        assert out.output_variables["CommitMessage"] == message[:4096]
    finally:
        git(repo.path, "reset", "--quiet", "--hard", repo.second)
