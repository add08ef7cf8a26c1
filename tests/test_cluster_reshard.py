"""A slot migration while executions run (issue 10): ``redis-cli --cluster reshard`` moves the
slot of a busy partition to another master under load. Nothing accepted is lost, nothing
runs twice, every execution succeeds and the log verifies.

During the migration a partition's keys are split between two masters for a while: reads
and writes of a key already moved are redirected (ASK), and a script whose keys are split
is refused with TRYAGAIN until the slot is whole again; the cluster client and the
repository's retries carry both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from app.api.server import ServeConfig
from app.store.keys import Keys
from tests.api_helpers import AKID, SECRET, run_stageline, wait_for
from tests.conftest import no_redis
from tests.redis_cluster import RedisClusterServer, cluster_binaries
from tests.test_api_e2e import PARTITIONS, _worker_config, commands, pipeline, stage
from tests.test_cluster_failover import StartLoad, retrying_client, wait_ended

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    if cluster_binaries() is None:
        no_redis("the reshard test needs the redis-server and redis-cli binaries")
    c = RedisClusterServer(tmp_path_factory.mktemp("cluster-reshard"))
    c.start(timeout=60)
    try:
        yield c
    finally:
        c.stop()


def masters(port: int) -> dict[str, tuple[int, list[int]]]:
    """node id -> (port, its slots), from CLUSTER NODES."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "nodes"], capture_output=True, text=True
    ).stdout
    nodes: dict[str, tuple[int, list[int]]] = {}
    for line in out.splitlines():
        parts = line.split()
        if "master" not in parts[2]:
            continue
        slots: list[int] = []
        for r in parts[8:]:
            if r.startswith("["):  # a slot being migrated / imported
                continue
            lo, _, hi = r.partition("-")
            slots += range(int(lo), int(hi or lo) + 1)
        nodes[parts[0]] = (int(parts[1].split("@")[0].rsplit(":", 1)[1]), slots)
    return nodes


def owner(port: int, slot: int) -> str:
    return next(n for n, (_, slots) in masters(port).items() if slot in slots)


def name_in(keys: Keys, partition: int, prefix: str, n: int) -> list[str]:
    names: list[str] = []
    i = 0
    while len(names) < n:
        name = f"{prefix}-{i}"
        i += 1
        if keys.partition(name) == partition:
            names.append(name)
    return names


def test_reshard_a_busy_partitions_slot(cluster: RedisClusterServer, tmp_path: Path) -> None:
    keys = Keys(partitions=PARTITIONS)
    port = cluster.ports[0]
    nodes = masters(port)

    # the partition whose slot is nearest the start of its master's range: reshard moves a
    # master's slots from its lowest, so that one moves with the fewest others
    def rank(p: int) -> int:
        slot = key_slot(keys.tag(p).encode())
        return sorted(nodes[owner(port, slot)][1]).index(slot)

    busy = min(range(PARTITIONS), key=rank)
    slot = key_slot(keys.tag(busy).encode())
    src = owner(port, slot)
    dst = next(n for n in nodes if n != src)

    runs = tmp_path / "runs.txt"
    record = f'echo "$CODEPIPELINE_PIPELINE_EXECUTION_ID $CODEPIPELINE_ACTION_NAME" >> {runs}'
    cfg = ServeConfig(
        port=0,
        redis_url=cluster.url,
        credentials={AKID: SECRET},
        partitions=PARTITIONS,
        worker=_worker_config("reshard"),
        log_level="error",
    )
    names = name_in(keys, busy, "rs", 4) + name_in(keys, (busy + 1) % PARTITIONS, "other", 2)
    with run_stageline(cfg) as srv:
        cp = retrying_client(srv.url)
        for name in names:
            cp.create_pipeline(
                pipeline=pipeline(
                    name,
                    stage("Build", commands("b", record, "sleep 0.2")),
                    stage("Deploy", commands("d", record)),
                    mode="PARALLEL",
                )
            )
        load = StartLoad(srv.url, names, pause_s=0.03)
        accepted, refused = load.accepted, load.refused
        try:
            wait_for(lambda: len(accepted) >= 15, timeout=60, what="load running")
            moved = 0
            # there and back: the busy slot to another master, then home again
            for frm, to in ((src, dst), (dst, src)):
                n = sorted(masters(port)[frm][1]).index(slot) + 1
                out = subprocess.run(
                    [
                        "redis-cli", "--cluster", "reshard", f"127.0.0.1:{port}",
                        "--cluster-from", frm, "--cluster-to", to,
                        "--cluster-slots", str(n), "--cluster-yes",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=180,
                )  # fmt: skip
                assert out.returncode == 0, out.stdout[-2000:] + out.stderr
                assert owner(port, slot) == to  # the busy partition now lives there
                moved += n
                during = len(accepted)
                wait_for(lambda d=during: len(accepted) >= d + 5, timeout=60, what="load")
            before = len(accepted)
            wait_for(lambda: len(accepted) >= before + 15, timeout=60, what="load after")
        finally:
            load.stop()
        ended = wait_ended(srv.url, accepted, timeout=120)
        finals = Counter(ended.values())
        assert set(finals) == {"Succeeded"}, finals
        # every action of every accepted execution ran exactly once
        lines = Counter(runs.read_text().split("\n")[:-1])
        expected = {f"{eid} {a}" for _, eid in accepted for a in ("b", "d")}
        assert set(lines) == expected
        assert max(lines.values()) == 1, [k for k, v in lines.items() if v > 1]
        for name, eid in accepted:
            acts = cp.list_action_executions(
                pipelineName=name, filter={"pipelineExecutionId": eid}
            )["actionExecutionDetails"]
            assert sorted(a["actionName"] for a in acts) == ["b", "d"], acts
    stageline = shutil.which("stageline", path=str(REPO / ".venv" / "bin")) or "stageline"
    verify = subprocess.run(
        [stageline, "audit", "verify", "--partitions", str(PARTITIONS)],
        env={**os.environ, "STAGELINE_REDIS_URL": cluster.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    print(f"accepted {len(accepted)}, refused {len(refused)}, slots moved {moved}")
