"""A per-tenant cap on running jobs in the distributed deployment.

Celery's queue is one line, first in first out: a tenant that queues 64 jobs holds every agent
worker until they are done. A worker that takes a job of a tenant which already runs
``tenant_running_limit`` jobs *while another tenant's job waits* sends it to the back of the queue
instead of running it, so the waiting job comes first. Nobody else waiting means no deferral: a
lone tenant still gets every worker. The count is read from the job store at the task's start, so
two workers deciding at the same instant may let a tenant exceed the cap by one (a soft cap). A job
is deferred at most ``MAX_DEFERRALS`` times, so no job waits for ever behind a stream of others.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from api_schemas.jobs import JobStatus
from service.storage import JobRecord, RecordStore

log = logging.getLogger(__name__)
MAX_DEFERRALS = 20


def should_defer(records: RecordStore, job_id: str, cap: int, deferrals: int = 0) -> bool:
    """True when the job's tenant is at its cap of running jobs and another tenant's job is queued."""
    if cap <= 0 or deferrals >= MAX_DEFERRALS:
        return False
    job = records.get_record(JobRecord, job_id)
    if job is None or job.status != JobStatus.queued:
        return False  # the task's own checks decide what to do with it
    running = 0
    others_waiting = False
    for doc in records.list_active():
        if doc.get("tenant") == job.tenant:
            running += doc.get("status") == JobStatus.running.value
        elif doc.get("status") == JobStatus.queued.value:
            others_waiting = True
    return others_waiting and running >= cap


def defer(records: RecordStore, job_id: str, deferrals: int, send: Callable[[str, int], None], now: float) -> None:
    """Send the job to the back of the queue; its dispatch time is renewed so the reaper, which
    resends a queued job whose message it cannot see, leaves it alone meanwhile."""
    records.update_record(JobRecord, job_id, {"dispatched_ts": now},
                          only_if_status=(JobStatus.queued.value,))
    send(job_id, deferrals + 1)
    log.info("job deferred: its tenant is at its cap of running jobs and others wait (deferral %d)", deferrals + 1)
