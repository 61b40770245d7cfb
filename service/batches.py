"""Batch bookkeeping shared by API and workers: progress counts and the completion webhook."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from api_schemas.jobs import TERMINAL
from service.webhooks import deliver

log = logging.getLogger(__name__)
TERMINAL_VALUES = {s.value for s in TERMINAL}


def counts(records, job_ids: list[str]) -> dict[str, int]:
    out = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    for jid in job_ids:
        doc = records.get("job", jid)
        status = doc["status"] if doc else "failed"
        out[status] = out.get(status, 0) + 1
    return out


def on_job_finished(ctx, batch_id: str) -> None:
    """Whoever finishes the last job of a batch completes it (exactly once) and sends the webhook."""
    batch = ctx.records.get("batch", batch_id)
    if batch is None:
        return
    c = counts(ctx.records, batch["job_ids"])
    if sum(c[s] for s in TERMINAL_VALUES) < len(batch["job_ids"]):
        return
    claimed = ctx.records.update("batch", batch_id, {"status": "completed", "counts": c,
                                                     "finished_at": datetime.now(timezone.utc).isoformat()},
                                 only_if_status=("running",))
    if claimed is None or not claimed.get("webhook"):
        return
    hook = claimed["webhook"]
    payload = {"event": "batch.completed", "batch_id": batch_id, "counts": c, "total": len(batch["job_ids"]),
               "job_ids": batch["job_ids"], "finished_at": claimed["finished_at"]}
    s = ctx.settings
    ok, attempts, error = deliver(hook["url"], batch["webhook_secret"], payload, attempts=s.webhook_attempts,
                                  backoff_s=s.webhook_backoff_s, timeout_s=s.webhook_timeout_s)
    ctx.records.update("batch", batch_id, {"webhook": {**hook, "delivered": ok, "attempts": attempts,
                                                       "last_error": error}})
    log.info("batch %s webhook delivered=%s after %d attempt(s)", batch_id, ok, attempts)
