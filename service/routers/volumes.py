"""/v1/volumes: upload (streamed multipart), metadata, delete."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse

from api_schemas.volumes import VolumeInfo
from service.auth import Principal
from service.deps import MAX_LIST_OFFSET, get_principal, get_state
from service.errors import ProblemError
from service.idempotency import Created, idempotent
from service.state import ServiceState
from service.storage import VolumeRecord
from service.uploads import parse_multipart
from service.volumes import artifact_opener, ingest, parse_frame, to_model

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])

UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "NIfTI-1/2 (.nii or .nii.gz), or a .zip of a DICOM series"},
        "series": {"type": "string", "maxLength": 64,
                   "description": "DICOM only: the SeriesInstanceUID (or listing index) when the zip holds several"},
        "modality": {"type": "string", "maxLength": 32},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "frame": {"type": "integer", "minimum": 0,
                  "description": "4D NIfTI only (required there): the frame to store, 0-based"}}}}}}}


@router.post("", status_code=201, response_model=VolumeInfo, openapi_extra=UPLOAD_BODY,
             summary="Upload a NIfTI volume or a DICOM series zip (streamed to disk with a size limit, then validated)")
async def upload_volume(request: Request, response: Response, principal: Principal = Depends(get_principal),
                        state: ServiceState = Depends(get_state)):
    async def produce() -> Created:
        form = await parse_multipart(request, artifact_opener(state, principal.tenant), state.settings.max_upload_bytes)
        files = [f for f in form.files if f.field == "file"]
        for extra in form.files:
            if extra.field != "file":
                state.artifacts.delete(principal.tenant, extra.artifact)
        if len(files) != 1:
            for f in files:
                state.artifacts.delete(principal.tenant, f.artifact)
            raise ProblemError(422, "send exactly one file part named 'file'")
        series = form.one("series")
        if series is not None and not 1 <= len(series) <= 64:
            state.artifacts.delete(principal.tenant, files[0].artifact)
            raise ProblemError(422, "series must be a SeriesInstanceUID or an index (1-64 characters)")
        try:
            frame = parse_frame(form.one("frame"))
        except ProblemError:
            state.artifacts.delete(principal.tenant, files[0].artifact)
            raise
        record = await ingest(state, principal.tenant, files[0], form.one("modality"), form.one("date"), series,
                              frame)
        return Created(to_model(record), 201, f"/v1/volumes/{record.id}")

    return await idempotent(request, response, state, principal.tenant, produce, fingerprint_body=False)


@router.get("", response_model=list[VolumeInfo], summary="List this tenant's volumes")
def list_volumes(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_LIST_OFFSET),
                 principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return [to_model(r) for r in state.records.list_records(VolumeRecord, principal.tenant, limit, offset)]


@router.get("/{volume_id}", response_model=VolumeInfo, summary="Volume metadata")
def get_volume(volume_id: str, principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    record = state.records.get_record(VolumeRecord, volume_id, principal.tenant)
    if record is None:
        raise ProblemError(404, f"volume {volume_id} not found")
    return to_model(record)

@router.get("/{volume_id}/file", response_class=FileResponse, summary="Download the stored volume (NIfTI)",
            responses={200: {"content": {"application/gzip": {}, "application/octet-stream": {}}}})
def download_volume(volume_id: str, principal: Principal = Depends(get_principal),
                    state: ServiceState = Depends(get_state)):
    """The volume as stored (a DICOM series as the NIfTI it was read into), so a client such as the web
    page can show output masks over the very grid they were computed on."""
    record = state.records.get_record(VolumeRecord, volume_id, principal.tenant)
    if record is None or not state.artifacts.exists(principal.tenant, record.artifact):
        raise ProblemError(404, f"volume {volume_id} not found")
    gz = record.artifact.endswith(".gz")
    return FileResponse(state.artifacts.path(principal.tenant, record.artifact),
                        media_type="application/gzip" if gz else "application/octet-stream",
                        filename=f"{volume_id}.nii.gz" if gz else f"{volume_id}.nii")



@router.delete("/{volume_id}", status_code=204, response_class=Response, summary="Delete a volume and its file")
def delete_volume(volume_id: str, principal: Principal = Depends(get_principal),
                  state: ServiceState = Depends(get_state)):
    record = state.records.get_record(VolumeRecord, volume_id, principal.tenant)
    if record is None:
        raise ProblemError(404, f"volume {volume_id} not found")
    state.artifacts.delete(principal.tenant, record.artifact)
    if record.dicom is not None:
        state.artifacts.delete(principal.tenant, record.dicom.headers)
    state.records.delete(VolumeRecord.KIND, volume_id)
    return Response(status_code=204)
