"""Fixtures for the worker tests.

In-process workers run inside the test function's own task group (``helpers.running``):
task groups in async fixtures would be entered and exited in different tasks.

``procs`` starts ``stageline worker`` processes and makes sure none outlives the test, nor
any action process they left behind (found by the test's unique tmp path, killed by pid).
Their logs are ``<tmp_path>/worker-<name>.log``; ``STAGELINE_TEST_WORKER_DEBUG=1`` makes
them log at debug level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workers.helpers import WorkerProcess, kill_orphans

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[StartWorker]:
    started: list[WorkerProcess] = []

    def start(url: str, name: str, **kw: Any) -> WorkerProcess:
        w = WorkerProcess(url, name, tmp_path, **kw).start()
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.kill9()
        kill_orphans(tmp_path)
