"""Leases of running jobs: which worker process runs a job, renewed by its heartbeat.

A job is claimed by a guarded update of its record (queued -> running, attempt + 1, a lease with an
expiry), so of two deliveries of one task only one runs it. While it runs, a `Heartbeat` thread
pushes the expiry forward every ``heartbeat_s``. A worker that vanishes (SIGKILL, OOM, a lost host)
stops renewing; once the lease has lapsed, a redelivered task takes the job over, or the reaper
(service.reaper) requeues it, up to ``max_attempts`` starts, then fails it with the reason. Every
write of the running worker (progress, result) is guarded by its lease, so a worker that comes back
after losing its lease cannot overwrite the job of its successor.

Time comes from an injected `Clock` (epoch seconds): tests move it by hand.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from api_schemas.jobs import JobStatus
from service.clock import now_iso
from service.storage import JobRecord, RecordStore
from service.storage.models import LeaseRecord
from service.storage.outage import store_errors

log = logging.getLogger(__name__)

# This process's incarnation: a restarted process may get the same pid (pid 1 in a container), never
# the same boot id, so an embedded job of a previous incarnation is recognised as orphaned at once.
BOOT_ID = uuid.uuid4().hex[:8]
EMBEDDED_NODE = "embedded"


class Clock(Protocol):
    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        import time

        return time.time()


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class Owner:
    """A worker process: its node name (Celery node, or "embedded"), host, pid and boot id."""

    node: str
    host: str
    pid: int
    boot: str

    @property
    def id(self) -> str:
        return f"{self.node}/{self.host}/{self.pid}/{self.boot}"

    @classmethod
    def current(cls, node: str = EMBEDDED_NODE) -> "Owner":
        return cls(node=node or socket.gethostname(), host=socket.gethostname(), pid=os.getpid(), boot=BOOT_ID)

    @classmethod
    def parse(cls, owner_id: str) -> "Owner | None":
        parts = owner_id.rsplit("/", 3)
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(node=parts[0], host=parts[1], pid=int(parts[2]), boot=parts[3])


@dataclass(frozen=True)
class LeasePolicy:
    lease_s: float
    heartbeat_s: float
    max_attempts: int

    @classmethod
    def from_settings(cls, settings) -> "LeasePolicy":
        return cls(lease_s=settings.lease_s, heartbeat_s=min(settings.heartbeat_s, settings.lease_s / 2),
                   max_attempts=settings.max_attempts)


class Action(str, Enum):
    start = "start"  # a queued job: claim it
    take_over = "take_over"  # a running job whose worker is gone: claim it for a new attempt
    fail = "fail"  # a running job whose worker is gone and whose attempts are spent
    skip = "skip"  # held by a live worker, or finished: nothing to do


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_gone(lease: dict[str, Any], me: Owner | None) -> bool:
    """An embedded job's process is known dead without waiting for the lease: it ran on this host in
    a process that no longer exists, or in an earlier incarnation of this one. Celery workers are
    judged by their lease only (another container may share a host name, never a pid space)."""
    if me is None:
        return False
    holder = Owner.parse(str(lease.get("owner", "")))
    if holder is None or holder.node != EMBEDDED_NODE or holder.host != me.host or holder.id == me.id:
        return False
    return holder.pid == me.pid or not _process_alive(holder.pid)


def _iso_ts(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def lapsed(doc: dict[str, Any], now: float, policy: LeasePolicy, me: Owner | None = None) -> str | None:
    """Why the worker of this running job is taken for lost, or None while its lease holds."""
    lease = doc.get("lease")
    if not lease:  # running without a lease: written before leases existed; nobody renews it
        started = _iso_ts(doc.get("started_at")) or float(doc.get("created_at_ts", 0.0))
        if now >= started + policy.lease_s:
            return f"no lease and no heartbeat since {doc.get('started_at')}"
        return None
    if holder_gone(lease, me):
        return f"process of {lease['owner']} is gone"
    if now >= float(lease.get("expires_ts", 0.0)):
        last = datetime.fromtimestamp(float(lease.get("heartbeat_ts", 0.0))).astimezone().isoformat()
        return f"no heartbeat from {lease.get('owner')} since {last} (lease {policy.lease_s:g} s)"
    return None


def decide(doc: dict[str, Any] | None, now: float, policy: LeasePolicy, me: Owner | None = None) -> Decision:
    """What a delivered task (or the reaper) may do with the job in this state."""
    if doc is None:
        return Decision(Action.skip, "missing")
    status = doc.get("status")
    attempt = int(doc.get("attempt", 0))
    if status == JobStatus.queued.value:
        return Decision(Action.start, "queued")
    if status != JobStatus.running.value:
        return Decision(Action.skip, f"already {status}")
    reason = lapsed(doc, now, policy, me)
    if reason is None:
        lease = doc.get("lease") or {}
        return Decision(Action.skip, f"running on {lease.get('owner')} (lease holds)")
    if attempt >= policy.max_attempts:
        return Decision(Action.fail, f"worker lost: {reason}; gave up after {attempt} attempt(s)")
    return Decision(Action.take_over, f"worker lost: {reason}")


def new_lease(owner: Owner, now: float, policy: LeasePolicy) -> LeaseRecord:
    return LeaseRecord(owner=owner.id, host=owner.host, pid=owner.pid, acquired_ts=now, heartbeat_ts=now,
                       expires_ts=now + policy.lease_s)


def held_by(owner: Owner):
    """A record-store guard: the job is running and ``owner`` holds its lease."""
    def guard(doc: dict[str, Any]) -> bool:
        return doc.get("status") == JobStatus.running.value and (doc.get("lease") or {}).get("owner") == owner.id

    return guard


def same_state(seen: dict[str, Any]):
    """A guard: the record is still as it was read (status, attempt, lease), so the decision taken
    on it still applies and no one else acted on it in between."""
    def guard(doc: dict[str, Any]) -> bool:
        return all(doc.get(k) == seen.get(k) for k in ("status", "attempt", "lease"))

    return guard


@dataclass(frozen=True)
class Claim:
    job: JobRecord | None  # the claimed job (running, leased to us), or None
    decision: Decision


def claim(records: RecordStore, job_id: str, owner: Owner, policy: LeasePolicy, clock: Clock) -> Claim:
    """Start a queued job or take over one whose worker is lost; fail it when its attempts are spent."""
    doc = records.get(JobRecord.KIND, job_id)
    now = clock.time()
    decision = decide(doc, now, policy, owner)
    if doc is None or decision.action == Action.skip:
        return Claim(None, decision)
    if decision.action == Action.fail:
        failed = records.update_record(JobRecord, job_id, failed_changes(decision.reason), only_if=same_state(doc))
        return Claim(None, decision if failed else Decision(Action.skip, "changed while deciding"))
    changes = {"status": JobStatus.running, "started_at": now_iso(), "attempt": int(doc.get("attempt", 0)) + 1,
               "lease": new_lease(owner, now, policy), "progress": None}
    job = records.update_record(JobRecord, job_id, changes, only_if=same_state(doc))
    if job is None:
        return Claim(None, Decision(Action.skip, "claimed by another worker first"))
    log.info("job claimed (attempt %d of %d; %s)", job.attempt, policy.max_attempts, decision.reason)
    return Claim(job, decision)


def failed_changes(reason: str) -> dict[str, Any]:
    """The lease stays on the failed job: it names the worker that was lost."""
    return {"status": JobStatus.failed, "finished_at": now_iso(), "error": reason}


def requeue_changes(now: float) -> dict[str, Any]:
    return {"status": JobStatus.queued, "lease": None, "progress": None, "dispatched_ts": now}


class Heartbeat:
    """Renews a running job's lease every ``heartbeat_s`` on a daemon thread, while the job runs.

    ``lost`` is set once the lease is no longer ours (the job was cancelled, or taken over after a
    stall longer than the lease); the job's own writes are guarded anyway, so this only lets the
    runner log it. A store outage is logged and retried at the next beat: the lease may lapse
    meanwhile, which is what a worker cut off from the store should look like to the others.
    """

    def __init__(self, records: RecordStore, job_id: str, owner: Owner, policy: LeasePolicy, clock: Clock) -> None:
        self.records, self.job_id, self.owner, self.policy, self.clock = records, job_id, owner, policy, clock
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        """One renewal; False once the lease is lost."""
        now = self.clock.time()
        try:
            job = self.records.get_record(JobRecord, self.job_id)
            if job is None or job.lease is None or job.lease.owner != self.owner.id:
                self.lost.set()
                return False
            lease = job.lease.model_copy(update={"heartbeat_ts": now, "expires_ts": now + self.policy.lease_s})
            renewed = self.records.update_record(JobRecord, self.job_id, {"lease": lease},
                                                 only_if=held_by(self.owner))
        except store_errors() as exc:
            log.warning("lease renewal failed (job store unavailable): %s", exc)
            return True
        if renewed is None:
            self.lost.set()
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.policy.heartbeat_s):
            if not self.beat():
                log.warning("lease lost while running (cancelled or taken over); its result will be discarded")
                return

    def __enter__(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._loop, name=f"lease-{self.job_id[-8:]}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
