"""Redis key layout.

Every key that one pipeline needs atomically carries the hash tag of the pipeline's
*partition* (``{sl.<n>}``): its event stream, its command-id table, its snapshot, and the
partition's dispatch streams. So one Lua script can append to the pipeline's stream and to
the partition's work streams at once, and in Redis Cluster all of it maps to one hash slot.
A fixed number of partitions (``zlib.crc32(name) % partitions``) spreads work over
workers; the number is recorded in Redis on first use and checked on every start.

| key | type | what |
|---|---|---|
| ``<ns>:{<ns>.<n>}:log:<pipeline>`` | stream | events, entry id ``<version>-0``; never trimmed |
| ``<ns>:{<ns>.<n>}:cmd:<pipeline>`` | hash | command id -> ``first:last`` version it appended |
| ``<ns>:{<ns>.<n>}:snap:<pipeline>`` | string | projection snapshot (derived; may be dropped) |
| ``<ns>:{<ns>.<n>}:names`` | set | pipeline names of the partition (for listing and audit) |
| ``<ns>:{<ns>.<n>}:events`` | stream | every event of the partition; orchestrators' group |
| ``<ns>:{<ns>.<n>}:run`` | stream | action executions the engine runs itself; runners' group |
| ``<ns>:{<ns>.<n>}:leases`` | zset | running actions' leases, scored by expiry (ms) |
| ``<ns>:{<ns>.<n>}:dead`` | stream | dispatch entries parked after too many deliveries |
| ``<ns>:jobs:<owner/category/provider/version>`` | zset | open custom-action jobs |
| ``<ns>:job:<jobId>`` | hash | where a job lives (pipeline, execution, action execution) |
| ``<ns>:config`` | hash | ``partitions`` |
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
        return f"{self._p(pipeline)}:log:{pipeline}"

    def commands(self, pipeline: str) -> str:
        return f"{self._p(pipeline)}:cmd:{pipeline}"

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
            self.commands(pipeline),
            self.snapshot(pipeline),
            self.names(p),
            self.events(p),
            self.run(p),
            self.leases(p),
            self.dead(p),
        ]


__all__ = ["NAME_PATTERN", "Keys"]
