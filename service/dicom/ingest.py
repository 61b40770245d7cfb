"""A DICOM series as a stored volume: read with voxel_ops' hostile-input-safe loader, kept as NIfTI
plus the series' headers, so the analysis reads it like any upload and the results can go back as
DICOM SEG and SR into the same study.

Why NIfTI *and* headers: the job pipeline (sandbox, vision workers) reads volumes from NIfTI
artifacts by reference; the SEG/SR writers need every source instance's header (patient and study
modules, SOP instance UIDs, plane geometry) but never its pixels. So the pixels are stored once, as
the volume, and the headers (pixel data left out, a few kB per slice) in a zip next to it
(``<volume id>.dcmhdr.zip``), in slice order. The uploaded zip itself is not kept.

Privacy: the headers do hold patient attributes (that is what links the results to the patient);
they stay in the tenant's artifact directory and are never logged or put in a message.
"""
from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.storage import ArtifactStore, VolumeRecord
from service.storage.models import DicomSourceRef

log = logging.getLogger(__name__)

HEADERS_SUFFIX = ".dcmhdr.zip"


@dataclass(frozen=True)
class DicomVolume:
    """What reading one series produced: the stored NIfTI and headers, and the metadata for the record."""

    artifact: str  # <vid>.nii.gz
    info: dict[str, Any]  # shape, spacing, orientation, dtype (as service.volumes validates them)
    modality: str | None  # voxagent's sequence mapping (T1, FLAIR, CT, ...)
    date: str | None
    series_description: str | None
    source: DicomSourceRef


def headers_artifact(volume_id: str) -> str:
    return f"{volume_id}{HEADERS_SUFFIX}"


def read_series(artifacts: ArtifactStore, tenant: str, volume_id: str, src: Path,
                series: str | int | None = None) -> DicomVolume:
    """Read one series of ``src`` (a zip, folder or multi-frame file) into the artifacts of ``volume_id``.

    Raises the loader's typed errors (``voxel_ops.DicomError`` and friends, all ``ValueError``); on
    any error nothing is left in the store.
    """
    import voxel_ops as vo
    from voxel_ops.dicom import load_dicom
    from voxel_ops.dicom_out import read_series_datasets

    volume = load_dicom(src, series=series)
    datasets = read_series_datasets(src, series=series)
    artifact = f"{volume_id}.nii.gz"
    final = artifacts.path(tenant, artifact)
    hdr = artifacts.path(tenant, headers_artifact(volume_id))
    try:
        vo.save_volume(volume, final)
        _write_headers(datasets, hdr)
        checked = vo.load_volume(final)  # the stored file is what jobs read: check it as they will
    except BaseException:
        final.unlink(missing_ok=True)
        hdr.unlink(missing_ok=True)
        raise
    first = datasets[0]
    source = DicomSourceRef(study_instance_uid=str(first.StudyInstanceUID),
                            series_instance_uid=str(first.SeriesInstanceUID),
                            dicom_modality=str(getattr(first, "Modality", "") or "") or None,
                            instances=len(datasets), headers=hdr.name)
    info = {"shape": list(checked.shape), "spacing": [round(s, 6) for s in checked.spacing],
            "orientation": "".join(checked.orientation), "dtype": str(checked.array.dtype)}
    meta = volume.meta
    log.info("DICOM series stored as a volume", extra={"volume_id": volume_id, "instances": len(datasets),
                                                       "modality": meta.modality})
    return DicomVolume(artifact=artifact, info=info, modality=meta.modality, date=meta.acquisition_date,
                       series_description=meta.series_description, source=source)


def _write_headers(datasets: list[Any], path: Path) -> None:
    """The headers as Part 10 files in a zip, named by slice order (``00000.dcm``, ...)."""
    tmp = path.with_name(f".{path.name}.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, ds in enumerate(datasets):
            for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                if keyword in ds:
                    delattr(ds, keyword)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            zf.writestr(f"{i:05d}.dcm", buf.getvalue())
    tmp.replace(path)


def load_headers(artifacts: ArtifactStore, record: VolumeRecord) -> list[Any]:
    """The source headers of a volume read from DICOM, in slice order; [] for any other volume."""
    import pydicom

    if record.dicom is None or not artifacts.exists(record.tenant, record.dicom.headers):
        return []
    out = []
    with zipfile.ZipFile(artifacts.path(record.tenant, record.dicom.headers)) as zf:
        for name in sorted(zf.namelist()):
            out.append(pydicom.dcmread(io.BytesIO(zf.read(name))))
    return out


def delete_headers(artifacts: ArtifactStore, record: VolumeRecord) -> None:
    if record.dicom is not None:
        artifacts.delete(record.tenant, record.dicom.headers)


def is_dicom_upload(path: Path) -> bool:
    """A zip archive or a Part 10 file (the DICM marker): what a DICOM upload looks like."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or head[128:132] == b"DICM"
