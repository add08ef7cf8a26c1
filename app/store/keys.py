"""Redis key layout.

Every key that one pipeline needs atomically carries the hash tag of the pipeline's
*partition* (``{sl.<n>}``): its event stream, its command-id table, its snapshot, and the
partition's dispatch streams. So one Lua script can append to the pipeline's stream and to
the partition's work streams at once, and in Redis Cluster all of it maps to one hash slot.
A fixed number of partitions (``zlib.crc32(name) % partitions``) spreads work over
workers; the number is recorded in Redis on first use and checked on every start.

Keys below are written ``P:`` for ``<ns>:{<ns>.<n>}:`` (the partition's hash tag).

| key | type | what |
|---|---|---|
| ``P:log:<pipeline>`` | stream | declaration events + head references, id ``<seq>-0`` |
| ``P:x:<pipeline>:<execution>`` | stream | one execution's events, id ``<seq>-0`` |
| ``P:xa:<pipeline>:<execution>`` | hash | action execution -> seq of its last event |
| ``P:seq:<pipeline>`` | string | the pipeline's event counter |
| ``P:xs:<pipeline>`` / ``as:<pipeline>`` | zset | executions / actions by start seq |
| ``P:tok:<pipeline>`` / ``apv:<pipeline>`` | hash | request / approval token -> execution |
| ``P:legacy:<pipeline>`` | stream | first-layout stream kept by ``stageline migrate`` |
| ``P:cmd:<pipeline>`` | hash | command id -> ``first:last:<streams>`` it appended |
| ``P:cmdt:<pipeline>`` | zset | command id -> ms it was first seen (expiry of ``cmd``) |
| ``P:snap:<pipeline>`` | hash | head snapshot ``{v, s}`` (derived; may be dropped) |
| ``P:names`` | set | pipeline names of the partition (for listing and audit) |
| ``P:events`` | stream | every event of the partition; read by the partition's owner |
| ``P:ckpt`` / ``owner`` / ``epoch`` | string | the owner's position, lease, fence |
| ``P:run`` | stream | action executions the engine runs itself; runners' group |
| ``P:leases`` | zset | running actions' leases, scored by expiry (ms) |
| ``P:dead`` | stream | dispatch entries parked as poison |
| ``P:tries`` | hash | events entry id -> times an owner started on it after a restart |
| ``<ns>:jobs:<owner/category/provider/version>`` | zset | open custom-action jobs |
| ``<ns>:job:<jobId>`` | hash | where a job lives (pipeline, execution, action execution) |
| ``<ns>:config`` | hash | ``partitions``, ``layout`` |
| ``<ns>:members`` | zset | orchestrator processes by heartbeat expiry |
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from app.domain.model import NAME_PATTERN


@dataclass(frozen=True)
class Keys:
    namespace: str = "sl"
    partitions: int = 16

    def partition(self, pipeline: str) -> int:
        return zlib.crc32(pipeline.encode()) % self.partitions

    def tag(self, partition: int) -> str:
        return f"{{{self.namespace}.{partition}}}"

    def _p(self, pipeline: str) -> str:
        return f"{self.namespace}:{self.tag(self.partition(pipeline))}"

    def log(self, pipeline: str) -> str:
        """The pipeline's own stream: declaration events and references to head events."""
        return f"{self._p(pipeline)}:log:{pipeline}"

    def execution_log(self, pipeline: str, execution_id: str) -> str:
        """One execution's stream: every event of that execution."""
        return f"{self._p(pipeline)}:x:{pipeline}:{execution_id}"

    def attempts(self, pipeline: str, execution_id: str) -> str:
        """Hash: action execution id -> sequence number of the last event about it."""
        return f"{self._p(pipeline)}:xa:{pipeline}:{execution_id}"

    def sequence(self, pipeline: str) -> str:
        """The pipeline's event counter (every stream of the pipeline numbers from it)."""
        return f"{self._p(pipeline)}:seq:{pipeline}"

    def executions(self, pipeline: str) -> str:
        """Zset: execution id scored by the sequence number of its start (derived index)."""
        return f"{self._p(pipeline)}:xs:{pipeline}"

    def actions(self, pipeline: str) -> str:
        """Zset: ``<execution>/<action execution>`` scored by the seq that scheduled it."""
        return f"{self._p(pipeline)}:as:{pipeline}"

    def request_tokens(self, pipeline: str) -> str:
        """Hash: StartPipelineExecution clientRequestToken -> execution id (derived index)."""
        return f"{self._p(pipeline)}:tok:{pipeline}"

    def approvals(self, pipeline: str) -> str:
        """Hash: approval token -> execution id (derived index)."""
        return f"{self._p(pipeline)}:apv:{pipeline}"

    def legacy_log(self, pipeline: str) -> str:
        """A pipeline's single stream of the first layout, kept by ``stageline migrate``."""
        return f"{self._p(pipeline)}:legacy:{pipeline}"

    def checkpoint(self, partition: int) -> str:
        """The partition owner's position in the partition's ``events`` stream."""
        return f"{self.namespace}:{self.tag(partition)}:ckpt"

    def owner(self, partition: int) -> str:
        """The partition's owner lease: ``<holder>|<epoch>`` (fencing token), with expiry."""
        return f"{self.namespace}:{self.tag(partition)}:owner"

    def epoch(self, partition: int) -> str:
        return f"{self.namespace}:{self.tag(partition)}:epoch"

    def members(self) -> str:
        return f"{self.namespace}:members"

    def commands(self, pipeline: str) -> str:
        return f"{self._p(pipeline)}:cmd:{pipeline}"

    def command_times(self, pipeline: str) -> str:
        """Zset: command id -> ms a housekeeping pass first saw it (idempotency window)."""
        return f"{self._p(pipeline)}:cmdt:{pipeline}"

    def snapshot(self, pipeline: str) -> str:
        return f"{self._p(pipeline)}:snap:{pipeline}"

    def names(self, partition: int) -> str:
        return f"{self.namespace}:{self.tag(partition)}:names"

    def events(self, partition: int) -> str:
        return f"{self.namespace}:{self.tag(partition)}:events"

    def run(self, partition: int) -> str:
        return f"{self.namespace}:{self.tag(partition)}:run"

    def leases(self, partition: int) -> str:
        return f"{self.namespace}:{self.tag(partition)}:leases"

    def due(self, partition: int) -> str:
        """Zset: deferred rules (``pipeline\x1fexecution\x1frule``) by when to evaluate
        them again (epoch ms); the partition's owner writes it from RuleExecutionDeferred."""
        return f"{self.namespace}:{self.tag(partition)}:due"

    def tries(self, partition: int) -> str:
        """Hash: events entry id -> owner (re)starts that began handling it (poison count)."""
        return f"{self.namespace}:{self.tag(partition)}:tries"

    def dead(self, partition: int) -> str:
        return f"{self.namespace}:{self.tag(partition)}:dead"

    def jobs(self, action_type: str) -> str:
        return f"{self.namespace}:jobs:{action_type}"

    def job(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def config(self) -> str:
        return f"{self.namespace}:config"

    def pipeline_keys(self, pipeline: str) -> list[str]:
        """Every key that holds data of this pipeline (all in one cluster slot)."""
        p = self.partition(pipeline)
        return [
            self.log(pipeline),
            self.sequence(pipeline),
            self.executions(pipeline),
            self.actions(pipeline),
            self.request_tokens(pipeline),
            self.approvals(pipeline),
            self.commands(pipeline),
            self.command_times(pipeline),
            self.snapshot(pipeline),
            self.checkpoint(p),
            self.owner(p),
            self.epoch(p),
            self.names(p),
            self.events(p),
            self.run(p),
            self.leases(p),
            self.dead(p),
        ]


__all__ = ["NAME_PATTERN", "Keys"]
