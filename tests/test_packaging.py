"""Guards for the deployment files: the image's pinned requirements cover the package's
runtime dependencies (minus the embedded Redis), the license is an SPDX string, and every
variable compose.yaml reads is documented in .env.example."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_ONLY = {"fakeredis"}  # `stageline serve` without a Redis URL; not in the image


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_requirements_pin_every_runtime_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned: dict[str, str] = {}
    for line in (REPO / "requirements" / "image.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            pinned[_norm(name)] = version
    for dep in project["dependencies"]:
        req = Requirement(dep)
        if _norm(req.name) in EMBEDDED_ONLY:
            assert _norm(req.name) not in pinned
            continue
        assert _norm(req.name) in pinned, f"{req.name} missing from requirements/image.txt"
        assert req.specifier.contains(pinned[_norm(req.name)]), (req, pinned[_norm(req.name)])
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    [setuptools] = [Requirement(r) for r in build]
    assert str(setuptools.specifier) == f"=={pinned['setuptools']}"  # the same pin


def test_license_is_an_spdx_string() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_compose_variables_are_in_env_example() -> None:
    # ${NAME} is compose's; $${NAME} is the shell's inside a container (escaped for compose)
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", (REPO / "compose.yaml").read_text()))
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    assert used and used <= documented, used - documented
