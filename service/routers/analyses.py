"""/v1/analyses: create (JSON with volume ids, or multipart with the files), status, result, cancel."""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from api_schemas.jobs import ACTIVE_VALUES, TERMINAL, Job, JobStatus
from api_schemas.limits import MAX_CODE_CHARS, MAX_PROMPT_CHARS
from api_schemas.requests import AnalysisRequest, VolumeInput
from service import jobs
from service.auth import Principal
from service.deps import MAX_LIST_OFFSET, admit, get_principal, get_state
from service.errors import ProblemError
from service.idempotency import Created, idempotent
from service.state import ServiceState, now_iso
from service.storage import JobRecord
from service.uploads import parse_multipart
from service.volumes import artifact_opener, ingest

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])


async def _create(state: ServiceState, tenant: str, req: AnalysisRequest) -> Created:
    admit(state, tenant)
    job = jobs.new_job_record(state.records, tenant, req)
    jobs.submit(state, job)
    if req.wait > 0:
        job = await jobs.wait_for(state, job.id, req.wait) or job
    done = job.status in TERMINAL
    return Created(jobs.to_model(job), 200 if done else 202, f"/v1/analyses/{job.id}")


@router.post("", status_code=202, response_model=Job, summary="Start an analysis of stored volumes",
             responses={200: {"model": Job, "description": "Finished within `wait` seconds"}})
async def create_analysis(request: Request, response: Response, body: AnalysisRequest,
                          principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return await idempotent(request, response, state, principal.tenant, lambda: _create(state, principal.tenant, body))


UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"], "properties": {
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "code": {"type": "string", "maxLength": MAX_CODE_CHARS},
        "wait": {"type": "number", "minimum": 0, "maximum": 30},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "metadata": {"type": "string", "description": "JSON list aligned with files: [{name, modality, date, "
                                                     "frame}] (frame: required for a 4D NIfTI, 0-based)"},
        "volumes": {"type": "string",
                    "description": "JSON list of already stored volumes: [{id, name, modality, date}]"},
    }}}}}}


@router.post("/upload", status_code=202, response_model=Job, openapi_extra=UPLOAD_BODY,
             summary="Start an analysis, uploading its volumes in the same request",
             responses={200: {"model": Job, "description": "Finished within `wait` seconds"}})
async def create_analysis_with_upload(request: Request, response: Response,
                                      principal: Principal = Depends(get_principal),
                                      state: ServiceState = Depends(get_state)):
    tenant = principal.tenant

    async def produce() -> Created:
        admit(state, tenant)
        form = await parse_multipart(request, artifact_opener(state, tenant), state.settings.max_upload_bytes)
        files = [f for f in form.files if f.field == "files"]
        try:
            try:
                meta = json.loads(form.one("metadata") or "[]")
                stored = json.loads(form.one("volumes") or "[]")
                if not isinstance(meta, list) or not isinstance(stored, list):
                    raise ValueError("must be JSON lists")
                if len(meta) > len(files):
                    raise ValueError("metadata has more entries than files")
                meta = meta + [{}] * (len(files) - len(meta))
                if not all(isinstance(m, dict) for m in meta):
                    raise ValueError("metadata entries must be objects")
                for i, m in enumerate(meta):
                    for key in ("name", "modality", "date"):
                        if m.get(key) is not None and not isinstance(m[key], str):
                            raise ValueError(f"entry {i}: {key!r} must be a string or null, "
                                             f"not {type(m[key]).__name__}")
                    frame = m.get("frame")
                    if frame is not None and (type(frame) is not int or not 0 <= frame < 10**6):
                        raise ValueError(f"entry {i}: 'frame' must be a frame index (0, 1, ...) or null")
            except RecursionError as exc:  # json.loads of '[' * 5000
                raise ProblemError(422, "metadata/volumes: JSON nested too deeply") from exc
            except ValueError as exc:
                raise ProblemError(422, f"metadata/volumes: {exc}") from exc
            if len(files) + len(stored) > state.settings.max_volumes_per_analysis:
                raise ProblemError(422, f"at most {state.settings.max_volumes_per_analysis} volumes per analysis")
            refs = []
            for up, m in zip(files, meta):
                record = await ingest(state, tenant, up, m.get("modality"), m.get("date"), frame=m.get("frame"))
                refs.append({"id": record.id, "name": m.get("name"), "modality": m.get("modality"),
                             "date": m.get("date")})
            try:
                req = AnalysisRequest(prompt=form.one("prompt"), code=form.one("code"),
                                      wait=float(form.one("wait") or 0),
                                      volumes=[VolumeInput.model_validate(r) for r in refs + stored])
            except (ValidationError, ValueError) as exc:
                raise ProblemError(422, str(exc), title="Validation failed") from exc
        finally:
            # Every file part was streamed to a vol_*.upload temp file: ingest renamed the used
            # ones to stored volumes; the rest (an error above, or a file part under another
            # field name than 'files') would otherwise stay on disk for good.
            for up in form.files:
                state.artifacts.delete(tenant, up.artifact)
        return await _create(state, tenant, req)

    return await idempotent(request, response, state, tenant, produce, fingerprint_body=False)


@router.get("", response_model=list[Job], summary="List this tenant's analyses (newest first)")
def list_analyses(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_LIST_OFFSET),
                  principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return [jobs.to_model(j) for j in state.records.list_records(JobRecord, principal.tenant, limit, offset)]


def _job_or_404(state: ServiceState, job_id: str, tenant: str) -> JobRecord:
    job = state.records.get_record(JobRecord, job_id, tenant)
    if job is None:
        raise ProblemError(404, f"analysis {job_id} not found")
    return job


@router.get("/{job_id}", response_model=Job, summary="Status, and the result once finished")
async def get_analysis(job_id: str, wait: float = Query(0.0, ge=0.0, le=30.0),
                       principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    job = _job_or_404(state, job_id, principal.tenant)
    if wait > 0 and job.status not in TERMINAL:
        job = await jobs.wait_for(state, job_id, wait) or job
    return jobs.to_model(job)


@router.post("/{job_id}/cancel", response_model=Job, summary="Cancel a queued or running analysis")
def cancel_analysis(job_id: str, principal: Principal = Depends(get_principal),
                    state: ServiceState = Depends(get_state)):
    _job_or_404(state, job_id, principal.tenant)
    job = state.records.update_record(JobRecord, job_id, {"status": JobStatus.cancelled, "finished_at": now_iso()},
                                      only_if_status=ACTIVE_VALUES)
    if job is None:
        current = state.records.get_record(JobRecord, job_id)
        raise ProblemError(409, f"analysis {job_id} already {current.status.value if current else 'gone'}")
    state.dispatcher.cancel(job_id)
    if job.batch_id:
        from service.batches import on_job_finished

        on_job_finished(state.ctx, job.batch_id)
    return jobs.to_model(job)
