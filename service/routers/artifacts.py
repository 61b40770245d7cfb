"""/v1/artifacts: output volumes as NIfTI (on the input grid) and PNG snapshots."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from service.auth import Principal
from service.deps import get_principal, get_state
from service.errors import ProblemError
from service.state import ServiceState
from service.storage import ArtifactRecord, VolumeRecord

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
    import nibabel as nib
    import numpy as np

    mask_img = nib.load(state.artifacts.path(tenant, record.id))
    scan_record = state.records.get_record(VolumeRecord, record.source_volume_id or "", tenant)
    mask = np.asarray(mask_img.dataobj)
    if scan_record is not None:
        scan_img = nib.load(state.artifacts.path(tenant, scan_record.artifact))
        scan = np.asarray(scan_img.dataobj, dtype=np.float32)
        if scan.ndim == 3 and scan.shape == mask.shape:
            from service.png import overlay_snapshot

            return overlay_snapshot(scan, scan_img.affine, mask, mask_img.affine)
    from service.png import overlay_snapshot

    return overlay_snapshot(mask.astype(np.float32), mask_img.affine, None)


@router.get("/{artifact_id}/snapshot.png", summary="PNG: the mask in red over its scan (axial slice)",
            responses={200: {"content": {"image/png": {}}}}, response_class=Response)
async def snapshot(artifact_id: str, principal: Principal = Depends(get_principal),
                   state: ServiceState = Depends(get_state)):
    record = _artifact(state, artifact_id, principal.tenant)
    png = await run_in_threadpool(_snapshot, state, principal.tenant, record)
    return Response(png, media_type="image/png")
