"""/v1/artifacts: output volumes as NIfTI (on the input grid) and PNG snapshots."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from service.auth import Principal
from service.deps import get_principal, get_state
from service.errors import ProblemError
from service.state import ServiceState
from service.storage import ArtifactRecord

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


def _artifact(state: ServiceState, artifact_id: str, tenant: str) -> ArtifactRecord:
    record = state.records.get_record(ArtifactRecord, artifact_id, tenant)
    if record is None or not state.artifacts.exists(tenant, artifact_id):
        raise ProblemError(404, f"artifact {artifact_id} not found")
    return record


@router.get("/{artifact_id}", response_class=FileResponse, summary="Download an output volume (NIfTI)",
            responses={200: {"content": {"application/gzip": {}}}})
def download(artifact_id: str, principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    record = _artifact(state, artifact_id, principal.tenant)
    filename = f"{record.name or 'output'}.nii.gz"
    return FileResponse(state.artifacts.path(principal.tenant, artifact_id), media_type="application/gzip",
                        filename=filename)


def _snapshot(state: ServiceState, tenant: str, record: ArtifactRecord) -> bytes:
    """The stored snapshot (written with the result); rendered and stored now for results made before."""
    from service.png import snapshot_name, store_snapshot

    name = snapshot_name(record.id)
    if not state.artifacts.exists(tenant, name):
        store_snapshot(state.records, state.artifacts, tenant, record)
    return state.artifacts.path(tenant, name).read_bytes()


@router.get("/{artifact_id}/snapshot.png",
            summary="PNG: the mask outlined over its scan (axial, coronal, sagittal planes through its centroid)",
            responses={200: {"content": {"image/png": {}}}}, response_class=Response)
async def snapshot(artifact_id: str, principal: Principal = Depends(get_principal),
                   state: ServiceState = Depends(get_state)):
    record = _artifact(state, artifact_id, principal.tenant)
    png = await run_in_threadpool(_snapshot, state, principal.tenant, record)
    return Response(png, media_type="image/png")
