"""Worker settings (see docs/operations.md for what each one does)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from workers.runners.commands_action import ActionSettings
from workers.runners.sources import SourceSettings


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    name: str = field(default_factory=default_name)
    concurrency: int = 8  # actions run at once by this process
    lease_ttl_s: float = 30.0  # a running action's lease; renewed every third of it
    block_ms: int | None = 1000  # XREADGROUP BLOCK; None = poll (embedded fakeredis)
    poll_interval_s: float = 0.005
    claim_idle_ms: int = 30_000  # take over entries pending this long at a dead consumer
    claim_every_s: float = 5.0
    max_deliveries: int = 5  # then the entry is parked in the dead-letter stream
    reap_every_s: float = 1.0
    snapshot_every_s: float = 2.0
    housekeep_every_s: float = 10.0  # dispatch-stream trimming, idempotency-record expiry
    idempotency_window_s: float = 86_400.0  # SDK invocation ids are remembered this long
    dead_letter_maxlen: int = 10_000  # entries kept per partition's dead-letter stream
    shutdown_grace_s: float = 30.0  # running actions may finish this long after a signal
    drain_s: float = 3.0  # then owners record what follows from the last results
    batch: int = 64
    output_tail_bytes: int = 4096
    roles: tuple[str, ...] = ("orchestrator", "runner")
    partition_lease_s: float = 10.0  # a partition's owner lease; another process takes over
    # a dead owner's partitions this long after its last renewal
    actions: ActionSettings = field(default_factory=ActionSettings)  # user, logs, limits
    # where source actions fetch from (STAGELINE_GIT_ROOT, STAGELINE_GIT_CONNECTIONS, S3)
    sources: SourceSettings = field(default_factory=SourceSettings.from_env)
