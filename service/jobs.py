"""Creating and describing analysis jobs (shared by the analyses and batches routers)."""
from __future__ import annotations

import asyncio
import time
import uuid

from api_schemas.jobs import TERMINAL, Job, JobStatus
from api_schemas.requests import AnalysisRequest
from service.errors import ProblemError
from service.observability import JOBS_SUBMITTED
from service.state import ServiceState, now_iso, utcnow
from service.storage import JobRecord, RecordStore, VolumeRecord


def new_job_record(records: RecordStore, tenant: str, req: AnalysisRequest, batch_id: str | None = None,
                   label: str | None = None) -> JobRecord:
    for ref in req.volumes:
        if records.get_record(VolumeRecord, ref.id, tenant) is None:
            raise ProblemError(422, f"volume {ref.id} not found", title="Unknown volume")
    created, ts = utcnow()
    return JobRecord(id=f"job_{uuid.uuid4().hex}", tenant=tenant, status=JobStatus.queued, created_at=created,
                     created_at_ts=ts, prompt=req.prompt, code=req.code,
                     volumes=[v.model_dump() for v in req.volumes], scan_names=req.scan_names(),
                     batch_id=batch_id, label=label)


def submit(state: ServiceState, job: JobRecord) -> None:
    """Record the job, then hand it to the dispatcher (a worker may finish it before this returns)."""
    state.records.put_record(job)
    dispatch(state, job)


def dispatch(state: ServiceState, job: JobRecord) -> None:
    """Hand an already recorded job to the dispatcher; a refusal fails the job and is a 503."""
    JOBS_SUBMITTED.labels("code" if job.code else "prompt").inc()
    try:
        state.dispatcher.submit(job.id)
    except Exception as exc:
        state.records.update_record(JobRecord, job.id, {"status": JobStatus.failed, "finished_at": now_iso(),
                                                        "error": f"dispatch failed: {exc}"})
        raise ProblemError(503, f"could not queue the job: {exc}", headers={"Retry-After": "5"}) from exc


def to_model(job: JobRecord) -> Job:
    links = {"self": f"/v1/analyses/{job.id}"}
    if job.result:
        for out in job.result.get("outputs", []):
            if out.get("path"):
                links[f"output:{out['name']}"] = f"/v1/artifacts/{out['path']}"
                links[f"snapshot:{out['name']}"] = f"/v1/artifacts/{out['path']}/snapshot.png"
    if job.batch_id:
        links["batch"] = f"/v1/batches/{job.batch_id}"
    fields = {k: getattr(job, k) for k in ("id", "status", "created_at", "started_at", "finished_at", "prompt",
                                           "code", "volumes", "batch_id", "result", "error", "progress")}
    return Job.model_validate({**fields, "links": links})


async def wait_for(state: ServiceState, job_id: str, seconds: float) -> JobRecord | None:
    """Poll the job store until the job is terminal or ``seconds`` pass (bounded by settings)."""
    deadline = time.monotonic() + min(seconds, state.settings.max_wait_s)
    delay = 0.002
    while True:
        job = state.records.get_record(JobRecord, job_id)
        if job is None or job.status in TERMINAL or time.monotonic() >= deadline:
            return job
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.05)
