"""The reaper: no job stays queued or running for good because its worker or its message vanished.

Runs in the API process (embedded and distributed alike), once at start-up and then every
``reaper_interval_s``. Each sweep reads the active jobs and:

- a running job whose lease lapsed (no heartbeat for ``lease_s``; for an embedded job, at once
  when its process is known dead) is requeued and its task sent again, or failed with the reason
  once it has had ``max_attempts`` starts;
- a queued job whose task message is nowhere (not waiting in the queue, not running in this
  process) for ``lease_s`` is sent again; at start-up of the embedded service at once, since no
  thread of a new process can hold it;
- a batch left running with all its jobs finished (its last job's bookkeeping met a store
  outage) is completed.

Every change is a guarded update of the record as it was read, so two API processes sweeping at
the same time act once; a task sent twice is harmless (the claim lets one delivery run it).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from api_schemas.batches import BatchStatus
from api_schemas.jobs import JobStatus
from service.storage import BatchRecord, JobRecord, RecordStore
from service.storage.outage import store_errors
from service.tasks import lease

log = logging.getLogger(__name__)
RECOVERED = Counter("voxagent_jobs_recovered_total", "Jobs the reaper requeued, sent again or failed", ["action"])
BATCH_SCAN = 200  # newest batches looked at per sweep for a missed completion


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)  # running, worker lost: queued again and sent
    resent: list[str] = field(default_factory=list)  # queued, message lost: sent again
    failed: list[str] = field(default_factory=list)  # worker lost and attempts spent
    batches: list[str] = field(default_factory=list)  # completed late

    def __bool__(self) -> bool:
        return bool(self.requeued or self.resent or self.failed or self.batches)


class Reaper:
    def __init__(self, ctx, dispatcher, policy: lease.LeasePolicy, interval_s: float,
                 clock: lease.Clock = lease.SYSTEM_CLOCK, me: lease.Owner | None = None) -> None:
        self.ctx, self.dispatcher, self.policy, self.interval_s, self.clock = ctx, dispatcher, policy, interval_s, clock
        self.me = me or lease.Owner.current(ctx.node)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def records(self) -> RecordStore:
        return self.ctx.records

    # ---- one sweep ---------------------------------------------------------------------------
    def sweep(self, startup: bool = False) -> SweepReport:
        report = SweepReport()
        now = self.clock.time()
        present = self.dispatcher.in_flight()
        # oldest first: jobs sent again keep their order in the queue (FIFO survives a restart)
        for doc in sorted(self.records.list_active(), key=lambda d: float(d.get("created_at_ts") or 0.0)):
            if doc.get("status") == JobStatus.running.value:
                self._running(doc, now, present, report)
            elif doc.get("status") == JobStatus.queued.value:
                self._queued(doc, now, present, startup, report)
        self._batches(report)
        if report:
            log.info("reaper: requeued %d, sent again %d, failed %d, batches completed %d",
                     len(report.requeued), len(report.resent), len(report.failed), len(report.batches),
                     extra={"requeued": report.requeued, "resent": report.resent, "failed": report.failed})
        return report

    def _running(self, doc: dict[str, Any], now: float, present: set[str] | None, report: SweepReport) -> None:
        decision = lease.decide(doc, now, self.policy, self.me)
        guard = lease.same_state(doc)
        if decision.action == lease.Action.fail:
            job = self.records.update_record(JobRecord, doc["id"], lease.failed_changes(decision.reason),
                                             only_if=guard)
            if job is not None:
                log.warning("job %s failed: %s", job.id, decision.reason)
                RECOVERED.labels("failed").inc()
                report.failed.append(job.id)
                self._batch_done(job)
        elif decision.action == lease.Action.take_over:
            job = self.records.update_record(JobRecord, doc["id"], lease.requeue_changes(now), only_if=guard)
            if job is not None:
                log.warning("job %s requeued after attempt %d: %s", job.id, job.attempt, decision.reason)
                RECOVERED.labels("requeued").inc()
                report.requeued.append(job.id)
                if present is None or job.id not in present:  # a redelivery may already wait in the queue
                    self._send(job.id)

    def _queued(self, doc: dict[str, Any], now: float, present: set[str] | None, startup: bool,
                report: SweepReport) -> None:
        if present is None or doc["id"] in present:
            return
        since = doc.get("dispatched_ts") or doc.get("created_at_ts") or 0.0
        if not (startup and self.dispatcher.mode == "embedded") and now - float(since) < self.policy.lease_s:
            return  # just sent, or just taken by a worker that is about to claim it
        job = self.records.update_record(JobRecord, doc["id"], {"dispatched_ts": now},
                                         only_if=lambda d: d.get("status") == JobStatus.queued.value
                                         and d.get("dispatched_ts") == doc.get("dispatched_ts"))
        if job is not None:
            log.warning("job %s queued without a task message; sent again", job.id)
            RECOVERED.labels("resent").inc()
            report.resent.append(job.id)
            self._send(job.id)

    def _send(self, job_id: str) -> None:
        try:
            self.dispatcher.submit(job_id)
        except Exception as exc:  # noqa: BLE001 - the job stays queued; the next sweep sends it again
            log.warning("could not send job %s again: %s", job_id, exc)

    def _batch_done(self, job: JobRecord) -> None:
        if job.batch_id:
            from service.batches import on_job_finished

            on_job_finished(self.ctx, job.batch_id)

    def _batches(self, report: SweepReport) -> None:
        from service.batches import on_job_finished

        for batch in self.records.list_records(BatchRecord, None, limit=BATCH_SCAN):
            if batch.status != BatchStatus.running:
                continue
            on_job_finished(self.ctx, batch.id)
            after = self.records.get_record(BatchRecord, batch.id)
            if after is not None and after.status != BatchStatus.running:
                report.batches.append(batch.id)

    # ---- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        startup = True
        while True:
            try:
                self.sweep(startup=startup)
                startup = False
            except store_errors() as exc:
                log.warning("reaper sweep skipped (job store unavailable): %s", exc)
            except Exception:  # noqa: BLE001 - a failed sweep must not end the reaper
                log.exception("reaper sweep failed")
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> "Reaper":
        self._thread = threading.Thread(target=self._loop, name="voxagent-reaper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
