"""Batch bookkeeping shared by API and workers: progress counts and the completion webhook."""
from __future__ import annotations

import logging

from api_schemas.batches import BatchStatus
from api_schemas.jobs import TERMINAL_VALUES, JobStatus
from service.clock import now_iso
from service.storage import BatchRecord, JobRecord, RecordStore
from service.webhooks import deliver

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
    hook = claimed.webhook
    payload = {"event": "batch.completed", "batch_id": batch_id, "counts": c, "total": len(batch.job_ids),
               "job_ids": batch.job_ids, "finished_at": claimed.finished_at}
    s = ctx.settings
    ok, attempts, error = deliver(hook.url, batch.webhook_secret or "", payload, attempts=s.webhook_attempts,
                                  backoff_s=s.webhook_backoff_s, timeout_s=s.webhook_timeout_s,
                                  allow_loopback=s.webhook_allow_loopback)
    delivered = hook.model_copy(update={"delivered": ok, "attempts": attempts, "last_error": error})
    ctx.records.update_record(BatchRecord, batch_id, {"webhook": delivered})
    log.info("batch %s webhook delivered=%s after %d attempt(s)", batch_id, ok, attempts)
