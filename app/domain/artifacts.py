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


def artifact_producers(decl: PipelineDeclaration, x: ExecutionState) -> dict[str, ArtifactLocation]:
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
    decl: PipelineDeclaration, x: ExecutionState, a: ActionDeclaration
) -> tuple[dict[str, ArtifactLocation], list[str]]:
    """The locations of ``a``'s declared input artifacts in execution ``x`` (in declaration
    order), and the names no succeeded action of ``x`` produced."""
    produced = artifact_producers(decl, x)
    found: dict[str, ArtifactLocation] = {}
    missing: list[str] = []
    for name in input_artifact_names(a):
        loc = produced.get(name)
        if loc is None:
            missing.append(name)
        else:
            found[name] = loc
    return found, missing
