"""Artifacts in the domain: where an artifact is stored, and which one an action gets. Pure.

An action's output artifacts are zip files in an artifact store (:mod:`app.artifacts`); the
store hands back an :class:`ArtifactLocation` that the runner records in
``ActionExecutionSucceeded.outputArtifacts`` (name -> location). An input artifact is found
by name: the latest *succeeded* attempt, in the execution, of an action that declares that
output artifact (:func:`artifact_producers`, :func:`input_artifacts`). A retried action
re-produces its artifacts (its new attempt is the latest), and a retry of a later stage
reuses the earlier stage's artifacts (nothing newer replaced them).

The lookup takes the execution to look in as an argument, so another caller (a rollback)
can point it at another execution.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import msgspec

from app.domain.model import ActionDeclaration, PipelineDeclaration

if TYPE_CHECKING:  # state.py folds locations into its ActionExec: no import cycle at run time
    from app.domain.state import ExecutionState

StoreKind = Literal["local", "S3"]


class ArtifactLocation(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Where one artifact (a zip file) is: a bucket and an object key, like AWS's
    ``S3ArtifactLocation``. ``store`` says which kind of store holds it: ``S3`` (an
    S3-compatible service) or ``local`` (a directory of the deployment, where the bucket
    is a sub-directory)."""

    bucket: str
    key: str
    store: StoreKind = "local"

    def s3_location(self) -> dict[str, str]:
        """The service model's ``S3Location`` (``ArtifactDetail.s3location``)."""
        return {"bucket": self.bucket, "key": self.key}


def output_artifact_names(a: ActionDeclaration) -> list[str]:
    return [str(o["name"]) for o in a.outputArtifacts or [] if isinstance(o, dict) and "name" in o]


def input_artifact_names(a: ActionDeclaration) -> list[str]:
    return [str(i["name"]) for i in a.inputArtifacts or [] if isinstance(i, dict) and "name" in i]


def output_artifact_files(a: ActionDeclaration) -> dict[str, list[str]]:
    """Each declared output artifact's ``files`` (paths or glob patterns relative to the
    action's workspace); an artifact without ``files`` packs the whole workspace."""
    out: dict[str, list[str]] = {}
    for o in a.outputArtifacts or []:
        if not isinstance(o, dict) or "name" not in o:
            continue
        files = o.get("files")
        out[str(o["name"])] = [str(f) for f in files] if isinstance(files, list) else []
    return out


def artifact_producers(x: ExecutionState) -> dict[str, ArtifactLocation]:
    """Every artifact produced in execution ``x``: name -> location of its latest succeeded
    producer (latest by the sequence number of its result)."""
    found: dict[str, tuple[int, ArtifactLocation]] = {}
    for a in x.actions.values():
        if a.status != "Succeeded" or not a.outputArtifacts:
            continue
        for name, loc in a.outputArtifacts.items():
            prev = found.get(name)
            if prev is None or a.seq > prev[0]:
                found[name] = (a.seq, loc)
    return {name: v[1] for name, v in found.items()}


def input_artifacts(
    x: ExecutionState, a: ActionDeclaration
) -> tuple[dict[str, ArtifactLocation], list[str]]:
    """The locations of ``a``'s declared input artifacts in execution ``x`` (in declaration
    order), and the names no succeeded action of ``x`` produced."""
    produced = artifact_producers(x)
    found: dict[str, ArtifactLocation] = {}
    missing: list[str] = []
    for name in input_artifact_names(a):
        loc = produced.get(name)
        if loc is None:
            missing.append(name)
        else:
            found[name] = loc
    return found, missing


# the service model's ArtifactName and FilePathList / FilePath
ARTIFACT_NAME = re.compile(r"[a-zA-Z0-9_\-]+\Z")
ARTIFACT_NAME_MAX = 100
FILES_MAX = 10
FILE_PATH_MAX = 128


def _name_problem(where: str, doc: object) -> str | None:
    name = doc.get("name") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not 1 <= len(name) <= ARTIFACT_NAME_MAX:
        return f"{where}: an artifact needs a name of 1 to {ARTIFACT_NAME_MAX} characters"
    if not ARTIFACT_NAME.match(name):
        return f"{where}: artifact name {name!r} must match [a-zA-Z0-9_\\-]+"
    return None


def artifact_problems(decl: PipelineDeclaration) -> list[str]:
    """The declaration's artifacts (kept as plain JSON in the model) against the service
    model and AWS's rules: valid names and ``files``, output artifact names unique within the
    pipeline, and every input artifact the output of an action that runs before (an earlier
    stage, or a lower runOrder of the same stage)."""
    problems: list[str] = []
    produced: dict[str, tuple[int, int]] = {}  # name -> (stage index, runOrder)
    for si, stage in enumerate(decl.stages):
        for a in stage.actions:
            where = f"action '{a.name}' in stage '{stage.name}'"
            for o in a.outputArtifacts or []:
                problem = _name_problem(where, o)
                if problem is not None:
                    problems.append(problem)
                    continue
                name = str(o["name"])
                if name in produced:
                    problems.append(
                        f"{where}: output artifact name '{name}' is not unique in the pipeline"
                    )
                produced.setdefault(name, (si, a.run_order))
                files = o.get("files")
                if files is not None and (
                    not isinstance(files, list)
                    or not 1 <= len(files) <= FILES_MAX
                    or not all(isinstance(f, str) and 1 <= len(f) <= FILE_PATH_MAX for f in files)
                ):
                    problems.append(
                        f"{where}: output artifact '{name}' files must be 1 to {FILES_MAX} "
                        f"paths of 1 to {FILE_PATH_MAX} characters"
                    )
    for si, stage in enumerate(decl.stages):
        for a in stage.actions:
            where = f"action '{a.name}' in stage '{stage.name}'"
            for i in a.inputArtifacts or []:
                problem = _name_problem(where, i)
                if problem is not None:
                    problems.append(problem)
                    continue
                name = str(i["name"])
                at = produced.get(name)
                if at is None or at >= (si, a.run_order):
                    problems.append(
                        f"{where}: input artifact '{name}' is not the output artifact of an "
                        "action that runs before it"
                    )
    return problems
