"""A Docker engine for tests, and a local test image (no registry is reachable).

If ``docker info`` already answers, that engine is used. Otherwise, as root with Debian's
``dockerd`` installed, a private daemon is started (its own socket, data and exec roots; no
bridge, no iptables: the tests' containers use ``--network none``) and stopped afterwards.
The image is ``docker import`` of a root filesystem made of a static busybox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

TEST_IMAGE = "stageline-test-busybox:1"


def docker_cli() -> str | None:
    return shutil.which("docker")


def _info(env: dict[str, str]) -> bool:
    cli = docker_cli()
    if cli is None:
        return False
    try:
        done = subprocess.run(
            [cli, "info", "--format", "{{.ServerVersion}}"],
            env=env, capture_output=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class DockerEngine:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.host: str | None = None  # DOCKER_HOST to use, None = the CLI's default

    def start(self) -> str:
        """Make an engine available; '' when ready, else why not."""
        if docker_cli() is None:
            return "the docker CLI is not installed"
        if _info(dict(os.environ)):
            return ""
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            return "no Docker engine answers and dockerd is not installed"
        if os.geteuid() != 0:
            return "no Docker engine answers and starting dockerd needs root"
        self.workdir.mkdir(parents=True, exist_ok=True)
        sock = self.workdir / "docker.sock"
        self.host = f"unix://{sock}"
        log = open(self.workdir / "dockerd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                dockerd, "--host", self.host,
                "--data-root", str(self.workdir / "data"),
                "--exec-root", str(self.workdir / "exec"),
                "--pidfile", str(self.workdir / "docker.pid"),
                "--iptables=false", "--ip-masq=false", "--bridge=none",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        env = {**os.environ, "DOCKER_HOST": self.host}
        deadline = time.monotonic() + 60
        while not _info(env):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.workdir / "dockerd.log").read_text(errors="replace")[-1500:]
                self.stop()
                return f"dockerd did not start: {text}"
            time.sleep(0.3)
        return ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.host is not None:
            env["DOCKER_HOST"] = self.host
        return env

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cli = docker_cli()
        assert cli is not None
        return subprocess.run(
            [cli, *args], env=self.env(), capture_output=True, text=True, timeout=120, check=check
        )

    def build_test_image(self) -> str:
        """Import a busybox-static root filesystem as :data:`TEST_IMAGE`; '' or why not."""
        busybox = shutil.which("busybox")
        if busybox is None:
            return "busybox is not installed (Debian: busybox-static)"
        if self.docker("image", "inspect", TEST_IMAGE, check=False).returncode == 0:
            return ""
        tar_path = self.workdir / "rootfs.tar"
        self.workdir.mkdir(parents=True, exist_ok=True)
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        with tarfile.open(tar_path, "w") as tar:

            def add_dir(name: str, mode: int) -> None:
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tar.addfile(info)

            for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
                add_dir(d, mode)
            tar.add(busybox, "bin/busybox")
            for applet in applets:
                if applet != "busybox":
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(link)
            passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
            info = tarfile.TarInfo("etc/passwd")
            info.size = len(passwd)
            import io

            tar.addfile(info, io.BytesIO(passwd))
        done = self.docker("import", str(tar_path), TEST_IMAGE, check=False)
        if done.returncode != 0:
            return f"docker import failed: {done.stderr.strip()}"
        probe = self.docker("run", "--rm", "--network", "none", TEST_IMAGE, "true", check=False)
        if probe.returncode != 0:
            return f"the busybox image does not run (is busybox static?): {probe.stderr.strip()}"
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.host is not None:
            shutil.rmtree(self.workdir / "exec", ignore_errors=True)
