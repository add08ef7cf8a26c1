"""A Commands action's data: output variables exported from its shell, input artifacts
unpacked into its workspace, output artifacts packed from declared paths (no Redis)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.artifacts import ArtifactLocation, ArtifactSettings, LocalArtifactStore
from app.domain import events as ev
from app.domain.model import ActionDeclaration
from workers.runner import resolved_declaration
from workers.runners.commands import read_outputs, run_commands, session_script
from workers.runners.commands_action import (
    ERROR_ARTIFACT,
    ActionSettings,
    Outcome,
    run_commands_job,
)

pytestmark = pytest.mark.timeout(60)

CMD = {"category": "Compute", "owner": "AWS", "provider": "Commands", "version": "1"}


def action(**kw: Any) -> ActionDeclaration:
    doc: dict[str, Any] = {"name": "a", "actionTypeId": CMD, "commands": ["true"]}
    doc.update(kw)
    return msgspec.convert(doc, ActionDeclaration)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


async def job(
    decl: ActionDeclaration,
    store_dir: Path,
    inputs: dict[str, ArtifactLocation] | None = None,
) -> Outcome:
    settings = ActionSettings(artifacts=ArtifactSettings(dir=str(store_dir)))
    return await run_commands_job(
        pipeline="p",
        stage="S",
        execution_id="x1",
        action_execution_id="ae1",
        attempt=1,
        declaration=decl,
        tail_bytes=4096,
        settings=settings,
        input_artifacts=inputs,
        store=LocalArtifactStore(str(store_dir), "bkt"),
    )


def zips(store_dir: Path) -> list[Path]:
    return list(store_dir.rglob("*.zip"))


def zipped(store_dir: Path, loc: ArtifactLocation) -> dict[str, bytes]:
    with zipfile.ZipFile(store_dir / loc.bucket / loc.key) as z:
        return {n: z.read(n) for n in z.namelist()}


# --- output variables ------------------------------------------------------------------------


def test_session_script_exports_only_shell_names() -> None:
    script = session_script(["true"], "/s", "", "/o", ["GOOD", "bad-name", "x;rm -rf /"])
    assert "GOOD" in script
    assert "bad-name" not in script and "rm -rf" not in script
    assert "/o" not in session_script(["true"], "/s", "")  # nothing asked: nothing written


async def test_output_variables_are_read_from_the_shell_at_its_end() -> None:
    r = await run_commands(
        ["export VERSION=1.2.3", "cd /tmp", "PLAIN='not exported but set'", "EMPTY="],
        timeout_s=30,
        output_variables=["VERSION", "PLAIN", "EMPTY", "UNSET", "bad-name"],
    )
    assert r.succeeded
    assert r.output_variables == {
        "VERSION": "1.2.3",
        "PLAIN": "not exported but set",
        "EMPTY": "",
    }


async def test_no_output_variables_from_a_failed_session() -> None:
    r = await run_commands(["export V=1", "false"], timeout_s=30, output_variables=["V"])
    assert not r.succeeded and r.output_variables is None


def test_read_outputs_keeps_the_names_asked_for(tmp_path: Path) -> None:
    f = tmp_path / "o"
    f.write_bytes(b"A\x00one\x00B\x00two\x00A\x00again\x00")
    assert read_outputs(str(f), ["A"]) == {"A": "again"}
    link = tmp_path / "l"
    link.symlink_to(f)
    assert read_outputs(str(link), ["A"]) == {}  # never through a link


async def test_output_variables_through_the_action_job(store_dir: Path) -> None:
    decl = action(
        commands=["export VERSION=$(echo 4.5)", "MULTI=$(printf 'a\\nb')"],
        outputVariables=["VERSION", "MULTI"],
    )
    out = await job(decl, store_dir)
    assert out.succeeded, out.message
    assert out.output_variables == {"VERSION": "4.5", "MULTI": "a\nb"}
    assert out.output_artifacts is None


async def test_too_large_output_variables_fail(store_dir: Path) -> None:
    decl = action(
        commands=["BIG=$(head -c 130000 /dev/zero | tr '\\0' x)"], outputVariables=["BIG"]
    )
    out = await job(decl, store_dir)
    assert not out.succeeded and out.error_code == "OutputVariablesTooLarge"


# --- artifacts -------------------------------------------------------------------------------


async def test_output_artifacts_are_packed_from_declared_files(store_dir: Path) -> None:
    decl = action(
        commands=["mkdir -p dist/sub", "echo app > dist/app.txt", "echo s > dist/sub/s.txt",
                  "echo no > other.txt"],
        outputArtifacts=[{"name": "Built", "files": ["dist/**/*"]}, {"name": "All"}],
    )  # fmt: skip
    out = await job(decl, store_dir)
    assert out.succeeded, out.message
    assert out.output_artifacts is not None
    built = out.output_artifacts["Built"]
    assert built == ArtifactLocation("bkt", "p/x1/Built/ae1.zip", "local")
    assert zipped(store_dir, built) == {"dist/app.txt": b"app\n", "dist/sub/s.txt": b"s\n"}
    assert set(zipped(store_dir, out.output_artifacts["All"])) == {
        "dist/app.txt",
        "dist/sub/s.txt",
        "other.txt",
    }


async def test_a_missing_declared_output_path_fails_the_action(store_dir: Path) -> None:
    decl = action(
        commands=["echo x > here.txt"],
        outputArtifacts=[{"name": "Built", "files": ["here.txt", "build/missing.bin"]}],
    )
    out = await job(decl, store_dir)
    assert not out.succeeded
    assert out.error_code == ERROR_ARTIFACT
    assert "'Built'" in (out.message or "") and "build/missing.bin" in (out.message or "")
    assert not zips(store_dir)


async def test_no_output_artifact_from_a_failed_session(store_dir: Path) -> None:
    decl = action(commands=["echo x > f", "exit 3"], outputArtifacts=[{"name": "Built"}])
    out = await job(decl, store_dir)
    assert not out.succeeded and out.error_code == "CommandFailed"
    assert out.output_artifacts is None
    assert not zips(store_dir)


async def test_input_artifacts_first_at_the_root_others_in_their_directory(
    store_dir: Path, tmp_path: Path
) -> None:
    store = LocalArtifactStore(str(store_dir), "bkt")
    for name, files in {"Src": {"main.txt": "primary"}, "Extra": {"e.txt": "second"}}.items():
        d = tmp_path / name
        d.mkdir()
        for n, text in files.items():
            (d / n).write_text(text)
    src = await store.put("p", "x1", "Src", str(tmp_path / "Src"), unique="s")
    extra = await store.put("p", "x1", "Extra", str(tmp_path / "Extra"), unique="e")
    decl = action(
        commands=[
            'test "$(cat main.txt)" = primary',
            'test "$(cat Extra/e.txt)" = second',
            "echo changed > main.txt",  # the workspace is the action's to write in
            "ls -la > listing",
        ],
        outputVariables=["X"],
    )
    out = await job(decl, store_dir, {"Src": src, "Extra": extra})
    assert out.succeeded, out.message


async def test_a_missing_input_artifact_object_fails_before_running(
    store_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    decl = action(commands=[f"touch {marker}"])
    gone = ArtifactLocation("bkt", "p/x0/Src/none.zip", "local")
    out = await job(decl, store_dir, {"Src": gone})
    assert not out.succeeded and out.error_code == ERROR_ARTIFACT
    assert "input artifact 'Src'" in (out.message or "")
    assert not marker.exists()


# --- what the runner runs --------------------------------------------------------------------


def test_the_runner_runs_the_values_resolved_at_scheduling() -> None:
    decl = action(
        commands=["echo #{V.X}"],
        configuration={"K": "#{variables.A}", "Other": "plain"},
        environmentVariables=[
            {"name": "E", "value": "#{V.X}"},
            {"name": "S", "value": "arn:secret", "type": "SECRETS_MANAGER"},
        ],
    )
    e = ev.ActionExecutionScheduled(
        executionId="x",
        stageName="S",
        actionName="a",
        actionExecutionId="ae",
        resolvedCommands=["echo 1"],
        resolvedConfiguration={"K": "a", "Other": "plain"},
        resolvedEnvironment={"E": "1"},
    )
    r = resolved_declaration(decl, e)
    assert r.commands == ["echo 1"]
    assert r.configuration == {"K": "a", "Other": "plain"}
    assert [(v.name, v.value, v.type) for v in r.environmentVariables or []] == [
        ("E", "1", None),
        ("S", "arn:secret", "SECRETS_MANAGER"),
    ]
    plain = ev.ActionExecutionScheduled(
        executionId="x", stageName="S", actionName="a", actionExecutionId="ae"
    )
    assert resolved_declaration(decl, plain) is decl


def test_unpacked_files_belong_to_the_action_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    from app.artifacts import pack, unpack

    src = tmp_path / "s"
    src.mkdir()
    (src / "d").mkdir()
    (src / "d" / "f").write_text("x")
    z = tmp_path / "z.zip"
    pack(str(src), str(z))
    into = tmp_path / "into"
    unpack(str(z), str(into), owner=(65534, 65534))
    assert (into / "d" / "f").stat().st_uid == 65534
    assert (into / "d").stat().st_uid == 65534
