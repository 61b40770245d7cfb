"""/v1/batches: many analyses at once, progress, results, CSV of all metrics, signed webhook."""
from __future__ import annotations

import csv
import io
import uuid

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
from service.state import ServiceState, now_iso, utcnow

router = APIRouter(prefix="/v1/batches", tags=["batches"])


def _to_model(state: ServiceState, doc: dict) -> Batch:
    c = doc.get("counts") if doc["status"] == BatchStatus.completed.value else counts(state.records, doc["job_ids"])
    hook = doc.get("webhook")
    return Batch.model_validate({
        "id": doc["id"], "status": doc["status"], "created_at": doc["created_at"],
        "finished_at": doc.get("finished_at"), "total": len(doc["job_ids"]), "counts": c, "job_ids": doc["job_ids"],
        "labels": doc.get("labels", []), "webhook": hook,
        "links": {"self": f"/v1/batches/{doc['id']}", "results": f"/v1/batches/{doc['id']}/results",
                  "metrics_csv": f"/v1/batches/{doc['id']}/metrics.csv"}})


@router.post("", status_code=202, response_model=Batch, summary="Submit many analyses at once")
async def create_batch(request: Request, response: Response, body: BatchRequest,
                       principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    tenant = principal.tenant

    async def produce() -> Created:
        if len(body.items) > state.settings.max_batch_items:
            raise ProblemError(422, f"at most {state.settings.max_batch_items} items per batch")
        admit(state, tenant, len(body.items))
        batch_id = f"bat_{uuid.uuid4().hex}"
        docs = []
        for i, item in enumerate(body.items):
            try:
                req = AnalysisRequest(prompt=item.prompt or (None if item.code else body.prompt),
                                      code=item.code or (None if item.prompt else body.code), volumes=item.volumes)
            except ValueError as exc:
                raise ProblemError(422, f"item {i}: {exc}") from exc
            docs.append(jobs.new_job_doc(state.records, tenant, req, batch_id=batch_id, label=item.label))
        created, ts = utcnow()
        batch = {"id": batch_id, "tenant": tenant, "status": BatchStatus.running.value, "created_at": created,
                 "created_at_ts": ts,
                 "job_ids": [d["id"] for d in docs], "labels": [i.label for i in body.items],
                 "webhook": {"url": body.webhook_url, "delivered": False, "attempts": 0} if body.webhook_url else None,
                 "webhook_secret": body.webhook_secret}
        # Every job record and the batch exist before the first job is dispatched: a fast job that
        # finishes while later items were still unrecorded would otherwise count them as failed
        # and complete the batch (and send its webhook) early.
        for d in docs:
            state.records.put("job", d)
        state.records.put("batch", batch)
        for i, d in enumerate(docs):
            try:
                jobs.dispatch(state, d)
            except ProblemError:
                for rest in docs[i + 1:]:
                    state.records.update("job", rest["id"], {"status": JobStatus.failed.value, "finished_at": now_iso(),
                                                              "error": "not queued: an earlier item of the batch "
                                                                       "could not be queued"})
                on_job_finished(state.ctx, batch_id)  # jobs already done never see the batch complete
                raise
        return Created(_to_model(state, state.records.get("batch", batch_id)), 202, f"/v1/batches/{batch_id}")

    return await idempotent(request, response, state, tenant, produce)


def _batch_or_404(state: ServiceState, batch_id: str, tenant: str) -> dict:
    doc = state.records.get_for("batch", batch_id, tenant)
    if doc is None:
        raise ProblemError(404, f"batch {batch_id} not found")
    return doc


@router.get("/{batch_id}", response_model=Batch, summary="Progress of a batch")
def get_batch(batch_id: str, principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return _to_model(state, _batch_or_404(state, batch_id, principal.tenant))


@router.get("/{batch_id}/results", response_model=BatchResults, summary="Every job of the batch with its result")
def batch_results(batch_id: str, principal: Principal = Depends(get_principal),
                  state: ServiceState = Depends(get_state)):
    doc = _batch_or_404(state, batch_id, principal.tenant)
    items = [jobs.to_model(j) for j in (state.records.get("job", i) for i in doc["job_ids"]) if j]
    return BatchResults(id=batch_id, items=items)


@router.get("/{batch_id}/metrics.csv", summary="All metrics of the batch as CSV", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}})
def batch_metrics_csv(batch_id: str, principal: Principal = Depends(get_principal),
                      state: ServiceState = Depends(get_state)):
    doc = _batch_or_404(state, batch_id, principal.tenant)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["batch_id", "job_id", "label", "status", "metric", "value", "unit", "step"])
    for jid, label in zip(doc["job_ids"], doc.get("labels") or [None] * len(doc["job_ids"])):
        job = state.records.get("job", jid) or {}
        metrics = ((job.get("result") or {}).get("metrics")) or []
        if not metrics:
            w.writerow([batch_id, jid, label or "", job.get("status", ""), "", "", "", ""])
        for m in metrics:
            w.writerow([batch_id, jid, label or "", job.get("status", ""), m["name"], m["value"], m.get("unit") or "",
                        "" if m.get("step") is None else m["step"]])
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{batch_id}-metrics.csv"'})
