"""Celery tasks of queue ``vision``: encode/generate on a resident VisionEngine.

The engine is the process's one resident engine (`service.tasks.resources.vision_engine`) for the
models directory of the settings (`service.settings`, the one place settings are read).

Arrays never cross the broker: inputs arrive as NIfTI paths on storage shared with the agent
workers, interpretable vectors and generated volumes go back as file paths. Encodings stay in
this worker's engine cache; the encode reply names ``vision.<node name>``, the queue only this
worker consumes, so the job's later generate/release calls find them.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from celery import shared_task

log = logging.getLogger(__name__)
_handles: dict[str, object] = {}  # handle key -> EncodingHandle held by this worker


def get_engine():
    """This worker's resident engine, for the configured models directory."""
    from service.settings import get_settings
    from service.tasks import resources

    return resources.vision_engine(get_settings().models_dir)


def worker_queue(hostname: str | None) -> str:
    return f"vision.{hostname}"


def _read(path: str, sha256: str | None = None):
    """A volume the agent worker wrote for this call, or (with ``sha256``) a stored input artifact,
    checked against its checksum and read with the same hostile-input checks as the agent worker."""
    from voxel_ops import Volume, load_volume

    if sha256 is not None:
        from service.storage.artifacts import sha256_file

        if sha256_file(Path(path)) != sha256:
            raise ValueError(f"artifact {Path(path).name} does not match its checksum")
        return load_volume(path)
    img = nib.load(path)
    return Volume(np.asarray(img.dataobj, dtype=np.float32), img.affine)


@shared_task(name="vision.encode", bind=True)
def encode(self, job_id: str, volume_paths: list[str], phis: list[list[float]],
           checksums: list[str | None] | None = None) -> dict:
    engine = get_engine()
    volumes = [_read(p, s) for p, s in zip(volume_paths, checksums or [None] * len(volume_paths))]
    handle = engine.encode(volumes, [np.asarray(p, dtype=np.float32) for p in phis], job_id=job_id)
    _handles[handle.key] = handle
    out_dir = Path(volume_paths[0]).parent
    vectors_path = out_dir / f"vectors_{uuid.uuid4().hex}.npy"
    np.save(vectors_path, np.asarray(handle.vectors, dtype=np.float32))
    return {"key": handle.key, "job_id": handle.job_id, "stream_count": handle.stream_count,
            "vectors_path": str(vectors_path), "queue": worker_queue(self.request.hostname)}


@shared_task(name="vision.generate")
def generate(job_id: str, key: str, stream: int, phi: list[float], out_path: str) -> str:
    handle = _handles.get(key)
    if handle is None:
        raise LookupError(f"encoding {key} of job {job_id} is not held by this worker")
    vol = get_engine().generate(handle, stream, np.asarray(phi, dtype=np.float32))
    nib.save(nib.Nifti1Image(np.asarray(vol.array, dtype=np.float32), vol.affine), out_path)
    return out_path


@shared_task(name="vision.release")
def release(job_id: str) -> None:
    get_engine().release(job_id)
    for key in [k for k, h in _handles.items() if getattr(h, "job_id", None) == job_id]:
        _handles.pop(key, None)
