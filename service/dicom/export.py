"""A finished job's results as DICOM files in the artifact store: built once, then served and pushed.

The API downloads (``/v1/analyses/{id}/dicom/seg|sr``) and the routing push both call
:func:`job_dicom`. The objects' UIDs derive from the job id and the scan (``uid_seed``), so a second
build (another process, a lost cache file) produces the same instances and a PACS that receives
them twice stores them once.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from api_schemas.jobs import JobStatus
from api_schemas.results import AnalysisResult
from service.storage import ArtifactRecord, ArtifactStore, JobRecord, RecordStore, VolumeRecord

log = logging.getLogger(__name__)
_build_lock = threading.Lock()  # one build at a time per process: they are short, and the files shared


class DicomExportError(Exception):
    """Why a job has no DICOM results; ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class JobDicom:
    sr: Path
    seg: Path | None  # None when the analysis output no mask on the DICOM scan
    scan: str


def dicom_scans(records: RecordStore, job: JobRecord) -> dict[str, VolumeRecord]:
    """Scan name -> volume record, for the job's scans that were read from DICOM."""
    out: dict[str, VolumeRecord] = {}
    for ref, name in zip(job.volumes, job.scan_names):
        record = records.get_record(VolumeRecord, str(ref.get("id")), job.tenant)
        if record is not None and record.dicom is not None:
            out[name] = record
    return out


def job_dicom(records: RecordStore, artifacts: ArtifactStore, job: JobRecord, scan: str | None = None) -> JobDicom:
    """The SEG (if any mask) and SR of a finished job, in the study of its DICOM scan ``scan``
    (may be omitted when the job has exactly one DICOM scan). Raises :class:`DicomExportError`."""
    if job.status not in (JobStatus.succeeded, JobStatus.failed) or job.result is None:
        raise DicomExportError(409, f"analysis {job.id} is {job.status.value}; DICOM results exist once it "
                                    "has finished")
    scans = dicom_scans(records, job)
    if not scans:
        raise DicomExportError(409, "no scan of this analysis was read from DICOM, so there is no study to "
                                    "write SEG and SR into (upload the series as a DICOM .zip)")
    if scan is None:
        if len(scans) > 1:
            raise DicomExportError(422, f"the analysis has {len(scans)} DICOM scans; choose one with "
                                        f"?scan= ({', '.join(sorted(scans))})")
        scan = next(iter(scans))
    if scan not in scans:
        raise DicomExportError(404, f"analysis {job.id} has no DICOM scan named {scan!r}")
    index = job.scan_names.index(scan)
    base = f"{job.id}_dicom{index}"
    sr_name, seg_name = f"{base}_sr.dcm", f"{base}_seg.dcm"
    with _build_lock:
        if not artifacts.exists(job.tenant, sr_name):
            _build(records, artifacts, job, scan, scans[scan], seg_name, sr_name)
    seg = artifacts.path(job.tenant, seg_name) if artifacts.exists(job.tenant, seg_name) else None
    return JobDicom(sr=artifacts.path(job.tenant, sr_name), seg=seg, scan=scan)


def _build(records: RecordStore, artifacts: ArtifactStore, job: JobRecord, scan: str, volume: VolumeRecord,
           seg_name: str, sr_name: str) -> None:
    import voxel_ops as vo
    from service.dicom.ingest import load_headers
    from service.dicom.results import DicomOutputError, build_dicom_results

    headers = load_headers(artifacts, volume)
    if not headers:
        raise DicomExportError(409, f"the DICOM headers of scan {scan!r} are no longer stored (volume deleted?)")
    result = AnalysisResult.model_validate(job.result)
    only = len(job.scan_names) == 1
    masks = {}
    for out in result.outputs:
        if out.kind != "mask" or not out.path or (out.source or (scan if only else None)) != scan:
            continue
        record = records.get_record(ArtifactRecord, out.path, job.tenant)
        if record is None or not artifacts.exists(job.tenant, out.path):
            continue
        masks[out.name] = vo.load_volume(artifacts.path(job.tenant, out.path))
    try:
        built = build_dicom_results(result, masks, headers, uid_seed=f"{job.id}/{scan}")
    except (DicomOutputError, vo.VolumeError) as exc:
        raise DicomExportError(422, f"the results cannot be written as DICOM: {exc}") from None
    if built.segmentation is not None:
        _save(built.segmentation, artifacts.path(job.tenant, seg_name))
    _save(built.report, artifacts.path(job.tenant, sr_name))  # last: its presence marks a complete build
    log.info("DICOM results stored", extra={"job_id": job.id, "segments": len(built.segment_numbers)})


def _save(ds, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.part")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
