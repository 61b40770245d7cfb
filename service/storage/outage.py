"""Which exceptions mean "the job store or the broker is unreachable right now", and a bounded retry.

An outage is not a bug: a request that meets one is answered 503 with Retry-After (service.errors),
and a worker that has finished a job keeps its result and retries the write for a while instead of
losing it (service.tasks.analysis). Everything else is a real error and propagates unchanged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@lru_cache(maxsize=1)
def store_errors() -> tuple[type[BaseException], ...]:
    """Redis refused, dropped, timed out, or is still loading its AOF (BusyLoadingError is one of them)."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@lru_cache(maxsize=1)
def outage_errors() -> tuple[type[BaseException], ...]:
    """Store errors and the broker's (kombu raises OperationalError when it cannot publish)."""
    from kombu.exceptions import OperationalError

    return (*store_errors(), OperationalError)


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, outage_errors())


def retry_through_outage(fn: Callable[[], T], budget_s: float, what: str, first_delay_s: float = 0.2,
                         max_delay_s: float = 2.0) -> T:
    """``fn()``, called again with backoff while it raises a store error, for at most ``budget_s``
    seconds (then the last error propagates). Only outages are retried, never other failures."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except store_errors() as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job store unavailable while %s (attempt %d): %s; retrying in %.1f s", what, attempt,
                        exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
