"""Audit: replay the event log, rebuild and verify projections, check the hash chain."""
