"""``stageline audit ...`` (filled in by the audit module)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_audit_parser(sub: Any, redis_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    a = sub.add_parser("audit", help="replay, verify and export the event log")
    redis_arg(a)
    a.add_subparsers(dest="audit_command", required=True)


async def run_audit(a: argparse.Namespace) -> int:
    return 0
