"""The Celery application of the distributed deployment (``VOXAGENT_BROKER_URL=redis://...``).

Queues: ``agent`` (analysis jobs: language model + sandbox) and ``vision`` (encode/generate on
GPU workers). Each vision worker also consumes ``vision.<its node name>``; an encode reply names
that queue so the later vision calls of the job reach the worker holding its encodings.
Only ids and file paths cross the broker, never arrays.
"""
from __future__ import annotations

import logging

from celery import Celery, signals
from kombu import Queue

from service.settings import Settings, get_settings

log = logging.getLogger(__name__)
ANALYSIS_TASK = "voxagent.analysis"


def make_celery(settings: Settings) -> Celery:
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    app = Celery("voxagent", broker=broker, backend=settings.result_backend or broker,
                 include=["service.workers.analysis_task", "service.workers.vision_tasks"])
    app.conf.update(
        task_queues=(Queue("agent"), Queue("vision")),
        task_default_queue="agent",
        task_routes={ANALYSIS_TASK: {"queue": "agent"}, "vision.*": {"queue": "vision"}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 30),
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=3600,
        task_track_started=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True, task_send_sent_event=True,
    )
    return app


app = make_celery(get_settings())


@signals.worker_process_init.connect
def _warm_models(**_: object) -> None:
    """Set the process's limits, then load models once per worker process, before the first task arrives."""
    settings = get_settings()
    queues = settings.worker_queue_list
    from service.workers.process_limits import apply_worker_limits

    apply_worker_limits(settings)
    from service.tasks import resources

    if "vision" in queues:
        try:
            resources.vision_engine(settings.models_dir)
        except Exception:  # noqa: BLE001 - a worker without a model still reports jobs as failed
            log.exception("could not load the vision engine")
    if "agent" in queues:
        try:
            resources.agent_runtime(settings.models_dir)
        except Exception:  # noqa: BLE001 - loaded on the first job instead
            log.warning("agent runtime not loaded at start-up", exc_info=True)
    if "agent" in queues:  # batches complete here: resume the webhooks a stopped process left pending
        from service.delivery import process_queue
        from service.workers.analysis_task import worker_context

        ctx = worker_context()
        process_queue(settings, ctx.records, ctx.node)
    from service.workers.presence import start_for_worker

    start_for_worker(settings)  # after loading: /readyz reads from it which models this process holds
