"""A work queue that shares its workers fairly between tenants.

First in, first out lets one tenant that queues 64 jobs of a minute each hold every worker for an
hour. Here each tenant has its own line, and a free worker takes the next job of the tenant with the
fewest jobs running (ties: the tenant served longest ago, or never), so a tenant that submits one job waits
at most for one job of each busier tenant to finish. Nothing is reserved: a lone tenant still gets
every worker (work-conserving).
"""
from __future__ import annotations

import threading
from collections import deque


class FairQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lines: dict[str, deque[str]] = {}
        self._running: dict[str, int] = {}
        self._ids: dict[str, str] = {}  # job id -> tenant, queued or running
        self._served: dict[str, int] = {}  # tenant -> tick of its last start (0: never)
        self._tick = 0
        self._closed = False

    def put(self, tenant: str, job_id: str) -> None:
        with self._cond:
            if job_id in self._ids:  # handed over already (a reaper resend): never twice
                return
            self._ids[job_id] = tenant
            self._lines.setdefault(tenant, deque()).append(job_id)
            self._cond.notify()

    def get(self) -> tuple[str, str] | None:
        """The next (tenant, job id) to run, blocking; None once closed."""
        with self._cond:
            while not self._closed and not self._lines:
                self._cond.wait()
            if self._closed:
                return None
            tenant = min(self._lines, key=lambda t: (self._running.get(t, 0), self._served.get(t, 0)))
            line = self._lines[tenant]
            job_id = line.popleft()
            if not line:
                del self._lines[tenant]
            self._tick += 1
            self._served[tenant] = self._tick
            self._running[tenant] = self._running.get(tenant, 0) + 1
            return tenant, job_id

    def done(self, tenant: str, job_id: str) -> None:
        with self._cond:
            self._ids.pop(job_id, None)
            left = self._running.get(tenant, 1) - 1
            if left > 0:
                self._running[tenant] = left
            else:
                self._running.pop(tenant, None)

    def remove(self, job_id: str) -> bool:
        """Take a job out of its line before it starts; False if it is running (or unknown)."""
        with self._cond:
            tenant = self._ids.get(job_id)
            line = self._lines.get(tenant) if tenant is not None else None
            if line is None or job_id not in line:
                return False
            line.remove(job_id)
            if not line:
                del self._lines[tenant]  # type: ignore[arg-type]  # tenant is set when line is
            del self._ids[job_id]
            return True

    def ids(self) -> set[str]:
        with self._cond:
            return set(self._ids)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
