"""Cancel flags of the jobs running in this process.

The job store's ``cancelled`` status is the truth; a running job learns of it from its heartbeat
(the lease is no longer held: within ``heartbeat_s``, in every deployment), and in the embedded
deployment at once from :func:`request`, which the dispatcher calls when the API cancels. The
sandbox polls the flag at its safe points, so the job thread is freed for the next job instead of
computing a result nobody will read.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_flags: dict[str, threading.Event] = {}


@contextmanager
def flag(job_id: str) -> Iterator[threading.Event]:
    """The job's flag while it runs here (a request that came first is kept)."""
    with _lock:
        event = _flags.setdefault(job_id, threading.Event())
    try:
        yield event
    finally:
        with _lock:
            _flags.pop(job_id, None)


def request(job_id: str) -> bool:
    """Ask the job to stop; True if it is running in this process."""
    with _lock:
        event = _flags.get(job_id)
    if event is None:
        return False
    event.set()
    return True


def any_of(*events: threading.Event) -> Callable[[], bool]:
    return lambda: any(e.is_set() for e in events)
