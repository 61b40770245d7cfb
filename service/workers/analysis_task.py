"""Celery wrapper of the analysis task (queue ``agent``).

``acks_late`` + ``reject_on_worker_lost`` (as Celery documents for tasks that must survive a worker
crash): the message is acknowledged only once the task returns, and a pool child that dies requeues
it. A whole worker killed leaves its message unacknowledged until the visibility timeout; the job's
lease (service.tasks.lease) lets the reaper requeue it long before that, and a late redelivery of a
finished or re-claimed job is recognised and acknowledged without running anything twice.
"""
from __future__ import annotations

import socket
import time
from functools import lru_cache

from celery import shared_task

from service.workers.celery_app import ANALYSIS_TASK

DEFER_PAUSE_S = 0.2


@lru_cache(maxsize=1)
def worker_context():
    """Stores and the Celery vision client, built once per worker process."""
    from service.settings import get_settings
    from service.storage import ArtifactStore, open_record_store
    from service.tasks.context import TaskContext
    from service.workers.celery_app import app
    from service.workers.celery_vision_client import CeleryVisionClient

    settings = get_settings()
    work_dir = settings.data_dir / "vision-exchange"

    records, artifacts = open_record_store(settings), ArtifactStore(settings.artifacts_dir)
    node = settings.worker_name or f"agent@{socket.gethostname()}"  # the owner of its jobs' leases
    if "vision" in settings.worker_queue_list:
        # this worker serves vision too: call its resident engine directly instead of itself over the broker
        return TaskContext.embedded(settings, records, artifacts, node=node)

    def client(job_id: str):
        return CeleryVisionClient(app, work_dir)  # per-call timeout: api_schemas.limits.CALL_TIMEOUT_S

    return TaskContext(settings, records, artifacts, client, node=node)


@shared_task(name=ANALYSIS_TASK, acks_late=True, reject_on_worker_lost=True)
def analysis(job_id: str, deferrals: int = 0) -> str:
    from service.tasks.analysis import run_analysis
    from service.workers import fairness

    ctx = worker_context()
    if fairness.should_defer(ctx.records, job_id, ctx.settings.tenant_running_limit, deferrals):
        time.sleep(DEFER_PAUSE_S)  # a bounce costs a broker round trip: never a busy loop
        fairness.defer(ctx.records, job_id, deferrals, _send_again, time.time())
        return "deferred"
    return run_analysis(ctx, job_id)


def _send_again(job_id: str, deferrals: int) -> None:
    from service.workers.celery_app import app

    app.send_task(ANALYSIS_TASK, args=[job_id], kwargs={"deferrals": deferrals}, task_id=job_id, queue="agent")
