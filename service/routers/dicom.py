"""DICOM over HTTP: an analysis' SEG and SR downloads, DICOMweb STOW-RS in, and the arrived studies.

``/v1/analyses/{id}/dicom/seg|sr`` build the objects on first request (:mod:`service.dicom.export`)
and serve the stored files after. ``POST /dicomweb/studies[/{study}]`` stores each series of the
request as a volume (:mod:`service.dicom.stow`) and runs the routing rules on each study
(:mod:`service.dicom.routing`). Records of another tenant do not exist for the caller (404).
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from service.auth import Principal
from service.deps import MAX_LIST_OFFSET, get_principal, get_state
from service.dicom.export import DicomExportError, job_dicom
from service.errors import ProblemError
from service.state import ServiceState
from service.storage import JobRecord
from service.storage.models import StudyRecord

router = APIRouter(tags=["dicom"])
dicomweb_router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM = "application/dicom"


async def _job_file(state: ServiceState, tenant: str, job_id: str, scan: str | None, kind: str) -> FileResponse:
    job = state.records.get_record(JobRecord, job_id, tenant)
    if job is None:
        raise ProblemError(404, f"analysis {job_id} not found")
    try:
        built = await run_in_threadpool(job_dicom, state.records, state.artifacts, job, scan)
    except DicomExportError as exc:
        raise ProblemError(exc.status, exc.detail, title="No DICOM results",
                           type_="https://voxagent.dev/problems/dicom-results") from None
    path = built.seg if kind == "seg" else built.sr
    if path is None:
        raise ProblemError(404, f"analysis {job_id} output no mask on scan {built.scan!r}, so there is no SEG "
                                "(the SR holds its metrics and text)")
    return FileResponse(path, media_type=DICOM, filename=f"{job_id}_{kind}.dcm")


_SCAN = Query(None, max_length=64, description="The DICOM scan (by name) when the analysis has several")
_DICOM_RESPONSE = {200: {"content": {DICOM: {}}, "description": "A DICOM Part 10 file"}}


@router.get("/v1/analyses/{job_id}/dicom/seg", response_class=FileResponse, responses=_DICOM_RESPONSE,
            summary="The analysis' masks as a DICOM SEG in the source study (scans uploaded as DICOM)")
async def download_seg(job_id: str, scan: str | None = _SCAN, principal: Principal = Depends(get_principal),
                       state: ServiceState = Depends(get_state)):
    return await _job_file(state, principal.tenant, job_id, scan, "seg")


@router.get("/v1/analyses/{job_id}/dicom/sr", response_class=FileResponse, responses=_DICOM_RESPONSE,
            summary="The analysis' metrics and text as a DICOM SR (TID 1500) in the source study")
async def download_sr(job_id: str, scan: str | None = _SCAN, principal: Principal = Depends(get_principal),
                      state: ServiceState = Depends(get_state)):
    return await _job_file(state, principal.tenant, job_id, scan, "sr")


@router.get("/v1/studies", response_model=list[StudyRecord], tags=["dicom"],
            summary="Studies received by STOW-RS (newest first), with what routing did")
def list_studies(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_LIST_OFFSET),
                 principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return state.records.list_records(StudyRecord, principal.tenant, limit, offset)


@router.get("/v1/studies/{study_id}", response_model=StudyRecord, summary="One received study")
def get_study(study_id: str, principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    record = state.records.get_record(StudyRecord, study_id, principal.tenant)
    if record is None:
        raise ProblemError(404, f"study {study_id} not found")
    return record


STOW_BODY = {"requestBody": {"required": True, "content": {"multipart/related": {"schema": {
    "type": "string", "format": "binary",
    "description": 'multipart/related; type="application/dicom": one DICOM Part 10 instance per part'}}}}}
_STOW_RESPONSES = {200: {"content": {"application/dicom+json": {}}, "description": "All instances stored"},
                   202: {"content": {"application/dicom+json": {}}, "description": "Some instances failed"},
                   409: {"content": {"application/dicom+json": {}}, "description": "No instance stored"}}


async def _stow(request: Request, state: ServiceState, tenant: str, study: str | None) -> JSONResponse:
    from service.dicom import stow
    from service.dicom.routing import route_study

    staging = await stow.receive(state, tenant, request.headers.get("content-type", ""), request.stream())
    outcome = await run_in_threadpool(stow.store, state, tenant, staging, study)
    for record in outcome.studies:
        await run_in_threadpool(route_study, state, record.id)
    status, body = stow.response_body(outcome, str(request.base_url).rstrip("/"))
    return JSONResponse(body, status_code=status, media_type=stow.DICOM_JSON)


@dicomweb_router.post("/studies", openapi_extra=STOW_BODY, responses=_STOW_RESPONSES, response_class=JSONResponse,
                      summary="STOW-RS: store DICOM instances (one volume per series), then route each study")
async def stow_studies(request: Request, principal: Principal = Depends(get_principal),
                       state: ServiceState = Depends(get_state)):
    return await _stow(request, state, principal.tenant, None)


@dicomweb_router.post("/studies/{study}", openapi_extra=STOW_BODY, responses=_STOW_RESPONSES,
                      response_class=JSONResponse, summary="STOW-RS into one study (other studies' instances fail)")
async def stow_study(study: str, request: Request, principal: Principal = Depends(get_principal),
                     state: ServiceState = Depends(get_state)):
    if not 1 <= len(study) <= 64:
        raise ProblemError(422, "a Study Instance UID has 1-64 characters")
    return await _stow(request, state, principal.tenant, study)
