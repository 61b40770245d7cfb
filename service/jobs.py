"""Creating and describing analysis jobs (shared by the analyses and batches routers)."""
from __future__ import annotations

import asyncio
import time
import uuid

from api_schemas.jobs import TERMINAL_VALUES, Job, JobStatus
from api_schemas.requests import AnalysisRequest
from service.errors import ProblemError
from service.observability import JOBS_SUBMITTED
from service.state import ServiceState, now_iso, utcnow


def new_job_doc(records, tenant: str, req: AnalysisRequest, batch_id: str | None = None,
                label: str | None = None) -> dict:
    for ref in req.volumes:
        if records.get_for("volume", ref.id, tenant) is None:
            raise ProblemError(422, f"volume {ref.id} not found", title="Unknown volume")
    created, ts = utcnow()
    return {"id": f"job_{uuid.uuid4().hex}", "tenant": tenant, "status": JobStatus.queued.value, "created_at": created,
            "created_at_ts": ts, "prompt": req.prompt, "code": req.code,
            "volumes": [v.model_dump() for v in req.volumes], "scan_names": req.scan_names(),
            "batch_id": batch_id, "label": label, "result": None, "error": None}


def submit(state: ServiceState, doc: dict) -> None:
    """Record the job, then hand it to the dispatcher (a worker may finish it before this returns)."""
    state.records.put("job", doc)
    dispatch(state, doc)


def dispatch(state: ServiceState, doc: dict) -> None:
    """Hand an already recorded job to the dispatcher; a refusal fails the job and is a 503."""
    JOBS_SUBMITTED.labels("code" if doc.get("code") else "prompt").inc()
    try:
        state.dispatcher.submit(doc["id"])
    except Exception as exc:
        state.records.update("job", doc["id"], {"status": JobStatus.failed.value, "finished_at": now_iso(),
                                                 "error": f"dispatch failed: {exc}"})
        raise ProblemError(503, f"could not queue the job: {exc}", headers={"Retry-After": "5"}) from exc


def to_model(doc: dict) -> Job:
    links = {"self": f"/v1/analyses/{doc['id']}"}
    result = doc.get("result")
    if result:
        for out in result.get("outputs", []):
            if out.get("path"):
                links[f"output:{out['name']}"] = f"/v1/artifacts/{out['path']}"
                links[f"snapshot:{out['name']}"] = f"/v1/artifacts/{out['path']}/snapshot.png"
    if doc.get("batch_id"):
        links["batch"] = f"/v1/batches/{doc['batch_id']}"
    fields = {k: doc.get(k) for k in ("id", "status", "created_at", "started_at", "finished_at", "prompt", "code",
                                      "volumes", "batch_id", "result", "error")}
    return Job.model_validate({**fields, "links": links})


async def wait_for(state: ServiceState, job_id: str, seconds: float) -> dict:
    """Poll the job store until the job is terminal or ``seconds`` pass (bounded by settings)."""
    deadline = time.monotonic() + min(seconds, state.settings.max_wait_s)
    delay = 0.002
    while True:
        doc = state.records.get("job", job_id)
        if doc is None or doc["status"] in TERMINAL_VALUES or time.monotonic() >= deadline:
            return doc
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.05)
