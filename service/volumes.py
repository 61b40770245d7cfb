"""Turning an uploaded file into a validated, stored volume record."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from api_schemas.volumes import VolumeInfo
from service.errors import ProblemError
from service.memory import BudgetExhausted, mb
from service.state import ServiceState, utcnow
from service.storage import VolumeRecord
from service.uploads import UploadedFile

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def artifact_opener(state: ServiceState, tenant: str):
    """Factory for parse_multipart: each file part streams into a fresh artifact."""

    def open_writer(filename: str):
        name = f"vol_{uuid.uuid4().hex}.upload"
        return name, state.artifacts.writer(tenant, name, state.settings.max_upload_bytes)

    open_writer.discard = lambda name: state.artifacts.delete(tenant, name)  # type: ignore[attr-defined]  # a function attribute
    return open_writer


def _validate(path, max_decoded_bytes: int | None = None, frame: int | None = None) -> dict:
    """The record fields of a readable volume; with ``frame``, that frame of a 4D series replaces the
    file (the stored volume is the 3D frame the analyses read)."""
    from voxel_ops import ReadLimits, load_volume, save_volume

    limits = ReadLimits(max_data_bytes=max_decoded_bytes) if max_decoded_bytes else None
    vol = load_volume(path, limits=limits, frame=frame)
    if frame is not None:
        suffix = ".nii.gz" if Path(path).name.endswith(".gz") else ".nii"  # the stored name's compression
        tmp = Path(path).with_name(f".{Path(path).name}.frame{suffix}")
        save_volume(vol, tmp)
        os.replace(tmp, path)
    return {"shape": list(vol.shape), "spacing": [round(s, 6) for s in vol.spacing],
            "orientation": "".join(vol.orientation), "dtype": str(vol.array.dtype)}


def parse_frame(value: str | None) -> int | None:
    """The ``frame`` form field: a frame index (0-based) of a 4D NIfTI series, or None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise ProblemError(422, f"frame must be a frame index (0, 1, ...) of a 4D NIfTI series, not {value[:20]!r}")
    return int(text)


