"""Celery wrapper of the analysis task (queue ``agent``).

``acks_late`` + ``reject_on_worker_lost`` (as Celery documents for tasks that must survive a worker
crash): the message is acknowledged only once the task returns, and a pool child that dies requeues
it. A whole worker killed leaves its message unacknowledged until the visibility timeout; the job's
lease (service.tasks.lease) lets the reaper requeue it long before that, and a late redelivery of a
finished or re-claimed job is recognised and acknowledged without running anything twice.
"""
from __future__ import annotations

import socket
from functools import lru_cache

from celery import shared_task

from service.workers.celery_app import ANALYSIS_TASK


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
def analysis(job_id: str) -> str:
    from service.tasks.analysis import run_analysis

    return run_analysis(worker_context(), job_id)
