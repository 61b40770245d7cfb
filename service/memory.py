"""Memory budgets of the service: what one upload may inflate to, and what all uploads being
validated at once may hold together.

Why budgets and not just the reader's limits: ``voxel_ops`` bounds a single read (2 GB of voxels),
which is right for a library and far too much for a service that validates 40 uploads at once. The
service therefore asks the header first (:func:`voxel_ops.probe_volume`, no voxel data decompressed)
and refuses an upload whose read would need more than ``max_upload_decoded_bytes`` with a 413, then
reserves that many bytes from one shared :class:`ByteBudget` (``upload_memory_bytes``) for as long
as the read runs. A request that cannot get its bytes within ``upload_memory_wait_s`` is told to
come back later (503 + Retry-After) instead of pushing the process into swap or the OOM killer.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager


class BudgetExhausted(Exception):
    """The bytes could not be reserved in time (the budget is held by other work)."""


class ByteBudget:
    """A semaphore counted in bytes: ``reserve(n)`` waits until ``n`` bytes are free, then holds them.

    A single request larger than the whole budget is an error at once (it could never run). Waiting
    is a poll of a lock-protected counter, so the same budget serves event-loop coroutines
    (:meth:`areserve`) and worker threads (:meth:`reserve`) alike.
    """

    def __init__(self, capacity: int, poll_s: float = 0.02) -> None:
        if capacity <= 0:
            raise ValueError("a byte budget needs a positive capacity")
        self.capacity = int(capacity)
        self._poll_s = poll_s
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_acquire(self, n: int) -> bool:
        if n > self.capacity:
            raise BudgetExhausted(f"{n} bytes is more than the whole budget of {self.capacity}")
        with self._lock:
            if self._used + n > self.capacity:
                return False
            self._used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._used = max(0, self._used - n)

    @contextmanager
    def reserve(self, n: int, timeout_s: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire(n):
            if time.monotonic() >= deadline:
                raise BudgetExhausted(f"{n} bytes not free within {timeout_s:g} s")
            time.sleep(self._poll_s)
        try:
            yield
        finally:
            self.release(n)

    @asynccontextmanager
    async def areserve(self, n: int, timeout_s: float) -> AsyncIterator[None]:
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire(n):
            if time.monotonic() >= deadline:
                raise BudgetExhausted(f"{n} bytes not free within {timeout_s:g} s")
            await asyncio.sleep(self._poll_s)
        try:
            yield
        finally:
            self.release(n)


def mb(n: int) -> str:
    """Bytes as the MB figure messages show (decimal megabytes, like the reader's messages)."""
    return f"{n / 1e6:,.0f} MB"
