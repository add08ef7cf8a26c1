"""The container runtime: an action's shell session in a fresh container.

``docker run`` (or podman's docker-compatible CLI) with:

* the action's private run directory (workspace, HOME, TMPDIR, the session script) mounted
  at the same path, so the session runs exactly as in the process runtime;
* the same environment (passed as ``-e NAME``: values travel in the CLI's environment, never
  on a command line), the same user (``--user uid:gid``), no capabilities,
  ``no-new-privileges``, an init process, and ``--network none`` unless the operator allows a
  network (``--action-network``);
* ``bash`` when the image has it, else ``sh``;
* ``--interactive`` only for the session script's "go" line (then stdin is ``/dev/null``).

Stopping: the CLI runs in its own process group like any session; on timeout or
cancellation that group is killed and the container is removed with ``docker rm -f`` (the
CLI's death alone would leave it running).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

__all__ = ["IMAGE_KEY", "Container"]

log = logging.getLogger("stageline.runner")

IMAGE_KEY = "Image"  # the action's configuration key that overrides the worker's image
_LAUNCH = 'if command -v bash >/dev/null 2>&1; then exec bash "$0"; fi; exec sh "$0"'
_RM_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Container:
    image: str
    cli: str = "docker"
    network: str = "none"

    def command(
        self,
        *,
        name: str,
        script: str,
        env: Mapping[str, str],
        cwd: str,
        mount: str,
        uid: int,
        gid: int,
    ) -> tuple[list[str], dict[str, str]]:
        """``(argv, environment)`` of the ``docker run`` that runs ``script``."""
        argv = [
            self.cli, "run", "--rm", "--interactive", "--name", name, "--init",
            "--network", self.network,
            "--user", f"{uid}:{gid}",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--label", "stageline.action=1",
            "--volume", f"{mount}:{mount}",
            "--workdir", cwd,
        ]  # fmt: skip
        for key in env:
            argv += ["--env", key]  # the value comes from the CLI's own environment
        argv += [self.image, "/bin/sh", "-c", _LAUNCH, script]
        # the CLI needs to find its engine; nothing else of the worker's environment
        cli_env = {k: v for k, v in os.environ.items() if k.startswith(("DOCKER_", "CONTAINER_"))}
        return argv, {**cli_env, **env}

    async def remove(self, name: str) -> None:
        """``docker rm -f name``; quiet when it is already gone."""
        cli_env = {k: v for k, v in os.environ.items() if k.startswith(("DOCKER_", "CONTAINER_"))}
        cli_env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        with anyio.move_on_after(_RM_TIMEOUT_S), contextlib.suppress(OSError):
            await anyio.run_process(
                [self.cli, "rm", "-f", name],
                env=cli_env,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
