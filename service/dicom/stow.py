"""DICOMweb STOW-RS in: a multipart/related body of DICOM instances becomes one stored volume per series.

Parsing: ``python_multipart``'s streaming parser (the one the form uploads use), each part written
straight to a staging file under the tenant's artifacts, the request's total size bounded by
``max_upload_bytes`` while it streams, the number of parts by :data:`MAX_INSTANCES`. Nothing is
held whole in memory.

Storing: instances are grouped by study and series (headers read with ``specific_tags``: the UIDs
only, so patient attributes are not even decoded here), and each series goes through
:func:`service.dicom.ingest.read_series`, the same checked reader as a ``.zip`` upload. A series that
cannot be read (missing slices, an SR, a SEG, a compressed syntax without decoder) fails as a whole:
its instances are listed in the response's FailedSOPSequence and its error is kept on the study
record; the other series are stored. Every study gets a :class:`~service.storage.models.StudyRecord`.

Response (PS3.18 10.5.3): ``application/dicom+json`` with ReferencedSOPSequence (RetrieveURL = the
stored volume, since voxagent keeps volumes, not instances) and FailedSOPSequence with a
FailureReason; 200 when everything was stored, 202 when some failed, 409 when none was stored.
"""
from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import ProblemError
from service.state import ServiceState, utcnow
from service.storage import ArtifactWriter, UploadTooLarge, VolumeRecord
from service.storage.models import StudyRecord

log = logging.getLogger(__name__)

MAX_INSTANCES = 10_000
DICOM_JSON = "application/dicom+json"

# FailureReason (0008,1197) values of PS3.18 / PS3.4 used here
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
STUDY_MISMATCH = 0xA900  # the data set does not match the study of the request URI
CANNOT_UNDERSTAND = 0xC000


@dataclass
class Instance:
    path: Path
    sop_class: str = ""
    sop_instance: str = ""
    study: str = ""
    series: str = ""


@dataclass
class SeriesOutcome:
    series_instance_uid: str
    instances: int
    volume_id: str | None = None
    modality: str | None = None  # voxagent's mapping (T1, FLAIR, CT, ...)
    dicom_modality: str | None = None
    series_description: str | None = None
    error: str | None = None
    failure_reason: int | None = None  # FailureReason for the series' instances when it was not stored

    def dump(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class StowOutcome:
    studies: list[StudyRecord] = field(default_factory=list)
    stored: list[tuple[Instance, str]] = field(default_factory=list)  # (instance, volume id)
    failed: list[tuple[Instance, int]] = field(default_factory=list)  # (instance, FailureReason)


async def receive(state: ServiceState, tenant: str, content_type: str, body: AsyncIterator[bytes]) -> Path:
    """Stream a multipart/related body into a fresh staging folder, one file per part; returns the folder."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/related" or b"boundary" not in params:
        raise ProblemError(415, 'STOW-RS expects multipart/related; type="application/dicom" with a boundary')
    declared = params.get(b"type", b"application/dicom").lower()
    if declared != b"application/dicom":
        raise ProblemError(415, f"only application/dicom parts are accepted, not {declared.decode('latin-1')!r}")
    staging = state.artifacts.job_dir(tenant, f"stow_{uuid.uuid4().hex}")
    limit = state.settings.max_upload_bytes
    st: dict[str, Any] = {"headers": {}, "hname": b"", "hvalue": b"", "writer": None, "parts": 0, "total": 0}

    def on_part_begin() -> None:
        st.update(headers={}, writer=None)
        st["parts"] += 1
        if st["parts"] > MAX_INSTANCES:
            raise ProblemError(413, f"too many instances in one request (max {MAX_INSTANCES})")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st["hvalue"] += data[start:end]

    def on_header_end() -> None:
        st["headers"][st["hname"].decode("latin-1").lower()] = st["hvalue"]
        st["hname"], st["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        part_type, _ = parse_options_header(st["headers"].get("content-type", b"application/dicom"))
        if part_type.lower() != b"application/dicom":
            raise ProblemError(415, f"part {st['parts']} is {part_type.decode('latin-1')!r}; only "
                                    "application/dicom instances are accepted")
        st["writer"] = ArtifactWriter(staging / f"{st['parts']:05d}.dcm", limit)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        st["total"] += end - start
        if st["total"] > limit:
            raise UploadTooLarge(limit)
        st["writer"].write(data[start:end])

    def on_part_end() -> None:
        if st["writer"] is not None:
            st["writer"].commit()
            st["writer"] = None

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
        if st["writer"] is not None:
            raise ProblemError(400, "malformed multipart body: truncated part")
        if st["parts"] == 0:
            raise ProblemError(400, "the request holds no DICOM instance")
    except UploadTooLarge as exc:
        _abort(st, staging)
        raise ProblemError(413, str(exc), title="Upload too large") from exc
    except ProblemError:
        _abort(st, staging)
        raise
    except Exception as exc:  # malformed multipart framing
        _abort(st, staging)
        raise ProblemError(400, f"malformed multipart body: {type(exc).__name__}") from exc
    return staging


def _abort(st: dict[str, Any], staging: Path) -> None:
    if st.get("writer") is not None:
        st["writer"].abort()
    shutil.rmtree(staging, ignore_errors=True)


def store(state: ServiceState, tenant: str, staging: Path, study: str | None) -> StowOutcome:
    """Group the staged instances into series, store each series as a volume, record each study.

    Blocking (DICOM reading): run in a thread. The staging folder is removed in all cases.
    """
    try:
        return _store(state, tenant, staging, study)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _store(state: ServiceState, tenant: str, staging: Path, study: str | None) -> StowOutcome:
    out = StowOutcome()
    by_series: dict[tuple[str, str], list[Instance]] = {}
    for path in sorted(staging.glob("*.dcm")):
        inst = _identify(path)
        if inst is None:
            out.failed.append((Instance(path), CANNOT_UNDERSTAND))
        elif study is not None and inst.study != study:
            out.failed.append((inst, STUDY_MISMATCH))
        else:
            by_series.setdefault((inst.study, inst.series), []).append(inst)
    outcomes: dict[str, list[SeriesOutcome]] = {}
    for (study_uid, series_uid), instances in by_series.items():
        outcome = _store_series(state, tenant, staging, series_uid, instances)
        outcomes.setdefault(study_uid, []).append(outcome)
        if outcome.volume_id is not None:
            out.stored.extend((i, outcome.volume_id) for i in instances)
        else:
            out.failed.extend((i, outcome.failure_reason or PROCESSING_FAILURE) for i in instances)
    for study_uid, series in outcomes.items():
        created, ts = utcnow()
        record = StudyRecord(id=f"stu_{uuid.uuid4().hex}", tenant=tenant, created_at=created, created_at_ts=ts,
                             study_instance_uid=study_uid, series=[s.dump() for s in series],
                             status="stored" if any(s.volume_id for s in series) else "rejected")
        state.records.put_record(record)
        out.studies.append(record)
    log.info("STOW-RS request stored", extra={"studies": len(out.studies), "stored": len(out.stored),
                                              "failed": len(out.failed)})
    return out


def _identify(path: Path) -> Instance | None:
    """The instance's UIDs, or None when the part is not a readable DICOM Part 10 file."""
    import pydicom

    tags = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        inst = Instance(path, str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                        str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))
    except Exception:  # noqa: BLE001 - pydicom raises many types for garbage bytes
        return None
    if not (inst.sop_instance and inst.study and inst.series):
        return None
    return inst


