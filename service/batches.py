"""Batch bookkeeping shared by API and workers: progress counts and the completion webhook (queued
for :mod:`service.delivery`)."""
from __future__ import annotations

import logging

from api_schemas.batches import BatchStatus
from api_schemas.jobs import TERMINAL_VALUES, JobStatus
from service.clock import now_iso
from service.delivery import process_queue
from service.storage import BatchRecord, JobRecord, RecordStore

log = logging.getLogger(__name__)


def counts(records: RecordStore, job_ids: list[str]) -> dict[str, int]:
    """Jobs per status; a job whose record is gone counts as failed (the batch records every job
    before it dispatches any, so a missing record is a lost one, never one not yet written)."""
    out = {s.value: 0 for s in JobStatus}
    for jid in job_ids:
        job = records.get_record(JobRecord, jid)
        status = job.status.value if job else JobStatus.failed.value
        out[status] = out.get(status, 0) + 1
    return out


def on_job_finished(ctx, batch_id: str) -> None:
    """Whoever finishes the last job of a batch completes it (exactly once) and sends the webhook."""
    batch = ctx.records.get_record(BatchRecord, batch_id)
    if batch is None:
        return
    c = counts(ctx.records, batch.job_ids)
    if sum(c[s] for s in TERMINAL_VALUES) < len(batch.job_ids):
        return
    claimed = ctx.records.update_record(BatchRecord, batch_id, {"status": BatchStatus.completed, "counts": c,
                                                                "finished_at": now_iso()},
                                        only_if_status=(BatchStatus.running.value,))
    if claimed is None or claimed.webhook is None:
        return
    payload = {"event": "batch.completed", "batch_id": batch_id, "counts": c, "total": len(batch.job_ids),
               "job_ids": batch.job_ids, "finished_at": claimed.finished_at}
    # queued, never sent here: this may be a job thread, and a dead endpoint must not hold it
    queue = getattr(ctx, "deliveries", None) or process_queue(ctx.settings, ctx.records, ctx.node)
    queue.enqueue(batch.tenant, batch_id, claimed.webhook.url, batch.webhook_secret or "", payload)
