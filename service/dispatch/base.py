"""Dispatchers hand a queued job to whatever runs it; the job store holds the truth about status."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor

from service.settings import Settings
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
    """A thread pool in the API process (the laptop default)."""

    mode = "embedded"

    def __init__(self, ctx: TaskContext, workers: int) -> None:
        from service.tasks.analysis import run_analysis

        self._run = run_analysis
        self._ctx = ctx
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="voxagent-job")
        self._futures: dict[str, Future] = {}

    def submit(self, job_id: str) -> None:
        fut = self._pool.submit(self._run, self._ctx, job_id)
        self._futures[job_id] = fut
        fut.add_done_callback(lambda f, j=job_id: self._done(j, f))

    def _done(self, job_id: str, fut: Future) -> None:
        self._futures.pop(job_id, None)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("job %s crashed outside the task: %s", job_id, fut.exception())

    def cancel(self, job_id: str) -> None:
        fut = self._futures.get(job_id)
        if fut is not None:
            fut.cancel()

    def ping(self) -> tuple[bool, str]:
        return True, "thread pool"

    def in_flight(self) -> set[str] | None:
        return set(self._futures.copy())  # a copy in one step: job threads remove finished ones meanwhile

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