def _store_series(state: ServiceState, tenant: str, staging: Path, series_uid: str,
                  instances: list[Instance]) -> SeriesOutcome:
    from service.dicom.ingest import read_series
    from service.storage.artifacts import sha256_file
    from service.volumes import _record
    from voxel_ops.errors import NonImageDicomError, UnsupportedTransferSyntaxError

    folder = staging / f"series_{uuid.uuid4().hex}"
    folder.mkdir()
    for inst in instances:
        inst.path = inst.path.rename(folder / inst.path.name)
    vid = f"vol_{uuid.uuid4().hex}"
    outcome = SeriesOutcome(series_instance_uid=series_uid, instances=len(instances))
    try:
        read = read_series(state.artifacts, tenant, vid, folder)
    except ValueError as exc:  # the loader's typed refusals: they name the series, never the patient
        outcome.error = f"{type(exc).__name__}: {exc}".replace(folder.name, "STOW-RS series")[:500]
        outcome.failure_reason = (SOP_CLASS_NOT_SUPPORTED if isinstance(exc, NonImageDicomError) else
                                  TRANSFER_SYNTAX_NOT_SUPPORTED if isinstance(exc, UnsupportedTransferSyntaxError)
                                  else PROCESSING_FAILURE)
        log.info("STOW-RS series not stored: %s", type(exc).__name__)
        return outcome
    except Exception as exc:  # noqa: BLE001 - a reader crash on hostile bytes fails this series only
        outcome.error = f"could not read the series ({type(exc).__name__})"
        outcome.failure_reason = CANNOT_UNDERSTAND
        log.warning("STOW-RS series unreadable", exc_info=True)
        return outcome
    size = sum(p.stat().st_size for p in folder.iterdir())

    record: VolumeRecord = _record(vid, tenant, read.artifact, f"dicom series {series_uid}", size,
                                   sha256_file(state.artifacts.path(tenant, read.artifact)), read.modality,
                                   read.date, read.info, series_description=read.series_description,
                                   dicom=read.source)
    state.records.put_record(record)
    outcome.volume_id, outcome.modality = vid, read.modality
    outcome.dicom_modality, outcome.series_description = read.source.dicom_modality, read.series_description
    return outcome


def response_body(outcome: StowOutcome, base_url: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DICOM JSON) of a STOW-RS response."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    if len(outcome.studies) == 1:
        ds.RetrieveURL = f"{base_url}/v1/studies/{outcome.studies[0].id}"
    if outcome.stored:
        items = []
        for inst, vid in outcome.stored:
            item = Dataset()
            item.ReferencedSOPClassUID = inst.sop_class
            item.ReferencedSOPInstanceUID = inst.sop_instance
            item.RetrieveURL = f"{base_url}/v1/volumes/{vid}"
            items.append(item)
        ds.ReferencedSOPSequence = items
    if outcome.failed:
        items = []
        for inst, reason in outcome.failed:
            item = Dataset()
            item.ReferencedSOPClassUID = inst.sop_class
            item.ReferencedSOPInstanceUID = inst.sop_instance
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    status = 200 if not outcome.failed else (202 if outcome.stored else 409)
    return status, ds.to_json_dict()
