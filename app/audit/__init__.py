"""Audit: replay the event log, rebuild and verify projections, check the hash chain.

For auditors who script (see ``docs/audit.md``)::

    from app.audit import audit_log, replay_pipeline, verify, export_archive, parse_as_of

    store = EventStore(redis, Keys(partitions=16))
    async for row in audit_log(store, "my-pipeline"):
        print(row.version, row.actor, row.type, row.attempt_label(), row.status, row.mode)
    r = await replay_pipeline(store, "my-pipeline", as_of=parse_as_of("2024-05-01T12:00Z"))
    report = await verify(store)
    assert report.ok, report.all_problems()[0]
"""

from app.audit.archive import ArchiveStats, check_archive, export_archive, import_archive
from app.audit.common import AsOf, AuditError, parse_as_of, parse_time
from app.audit.log import LogRow, audit_log, format_jsonl, format_table, table_header
from app.audit.replay import Replayed, projection, replay, replay_pipeline
from app.audit.verify import PipelineReport, Problem, VerifyReport, verify, verify_pipeline

__all__ = [
    "ArchiveStats",
    "AsOf",
    "AuditError",
    "LogRow",
    "PipelineReport",
    "Problem",
    "Replayed",
    "VerifyReport",
    "audit_log",
    "check_archive",
    "export_archive",
    "format_jsonl",
    "format_table",
    "import_archive",
    "parse_as_of",
    "parse_time",
    "projection",
    "replay",
    "replay_pipeline",
    "table_header",
    "verify",
    "verify_pipeline",
]
