"""Progress reporting for long audit runs: a tqdm bar on stderr (count, rate, ETA).

Library functions take ``progress: Progress | None`` and call ``progress.update(n)`` with
the number of events just processed; the CLI passes a :class:`Bar`. Scripts can pass any
object with ``update(int)`` (for instance to sample memory, see ``bench/replay_memory.py``).
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    def update(self, n: int) -> object: ...


class Bar:
    """A tqdm bar of ``total`` events; ``enabled=None`` shows it only on a terminal."""

    def __init__(self, total: int | None, desc: str, *, enabled: bool | None = None) -> None:
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="ev",
            unit_scale=True,
            file=sys.stderr,
            disable=None if enabled is None else not enabled,
            dynamic_ncols=True,
            mininterval=0.2,
        )

    def update(self, n: int) -> object:
        return self._bar.update(n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
