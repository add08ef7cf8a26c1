"""Artifact stores: zip packing rules, the local store, the S3 store on a real S3 server."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from app.artifacts import (
    ArtifactError,
    ArtifactLocation,
    ArtifactSettings,
    LocalArtifactStore,
    object_key,
    pack,
    store_for,
    unpack,
)
from app.artifacts.store import DEFAULT_BUCKET, select_files, store_of
from app.domain.model import PipelineDeclaration
from tests.s3_server import make_bucket


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as z:
        return sorted(z.namelist())


def decl(artifact_store: dict[str, str] | None = None) -> PipelineDeclaration:
    return PipelineDeclaration(
        name="p",
        roleArn="arn:aws:iam::123456789012:role/r",
        stages=[],
        artifactStore=artifact_store,
    )


# --- packing ---------------------------------------------------------------------------------


def test_pack_whole_directory_and_unpack_round_trip(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"a.txt": "A", "sub/b.txt": "B", ".hidden": "H"})
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o755)
    z = tmp_path / "a.zip"
    assert pack(str(src), str(z)) == 4
    assert names(z) == [".hidden", "a.txt", "run.sh", "sub/b.txt"]
    out = tmp_path / "out"
    assert unpack(str(z), str(out)) == 4
    assert (out / "sub/b.txt").read_text() == "B"
    assert (out / "run.sh").stat().st_mode & stat.S_IXUSR  # executable bits kept


def test_pack_selected_paths_and_globs(tmp_path: Path) -> None:
    src = tree(
        tmp_path / "src",
        {"dist/app.js": "x", "dist/lib/u.js": "y", "README": "r", "notes.md": "n", "x.md": "m"},
    )
    z = tmp_path / "a.zip"
    pack(str(src), str(z), ["dist", "*.md"])
    assert names(z) == ["dist/app.js", "dist/lib/u.js", "notes.md", "x.md"]
    pack(str(src), str(z), ["**/*.js"])
    assert names(z) == ["dist/app.js", "dist/lib/u.js"]
    pack(str(src), str(z), ["dist/*.js", "./README"])
    assert names(z) == ["README", "dist/app.js"]
    pack(str(src), str(z), ["dist/**"])
    assert names(z) == ["dist/app.js", "dist/lib/u.js"]
    pack(str(src), str(z), ["."])
    assert len(names(z)) == 5


def test_a_declared_path_matching_nothing_fails_naming_it(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", {"a.txt": "A"})
    with pytest.raises(ArtifactError, match=r"'build/out\.bin' matched no file"):
        pack(str(src), str(tmp_path / "a.zip"), ["a.txt", "build/out.bin"])


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "a/../../x"])
def test_paths_outside_the_workspace_are_refused(tmp_path: Path, bad: str) -> None:
    src = tree(tmp_path / "src", {"a.txt": "A"})
    with pytest.raises(ArtifactError):
        pack(str(src), str(tmp_path / "a.zip"), [bad])


def test_symbolic_links_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t")
    src = tree(tmp_path / "src", {"a.txt": "A"})
    (src / "link").symlink_to(secret)
    (src / "dirlink").symlink_to(tmp_path)
    assert sorted(select_files(str(src))) == ["a.txt"]
    outside = tree(tmp_path / "outside", {"o.txt": "o"})
    (src / "linked").symlink_to(outside)
    assert select_files(str(src), ["**/*.txt"]).keys() == {"a.txt"}
    with pytest.raises(ArtifactError, match="matched no file"):
        select_files(str(src), ["linked/o.txt"])


def test_unpack_refuses_entries_leaving_the_directory(tmp_path: Path) -> None:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("../escaped.txt", "x")
    with pytest.raises(ArtifactError, match="leaves the directory"):
        unpack(str(z), str(tmp_path / "out"))
    assert not (tmp_path / "escaped.txt").exists()


def test_unpack_of_something_else_than_a_zip_fails_clearly(tmp_path: Path) -> None:
    z = tmp_path / "no.zip"
    z.write_text("not a zip")
    with pytest.raises(ArtifactError, match="not a zip file"):
        unpack(str(z), str(tmp_path / "out"))


def test_object_keys_are_per_pipeline_execution_artifact_and_attempt() -> None:
    assert object_key("p", "x1", "Built", "a1") == "p/x1/Built/a1.zip"
    assert object_key("p", "x1", "Built") != object_key("p", "x1", "Built")


# --- choosing a store ------------------------------------------------------------------------


def test_store_choice() -> None:
    local = ArtifactSettings(dir="/srv/a")
    s3 = ArtifactSettings(dir="/srv/a", s3_endpoint="http://s3:9000")
    declared = {"type": "S3", "location": "my-bucket"}
    a = store_for(decl(declared), local)
    assert (a.kind, a.bucket) == ("local", "my-bucket")
    b = store_for(decl(declared), s3)
    assert (b.kind, b.bucket) == ("S3", "my-bucket")
    c = store_for(decl(None), s3)
    assert (c.kind, c.bucket) == ("local", DEFAULT_BUCKET)
    assert store_of(ArtifactLocation("b", "k", "local"), s3).kind == "local"
    assert store_of(ArtifactLocation("b", "k", "S3"), s3).kind == "S3"
    with pytest.raises(ArtifactError, match="no S3 endpoint"):
        store_of(ArtifactLocation("b", "k", "S3"), local)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGELINE_ARTIFACT_DIR", "/data/art")
    monkeypatch.setenv("STAGELINE_S3_ENDPOINT", "http://s3:9000")
    s = ArtifactSettings.from_env()
    assert (s.root, s.s3_endpoint) == ("/data/art", "http://s3:9000")
    assert ArtifactSettings.from_env(dir="/flag").root == "/flag"  # a flag wins
    monkeypatch.delenv("STAGELINE_ARTIFACT_DIR")
    assert ArtifactSettings.from_env().root.endswith("stageline-artifacts")


# --- the stores ------------------------------------------------------------------------------


async def test_local_store_put_and_get(tmp_path: Path) -> None:
    store = LocalArtifactStore(str(tmp_path / "store"), "bkt")
    src = tree(tmp_path / "src", {"out/app.bin": "binary", "log.txt": "l"})
    loc = await store.put("pipe", "x1", "Built", str(src), files=["out"], unique="a1")
    assert loc == ArtifactLocation(bucket="bkt", key="pipe/x1/Built/a1.zip", store="local")
    assert (tmp_path / "store/bkt/pipe/x1/Built/a1.zip").is_file()
    into = tmp_path / "ws"
    assert await store.get(loc, str(into)) == 1
    assert (into / "out/app.bin").read_text() == "binary"
    assert not (into / "log.txt").exists()


async def test_local_store_missing_artifact(tmp_path: Path) -> None:
    store = LocalArtifactStore(str(tmp_path))
    with pytest.raises(ArtifactError, match="not in the store"):
        await store.get(ArtifactLocation(DEFAULT_BUCKET, "p/x/A/none.zip"), str(tmp_path / "o"))


async def test_s3_store_put_and_get_on_a_real_s3_server(
    tmp_path: Path, s3_settings: ArtifactSettings
) -> None:
    make_bucket(s3_settings, "pipeline-artifacts")
    store = store_for(decl({"type": "S3", "location": "pipeline-artifacts"}), s3_settings)
    assert store.kind == "S3"
    src = tree(tmp_path / "src", {"dist/a.txt": "hello s3"})
    loc = await store.put("pipe", "x1", "Built", str(src), unique="a1")
    assert loc == ArtifactLocation("pipeline-artifacts", "pipe/x1/Built/a1.zip", "S3")
    from app.artifacts.s3 import s3_client

    head = s3_client(s3_settings).head_object(Bucket="pipeline-artifacts", Key=loc.key)
    assert head["ContentLength"] > 0
    assert not (tmp_path / "pipeline-artifacts").exists()  # nothing went to the local dir
    into = tmp_path / "ws"
    assert await store_of(loc, s3_settings).get(loc, str(into)) == 1
    assert (into / "dist/a.txt").read_text() == "hello s3"


async def test_s3_store_without_the_bucket_fails_clearly(
    tmp_path: Path, s3_settings: ArtifactSettings
) -> None:
    store = store_for(decl({"type": "S3", "location": "no-such-bucket"}), s3_settings)
    src = tree(tmp_path / "src", {"a": "a"})
    with pytest.raises(ArtifactError, match=r"s3://no-such-bucket/"):
        await store.put("pipe", "x1", "Built", str(src))


def test_a_local_root_someone_else_could_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    src = tree(tmp_path / "src", {"a": "a"})
    store = LocalArtifactStore(str(root))
    with pytest.raises(ArtifactError, match="nobody else can write"):
        store._put_sync("k.zip", str(src), None)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "src")
    with pytest.raises(ArtifactError, match="not a link"):
        LocalArtifactStore(str(link))._put_sync("k.zip", str(src), None)
    fresh = tmp_path / "fresh" / "root"
    LocalArtifactStore(str(fresh))._put_sync("k.zip", str(src), None)
    assert fresh.stat().st_mode & 0o777 == 0o700
