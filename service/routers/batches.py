"""/v1/batches: many analyses at once, progress, results, CSV of all metrics, signed webhook."""
from __future__ import annotations

import csv
import io
import uuid

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api_schemas.batches import Batch, BatchRequest, BatchResults, BatchStatus
from api_schemas.jobs import JobStatus
from api_schemas.requests import AnalysisRequest
from service import jobs
from service.auth import Principal
from service.batches import counts, on_job_finished
from service.deps import admit, get_principal, get_state
from service.errors import ProblemError
from service.idempotency import Created, idempotent
from service.netguard import DestinationRefused, check_url
from service.state import ServiceState, now_iso, utcnow
from service.storage import BatchRecord, JobRecord
from service.storage.models import WebhookRecord

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def _to_model(state: ServiceState, batch: BatchRecord) -> Batch:
    done = batch.status == BatchStatus.completed and batch.counts is not None
    c = batch.counts if done else counts(state.records, batch.job_ids)
    return Batch.model_validate({
        "id": batch.id, "status": batch.status, "created_at": batch.created_at, "finished_at": batch.finished_at,
        "total": len(batch.job_ids), "counts": c, "job_ids": batch.job_ids, "labels": batch.labels,
        "webhook": batch.webhook.model_dump() if batch.webhook else None,
        "links": {"self": f"/v1/batches/{batch.id}", "results": f"/v1/batches/{batch.id}/results",
                  "metrics_csv": f"/v1/batches/{batch.id}/metrics.csv"}})


@router.post("", status_code=202, response_model=Batch, summary="Submit many analyses at once")
async def create_batch(request: Request, response: Response, body: BatchRequest,
                       principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    tenant = principal.tenant
    if body.webhook_url:
        try:  # resolving a name blocks: off the event loop
            await anyio.to_thread.run_sync(
                lambda: check_url(body.webhook_url or "", allow_loopback=state.settings.webhook_allow_loopback))
        except DestinationRefused as exc:
            raise ProblemError(422, f"webhook_url {exc}") from exc

    async def produce() -> Created:
        if len(body.items) > state.settings.max_batch_items:
            raise ProblemError(422, f"at most {state.settings.max_batch_items} items per batch")
        admit(state, tenant, len(body.items))
        batch_id = f"bat_{uuid.uuid4().hex}"
        records: list[JobRecord] = []
        for i, item in enumerate(body.items):
            try:
                req = AnalysisRequest(prompt=item.prompt or (None if item.code else body.prompt),
                                      code=item.code or (None if item.prompt else body.code), volumes=item.volumes)
            except ValueError as exc:
                raise ProblemError(422, f"item {i}: {exc}") from exc
            records.append(jobs.new_job_record(state.records, tenant, req, batch_id=batch_id, label=item.label))
        created, ts = utcnow()
        batch = BatchRecord(id=batch_id, tenant=tenant, status=BatchStatus.running, created_at=created,
                            created_at_ts=ts, job_ids=[j.id for j in records], labels=[i.label for i in body.items],
                            webhook=WebhookRecord(url=body.webhook_url) if body.webhook_url else None,
                            webhook_secret=body.webhook_secret)
        # Every job record and the batch exist before the first job is dispatched: a fast job that
        # finishes while later items were still unrecorded would otherwise count them as failed
        # and complete the batch (and send its webhook) early.
        for job in records:
            state.records.put_record(job)
        state.records.put_record(batch)
        for i, job in enumerate(records):
            try:
                jobs.dispatch(state, job)
            except ProblemError:
                for rest in records[i + 1:]:
                    state.records.update_record(JobRecord, rest.id, {
                        "status": JobStatus.failed, "finished_at": now_iso(),
                        "error": "not queued: an earlier item of the batch could not be queued"})
                on_job_finished(state.ctx, batch_id)  # jobs already done never see the batch complete
                raise
        stored = state.records.get_record(BatchRecord, batch_id)
        return Created(_to_model(state, stored or batch), 202, f"/v1/batches/{batch_id}")

    return await idempotent(request, response, state, tenant, produce)


def _batch_or_404(state: ServiceState, batch_id: str, tenant: str) -> BatchRecord:
    batch = state.records.get_record(BatchRecord, batch_id, tenant)
    if batch is None:
        raise ProblemError(404, f"batch {batch_id} not found")
    return batch


@router.get("/{batch_id}", response_model=Batch, summary="Progress of a batch")
def get_batch(batch_id: str, principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return _to_model(state, _batch_or_404(state, batch_id, principal.tenant))


@router.get("/{batch_id}/results", response_model=BatchResults, summary="Every job of the batch with its result")
def batch_results(batch_id: str, principal: Principal = Depends(get_principal),
                  state: ServiceState = Depends(get_state)):
    batch = _batch_or_404(state, batch_id, principal.tenant)
    items = [jobs.to_model(j) for j in (state.records.get_record(JobRecord, i) for i in batch.job_ids) if j]
    return BatchResults(id=batch_id, items=items)


@router.get("/{batch_id}/metrics.csv", summary="All metrics of the batch as CSV", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}})
def batch_metrics_csv(batch_id: str, principal: Principal = Depends(get_principal),
                      state: ServiceState = Depends(get_state)):
    batch = _batch_or_404(state, batch_id, principal.tenant)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["batch_id", "job_id", "label", "status", "metric", "value", "unit", "step"])
    for jid, label in zip(batch.job_ids, batch.labels or [None] * len(batch.job_ids)):
        job = state.records.get_record(JobRecord, jid)
        status = job.status.value if job else ""
        metrics = ((job.result or {}).get("metrics") if job else None) or []
        if not metrics:
            w.writerow([batch_id, jid, label or "", status, "", "", "", ""])
        for m in metrics:
            w.writerow([batch_id, jid, label or "", status, m["name"], m["value"], m.get("unit") or "",
                        "" if m.get("step") is None else m["step"]])
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{batch_id}-metrics.csv"'})
