"""Backing off from an unreachable Redis: jittered, stoppable, and quiet.

Issue 12: a worker pointed at a dead Redis logged twice a second forever and ignored the
first SIGTERM/SIGINT (its start-up retry loop never looked at the stop request). Here:

- :class:`Backoff`: exponential delays with full jitter (``base_s`` doubling up to
  ``max_s``); :meth:`Backoff.wait` sleeps the next delay but returns at once, False, when
  the stop event is set; :meth:`Backoff.reset` after a success.
- The log: the first failure of an outage is one WARNING line; while it lasts, one line per
  ``log_every_s`` (with the number of failures since the last line); the end of an outage is
  one INFO line. Never a traceback, whatever the failure rate.
- :func:`retry_until` calls a coroutine function until it succeeds (True) or the stop
  event is set (False), backing off on ``errors``.
- :func:`sleep_or_stop`: sleep, unless the stop event comes first.

Self-contained (anyio and the standard library only), so any loop can use it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["REDIS_UNREACHABLE", "Backoff", "retry_until", "sleep_or_stop"]

log = logging.getLogger("stageline.worker")

# What "Redis is unreachable" looks like from redis-py (socket errors are wrapped, mostly).
REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)


async def sleep_or_stop(seconds: float, stop: anyio.Event | None) -> bool:
    """Sleep ``seconds``; False (at once) if ``stop`` is or becomes set, else True."""
    if stop is None:
        await anyio.sleep(seconds)
        return True
    if stop.is_set():
        return False
    with anyio.move_on_after(seconds):
        await stop.wait()
        return False
    return True


class Backoff:
    """Delays and log lines for one retrying loop (one instance per loop)."""

    def __init__(
        self,
        what: str,
        *,
        stop: anyio.Event | None = None,
        base_s: float = 0.1,
        max_s: float = 5.0,
        log_every_s: float = 30.0,
        logger: logging.Logger = log,
        clock: Callable[[], float] = anyio.current_time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError("need 0 < base_s <= max_s")
        self.what = what
        self.stop = stop
        self.base_s = base_s
        self.max_s = max_s
        self.log_every_s = log_every_s
        self.logger = logger
        self.clock = clock
        self.rng = rng
        self.failures = 0  # in the current outage
        self._unlogged = 0
        self._logged_at: float | None = None
        self._started_at = 0.0

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def next_delay(self) -> float:
        """The delay after ``self.failures`` failures: full jitter over base * 2^(n-1)."""
        growth = 2.0 ** min(max(0, self.failures - 1), 60)
        cap = min(self.max_s, self.base_s * growth)
        return float(self.base_s / 2 + self.rng() * (cap - self.base_s / 2))

    def record(self, err: BaseException) -> None:
        """Count one failure and log it if the rate allows."""
        now = self.clock()
        self.failures += 1
        if self.failures == 1:
            self._started_at = now
            self._logged_at = now
            self._unlogged = 0
            self.logger.warning("%s: Redis unavailable (%s); retrying", self.what, _one_line(err))
            return
        self._unlogged += 1
        if self._logged_at is None or now - self._logged_at >= self.log_every_s:
            self.logger.warning(
                "%s: Redis still unavailable after %.0f s (%s; %d failures since the last "
                "report); retrying",
                self.what,
                now - self._started_at,
                _one_line(err),
                self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0

    async def wait(self, err: BaseException) -> bool:
        """Record ``err``, then sleep the next delay. False when stopped: give up now."""
        self.record(err)
        if self.stopped:
            return False
        return await sleep_or_stop(self.next_delay(), self.stop)

    def reset(self) -> None:
        """A success: the outage (if any) is over."""
        if self.failures:
            self.logger.info(
                "%s: Redis reachable again after %.1f s (%d failures)",
                self.what,
                self.clock() - self._started_at,
                self.failures,
            )
        self.failures = 0
        self._unlogged = 0
        self._logged_at = None


async def retry_until(
    fn: Callable[[], Awaitable[object]],
    what: str,
    stop: anyio.Event | None,
    *,
    errors: tuple[type[BaseException], ...] = REDIS_UNREACHABLE,
    backoff: Backoff | None = None,
) -> bool:
    """Await ``fn()`` until it succeeds (True) or ``stop`` is set (False).

    Exceptions in ``errors`` back off and retry; anything else propagates. Setting ``stop``
    also cancels a call in progress (a connect that hangs does not delay the stop).
    """
    b = backoff or Backoff(what, stop=stop)
    done = False
    failure: BaseException | None = None
    async with anyio.create_task_group() as tg:
        if stop is not None:

            async def watch() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
        while not b.stopped:
            try:
                await fn()
            except errors as err:
                if not await b.wait(err):
                    break
                continue
            except Exception as err:  # raised below, unwrapped from the task group
                failure = err
                break
            b.reset()
            done = True
            break
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return done


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
