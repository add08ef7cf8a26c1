"""A private Redis Cluster for tests: 3 masters (``replicas`` each, default none) on free
ports, own directory.

Each node is ``redis-server --cluster-enabled yes`` on 127.0.0.1:<port> (below 55000) with
its cluster bus on <port>+10000 (checked free too); ``redis-cli --cluster create`` assigns
the slots, and ``start`` returns once every node reports ``cluster_state:ok``.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.redis_server import port_open

BUS_OFFSET = 10_000
PORT_RANGE = (20_000, 55_000)


def cluster_binaries() -> tuple[str, str] | None:
    """(redis-server, redis-cli), or None when either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int, rng: random.Random | None = None) -> list[int]:
    """``n`` ports below 55000 whose bus ports (+10000) are free as well."""
    rng = rng or random.Random()
    ports: list[int] = []
    for _ in range(2000):
        p = rng.randrange(*PORT_RANGE)
        taken = {q for port in ports for q in (port, port + BUS_OFFSET)}
        if {p, p + BUS_OFFSET} & taken:
            continue
        if _bindable(p) and _bindable(p + BUS_OFFSET):
            ports.append(p)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free port pairs (port, port+{BUS_OFFSET}) below 55000")


def _cluster_state(cli: str, port: int) -> str:
    """The node's ``cluster_state`` ('' when nothing, or not a cluster node, answers)."""
    try:
        out = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=2,
        ).stdout
    except subprocess.TimeoutExpired:
        return ""
    for line in out.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def _info(cli: str, port: int, section: str) -> dict[str, str]:
    try:
        out = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), "info", section],
            capture_output=True,
            text=True,
            timeout=2,
        ).stdout
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def _role(cli: str, port: int) -> str:
    return _info(cli, port, "replication").get("role", "").strip()


def _in_sync_replicas(cli: str, port: int) -> int:
    info = _info(cli, port, "replication")
    return sum(1 for k, v in info.items() if k.startswith("slave") and "state=online" in v)


class RedisClusterServer:
    """``masters`` cluster-enabled redis-servers in ``workdir``, slots spread over them."""

    def __init__(
        self, workdir: Path, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000
    ) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def kill(self, port: int) -> None:
        """kill -9 the node on ``port`` (its replica takes over after the node timeout)."""
        proc = self.procs[self.ports.index(port)]
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @property
    def url(self) -> str:
        """A startup node's URL (``redis.asyncio.cluster.RedisCluster.from_url`` finds the rest)."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self.ports]

    def _log(self, port: int) -> str:
        path = self.workdir / f"node-{port}" / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def start(self, timeout: float = 30.0) -> None:
        binaries = cluster_binaries()
        if binaries is None:
            raise RuntimeError("redis-server and redis-cli must be on PATH")
        server, cli = binaries
        for attempt in range(3):  # a port found free may be taken before a node binds it
            self.ports = free_cluster_ports(self.masters * (1 + self.replicas))
            try:
                self._start(server, cli, timeout)
                return
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise

    def _start(self, server: str, cli: str, timeout: float) -> None:
        for port in self.ports:
            d = self.workdir / f"node-{port}"
            d.mkdir(parents=True, exist_ok=True)
            args = [
                server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(d),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(d / "redis.log"),
            ]
            self.procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + timeout
        for port, proc in zip(self.ports, self.procs, strict=True):
            # answering CLUSTER INFO (state 'fail' until slots are assigned): it is our node,
            # not another process that took the port (ours then exits)
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node did not start on {port}: {self._log(port)}")
                if port_open("127.0.0.1", port) and _cluster_state(cli, port):
                    break
                time.sleep(0.02)
        try:
            create = subprocess.run(
                [
                    cli, "--cluster", "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas", str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"redis-cli --cluster create hung: {e.stdout!r}") from None
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
        pending = list(self.ports)
        while pending:
            pending = [p for p in pending if _cluster_state(cli, p) != "ok"]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster_state is not ok on {pending} after {timeout} s")
            time.sleep(0.05)
        while self.replicas and not all(
            _in_sync_replicas(cli, p) >= self.replicas
            for p in self.ports
            if _role(cli, p) == "master"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not in sync after {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(10)
        self.procs = []