async def ingest(state: ServiceState, tenant: str, up: UploadedFile, modality: str | None,
                 date: str | None, series: str | None = None, frame: int | None = None) -> VolumeRecord:
    """Check the file with voxel_ops (hostile-input safe) and record it; 422 with its message if unusable.

    A ``.zip`` of a DICOM series (or one multi-frame DICOM file) is read as DICOM
    (:mod:`service.dicom.ingest`); ``series`` chooses among several series (UID or listing index).
    A 4D NIfTI series needs ``frame``: the chosen frame is what is stored (a 422 names the frame count).
    """
    if modality is not None and not (isinstance(modality, str) and 1 <= len(modality) <= 32):
        raise ProblemError(422, "modality must be a string of 1-32 characters")
    if date is not None and not (isinstance(date, str) and _DATE.fullmatch(date)):
        raise ProblemError(422, "date must be an ISO date (YYYY-MM-DD)")
    raw = state.artifacts.path(tenant, up.artifact)
    from service.dicom.ingest import is_dicom_upload

    if is_dicom_upload(raw):
        if frame is not None:
            state.artifacts.delete(tenant, up.artifact)
            raise ProblemError(422, "frame: only a 4D NIfTI series has frames to choose from")
        return await _ingest_dicom(state, tenant, up, modality, date, series)
    if series is not None:
        state.artifacts.delete(tenant, up.artifact)
        raise ProblemError(422, "series: only a DICOM upload (.zip of a series) has series to choose from")
    with open(raw, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    vid = up.artifact.removesuffix(".upload")
    artifact = f"{vid}.nii.gz" if gz else f"{vid}.nii"
    final = state.artifacts.path(tenant, artifact)
    os.replace(raw, final)
    try:
        need, frames = _decoded_bytes(final, state.settings.max_upload_decoded_bytes, up.filename)
        if frames == 1 and frame == 0:
            frame = None  # a 3D image is its own only frame: nothing to choose
        if frames > 1 and frame is None:
            raise ProblemError(422, f"{up.filename}: a 4D series of {frames} frames; choose one with the 'frame' "
                                    f"field (0 to {frames - 1})", title="Unusable volume",
                               type_="https://voxagent.dev/problems/volume", frames=frames,
                               error_class="DimensionError")
        async with _upload_memory(state, need):
            info = await run_in_threadpool(_validate, final, state.settings.max_upload_decoded_bytes, frame)
    except ProblemError:
        final.unlink(missing_ok=True)
        raise
    except ValueError as exc:  # voxel_ops.VolumeError and friends: the message says what is wrong
        final.unlink(missing_ok=True)
        raise ProblemError(422, str(exc).replace(str(final), up.filename).replace(final.name, up.filename),
                           title="Unusable volume", type_="https://voxagent.dev/problems/volume",
                           error_class=type(exc).__name__) from exc
    except Exception as exc:  # noqa: BLE001 - a reader crash on hostile bytes is still the input's fault
        final.unlink(missing_ok=True)
        raise ProblemError(422, f"could not read the volume: {type(exc).__name__}: {exc}",
                           title="Unusable volume", type_="https://voxagent.dev/problems/volume") from exc
    size, digest = up.size, up.sha256
    if frame is not None:  # the stored file is the chosen frame: its checksum is what the analyses verify
        from service.storage.artifacts import sha256_file

        size, digest, info["frame"] = final.stat().st_size, sha256_file(final), frame
    record = _record(vid, tenant, artifact, up.filename, size, digest, modality, date, info)
    state.records.put_record(record)
    return record


async def _ingest_dicom(state: ServiceState, tenant: str, up: UploadedFile, modality: str | None,
                        date: str | None, series: str | None) -> VolumeRecord:
    """A DICOM upload: the series becomes a NIfTI volume plus its headers; the upload itself goes."""
    from service.dicom.ingest import read_series

    raw = state.artifacts.path(tenant, up.artifact)
    vid = up.artifact.removesuffix(".upload")
    chosen: str | int | None = int(series) if series is not None and series.isdigit() else series
    try:
        # a series' pixel memory is known only once its files are parsed: it holds the whole per-upload
        # budget (voxel_ops.DicomLimits bound the read itself)
        async with _upload_memory(state, min(state.settings.max_upload_decoded_bytes,
                                             state.settings.upload_memory_bytes)):
            read = await run_in_threadpool(read_series, state.artifacts, tenant, vid, raw, chosen)
    except ProblemError:
        raise
    except ValueError as exc:  # voxel_ops.DicomError and friends: messages name series, never patients
        raise ProblemError(422, str(exc).replace(raw.name, up.filename), title="Unusable DICOM series",
                           type_="https://voxagent.dev/problems/dicom", error_class=type(exc).__name__) from exc
    except Exception as exc:  # noqa: BLE001 - a reader crash on hostile bytes is still the input's fault
        raise ProblemError(422, f"could not read the DICOM upload: {type(exc).__name__}",
                           title="Unusable DICOM series", type_="https://voxagent.dev/problems/dicom") from exc
    finally:
        state.artifacts.delete(tenant, up.artifact)
    record = _record(vid, tenant, read.artifact, up.filename, up.size, up.sha256, modality or read.modality,
                     date or read.date, read.info, series_description=read.series_description, dicom=read.source)
    state.records.put_record(record)
    return record


def _decoded_bytes(path: Path, budget: int, filename: str) -> tuple[int, int]:
    """What validating ``path`` will allocate, from its header only, and its frame count (4D); a 413
    past the per-upload budget.

    Header problems are left to the reader (it reports them with the same words, as a 422)."""
    from voxel_ops import VolumeError, probe_volume

    try:
        probe = probe_volume(path)
    except VolumeError:
        return budget, 1  # the read refuses it at once; reserve as if it were as large as allowed
    if probe.peak_bytes > budget:
        shape = "x".join(str(n) for n in probe.shape)
        raise ProblemError(413, f"{filename}: a {shape} {probe.dtype} image decompresses to "
                                f"{mb(probe.peak_bytes)} in memory, more than the {mb(budget)} allowed per upload",
                           title="Volume too large", type_="https://voxagent.dev/problems/too-large",
                           decoded_bytes=probe.peak_bytes, limit_bytes=budget)
    extra = probe.shape[3:]
    return probe.peak_bytes, (extra[0] if extra and all(n == 1 for n in extra[1:]) else 1)


@asynccontextmanager
async def _upload_memory(state: ServiceState, need: int) -> AsyncIterator[None]:
    """Hold ``need`` bytes of the shared validation budget while the read runs (503 if it stays busy)."""
    s = state.settings
    try:
        async with state.upload_budget.areserve(min(need, state.upload_budget.capacity), s.upload_memory_wait_s):
            yield
    except BudgetExhausted as exc:
        raise ProblemError(503, "the service is validating other uploads and has no memory free for this one; "
                                "retry later", headers={"Retry-After": str(s.retry_after_s)},
                           type_="https://voxagent.dev/problems/busy") from exc


def _record(vid, tenant, artifact, filename, size, sha256, modality, date, info, **dicom) -> VolumeRecord:
    created, ts = utcnow()
    return VolumeRecord(id=vid, tenant=tenant, artifact=artifact, filename=filename[:255], size_bytes=size,
                        sha256=sha256, modality=modality, date=date, created_at=created, created_at_ts=ts, **info,
                        **dicom)


def validate_file(records, artifacts, tenant: str, path: Path, modality: str | None = None,
                  date: str | None = None) -> VolumeRecord:
    """Copy a local file in and validate it (CLI path); raises ValueError with voxel_ops' message."""
    vid = f"vol_{uuid.uuid4().hex}"
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    artifact = f"{vid}.nii.gz" if gz else f"{vid}.nii"
    final, digest = artifacts.put_file(tenant, artifact, path)
    try:
        info = _validate(final)  # the CLI's own file: the reader's limits, no service budget
    except Exception:
        final.unlink(missing_ok=True)
        raise
    record = _record(vid, tenant, artifact, path.name, final.stat().st_size, digest, modality, date, info)
    records.put_record(record)
    return record


def to_model(record: VolumeRecord) -> VolumeInfo:
    return VolumeInfo.model_validate(record.model_dump(include=set(VolumeInfo.model_fields)))
