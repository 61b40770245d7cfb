"""Dispatchers hand a queued job to whatever runs it; the job store holds the truth about status."""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

from service.dispatch.fair import FairQueue
from service.settings import Settings
from service.storage import JobRecord
from service.tasks import cancel
from service.tasks.context import TaskContext

log = logging.getLogger(__name__)


class Dispatcher(ABC):
    mode: str

    @abstractmethod
    def submit(self, job_id: str) -> None: ...

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Best effort: the job store already says 'cancelled', so a task that starts later skips it."""

    @abstractmethod
    def ping(self) -> tuple[bool, str]: ...

    def in_flight(self) -> set[str] | None:
        """Ids of jobs whose task is handed over and not finished (waiting in the queue, or running
        here): the reaper sends a task again for a queued job that is not among them. None when
        that cannot be known, and then the reaper sends nothing for queued jobs."""
        return None

    def consumers(self) -> list | None:
        """Worker processes consuming the queues (`service.workers.presence.Consumer`); None when
        the jobs run in this process."""
        return None

    def shutdown(self) -> None:  # noqa: B027 - optional hook, a no-op unless the dispatcher holds workers
        pass


class EmbeddedDispatcher(Dispatcher):
    """Job threads in the API process (the laptop default), shared fairly between tenants
    (:class:`service.dispatch.fair.FairQueue`); cancelling a running job stops its sandbox."""

    mode = "embedded"

    def __init__(self, ctx: TaskContext, workers: int) -> None:
        from service.tasks.analysis import run_analysis

        self._run = run_analysis
        self._ctx = ctx
        self._queue = FairQueue()
        self._threads = [threading.Thread(target=self._work, name=f"voxagent-job-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, job_id: str) -> None:
        job = self._ctx.records.get_record(JobRecord, job_id)
        self._queue.put(job.tenant if job is not None else "", job_id)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            tenant, job_id = item
            try:
                self._run(self._ctx, job_id)
            except Exception as exc:  # noqa: BLE001 - the task fails its job itself; this is a defect
                log.error("job %s crashed outside the task: %s", job_id, exc, exc_info=True)
            finally:
                self._queue.done(tenant, job_id)

    def cancel(self, job_id: str) -> None:
        if not self._queue.remove(job_id):
            cancel.request(job_id)  # running: its sandbox stops at the next safe point

    def ping(self) -> tuple[bool, str]:
        return True, "job threads"

    def in_flight(self) -> set[str] | None:
        return self._queue.ids()

    def shutdown(self) -> None:
        self._queue.close()  # running jobs finish on their daemon threads; queued ones stay queued (the reaper)


class CeleryDispatcher(Dispatcher):
    mode = "distributed"

    def __init__(self, settings: Settings) -> None:
        from service.workers.celery_app import app

        self._app = app
        self._settings = settings

    def submit(self, job_id: str) -> None:
        from service.workers.celery_app import ANALYSIS_TASK

        self._app.send_task(ANALYSIS_TASK, args=[job_id], task_id=job_id, queue="agent")

    def cancel(self, job_id: str) -> None:
        self._app.control.revoke(job_id)

    def ping(self) -> tuple[bool, str]:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True, "broker reachable"
        except Exception as exc:  # noqa: BLE001 - any broker error means unreachable
            return False, f"broker unreachable: {exc}"

    def in_flight(self) -> set[str] | None:
        from service.workers.queue_probe import waiting_task_ids

        return waiting_task_ids(self._settings.broker_url or "", "agent")

    def consumers(self) -> list | None:
        from service.workers.presence import consumers

        return consumers(self._settings.broker_url or "")


def make_dispatcher(settings: Settings, ctx: TaskContext) -> Dispatcher:
    if settings.distributed:
        return CeleryDispatcher(settings)
    return EmbeddedDispatcher(ctx, settings.workers)
