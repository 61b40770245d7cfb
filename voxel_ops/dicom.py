"""DICOM series in: a folder or ``.zip`` of DICOM files becomes one :class:`Volume`, with dcm2niix geometry.

What the reader does (the contract other packages rely on):

* **Sources.** A directory (walked recursively, links not followed), a ``.zip`` (checked from its
  central directory before any member is read: file count, every declared uncompressed size and
  their sum, no absolute or ``..`` member names, no links, no encryption; members are read into
  memory through the declared sizes, never extracted to disk), or a single DICOM file (one
  multi-frame object). Files that are not DICOM (README, ``.DS_Store``, DICOMDIR) are skipped.
* **Series.** Files are grouped by SeriesInstanceUID. :func:`list_dicom_series` summarises each
  (no patient attributes); :func:`load_dicom` reads the one image series there is, or the one
  chosen by UID or index, and refuses to guess among several (:class:`MixedSeriesError`).
* **Geometry** (as dcm2niix / dicom2nifti): slices sorted by ImagePositionPatient projected on the
  normal of ImageOrientationPatient; array axes (column, row, slice) like the NIfTI those tools
  write; PixelSpacing read as (row spacing, column spacing); the slice step taken from the positions
  (never SliceThickness, except for a single slice); gaps, duplicates, mixed orientations and uneven
  spacing refused; LPS patient coordinates turned into the RAS world of the rest of voxagent
  (``diag(-1, -1, 1) @ lps``); oblique and gantry-tilted series keep their exact (possibly sheared)
  affine. Enhanced multi-frame objects read their per-frame / shared functional groups.
* **Values.** RescaleSlope/RescaleIntercept applied per slice (integers kept when the scaling is
  integral, float32 otherwise). Compressed pixel data is decoded by pydicom's decoders; a missing
  decoder is refused with the ``pip install`` line that provides it.
* **Metadata.** :class:`VolumeMeta` gets the modality (MR sequences mapped to T1, T1C, T2, FLAIR,
  DWI, ADC, SWI from SeriesDescription / ProtocolName / SequenceName / ScanningSequence; CT -> CT),
  the acquisition date (ISO), the series description and ``source_name`` = SeriesInstanceUID.

Privacy: headers are parsed with ``specific_tags`` (only the attributes named below), so patient
attributes are never even decoded; messages and logs name series and slices, never patients or files.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from struct import error as struct_error
from typing import Any, BinaryIO

import numpy as np

from voxel_ops.errors import (
    ArchiveLimitError,
    DicomError,
    DicomHeaderError,
    DuplicateSliceError,
    InconsistentGeometryError,
    MissingDecoderError,
    MissingSliceError,
    MixedSeriesError,
    NoDicomFilesError,
    NonImageDicomError,
    SeriesNotFoundError,
    SizeLimitError,
    UnsafeArchiveError,
    UnsupportedDicomError,
    UnsupportedTransferSyntaxError,
    VolumeFileNotFoundError,
)
from voxel_ops.io import NonFinitePolicy, ReadLimits, check_affine, load_volume
from voxel_ops.volume import Volume, VolumeMeta

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DicomLimits:
    """Bounds on what one folder or archive may make the reader open and allocate."""

    max_files: int = 10_000  # files (zip members) considered
    max_total_bytes: int = 2 * 1024**3  # sum of file sizes (declared uncompressed sizes in a zip)
    max_file_bytes: int = 512 * 1024**2  # any one file / member
    max_depth: int = 16  # folder nesting
    voxels: ReadLimits = field(default_factory=ReadLimits)  # same volume limits as NIfTI reading
    orientation_tol: float = 1e-3  # direction cosines that differ by more are "another orientation"
    spacing_rtol: float = 0.01  # relative tolerance on pixel spacing and on slice steps
    spacing_atol_mm: float = 0.01  # absolute floor of the slice-step tolerance


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a folder/archive as :func:`list_dicom_series` reports it (no patient attributes)."""

    index: int  # position in the listing (sorted by SeriesNumber, then UID); usable as ``series=``
    series_instance_uid: str
    modality: str | None  # the DICOM Modality attribute: "MR", "CT", "SR", "SEG", ...
    sequence: str | None  # voxagent's mapping: "T1", "T1C", "T2", "FLAIR", "DWI", "ADC", "SWI", "CT", ...
    series_number: int | None
    series_description: str | None
    acquisition_date: str | None  # ISO 8601
    files: int
    frames: int  # 2D images (slices) in the series, frames of multi-frame objects included
    rows: int | None
    columns: int | None
    is_image: bool  # False for SR, SEG, RTSTRUCT, presentation states and other objects without pixels

    def describe(self) -> str:
        parts = [f"#{self.index}", f"SeriesNumber {self.series_number}" if self.series_number is not None else "",
                 self.modality or "?", self.sequence if self.sequence and self.sequence != self.modality else "",
                 repr(_clip(self.series_description)) if self.series_description else "",
                 f"{self.frames} image(s)" if self.is_image else "no image", f"UID {self.series_instance_uid}"]
        return " ".join(p for p in parts if p)


# --------------------------------------------------------------------------- public functions


def is_dicom_source(path: str | os.PathLike[str]) -> bool:
    """True for what :func:`load_dicom` reads: a directory, a zip archive, or a file with the DICM marker."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06" or head[128:132] == b"DICM"


def load_scan(
    path: str | os.PathLike[str],
    *,
    meta: VolumeMeta | None = None,
    series: str | int | None = None,
    limits: ReadLimits | None = None,
    nonfinite: NonFinitePolicy = "refuse",
) -> Volume:
    """Read a scan whatever its form: a NIfTI file, or a DICOM folder, ``.zip`` or multi-frame file.

    ``meta`` fields that are set win over what the DICOM headers say (a user's ``--modality``).
    """
    if is_dicom_source(path):
        dlimits = DicomLimits(voxels=limits) if limits is not None else None
        return load_dicom(path, series=series, limits=dlimits, meta=meta, nonfinite=nonfinite)
    if series is not None:
        raise DicomError(f"{Path(path).name}: a series was chosen but this is not a DICOM folder or archive")
    return load_volume(path, limits=limits, nonfinite=nonfinite, meta=meta)


def list_dicom_series(path: str | os.PathLike[str], *, limits: DicomLimits | None = None) -> list[SeriesSummary]:
    """Every series in a DICOM folder, ``.zip`` or file, summarised; headers only, no pixel data read."""
    limits = limits or DicomLimits()
    with warnings.catch_warnings(), _open_source(Path(path), limits) as source:
        warnings.simplefilter("ignore")  # pydicom warns (quoting values) on malformed attributes
        groups = _scan_headers(source, limits)
        return [_summarise(i, g) for i, g in enumerate(groups)]


def load_dicom(
    path: str | os.PathLike[str],
    *,
    series: str | int | None = None,
    limits: DicomLimits | None = None,
    meta: VolumeMeta | None = None,
    nonfinite: NonFinitePolicy = "refuse",
) -> Volume:
    """Read one DICOM series into a RAS-world :class:`Volume` (see the module docstring).

    ``series``: a SeriesInstanceUID or an index of :func:`list_dicom_series`; needed only when the
    source holds more than one image series.
    """
    if nonfinite not in ("refuse", "zero"):
        raise ValueError(f"nonfinite must be 'refuse' or 'zero', got {nonfinite!r}")
    limits = limits or DicomLimits()
    with warnings.catch_warnings(), _open_source(Path(path), limits) as source:
        warnings.simplefilter("ignore")  # pydicom warns (quoting values) on malformed attributes
        groups = _scan_headers(source, limits)
        group = _choose(groups, series, source.label)
        volume = _assemble(group, source, limits, nonfinite)
    if meta is not None:
        volume.meta = replace(volume.meta, **{k: v for k, v in vars(meta).items() if v is not None})
    return volume


# --------------------------------------------------------------------------- sources


# only these attributes are ever parsed from a header (patient attributes are not among them)
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "ProtocolName", "SequenceName", "ScanningSequence", "SequenceVariant", "ScanOptions", "ImageType",
    "ContrastBolusAgent", "InversionTime", "EchoTime", "RepetitionTime", "DiffusionBValue",
    "AcquisitionDate", "SeriesDate", "ContentDate", "StudyDate", "AcquisitionDateTime",
    "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel",
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PlanarConfiguration", "RescaleSlope", "RescaleIntercept", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "MRAcquisitionType", "PulseSequenceName",
]
_PIXEL_TAGS = _HEADER_TAGS + ["PixelData", "FloatPixelData", "DoubleFloatPixelData"]

# 2D modalities: pixels without a 3D place in the patient (projection, photographic, microscopy)
_PLANAR_MODALITIES = {"CR": "a projection radiograph (CR)", "DX": "a projection radiograph (DX)",
                      "MG": "a mammogram (MG)", "XA": "an angiography run (XA)", "RF": "a fluoroscopy run (RF)",
                      "IO": "an intra-oral radiograph (IO)", "PX": "a panoramic radiograph (PX)",
                      "XC": "a photograph (XC)", "ES": "an endoscopy image (ES)", "OP": "a fundus photograph (OP)",
                      "SM": "a slide microscopy image (SM)", "GM": "a microscopy image (GM)",
                      "US": "an ultrasound image (US)", "OT": "a secondary capture (OT)"}
_NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "REG", "DOC", "FID",
                         "PLAN", "RWV", "ECG", "HD", "AU"}


@dataclass
class _Source:
    label: str  # what messages call the source: the folder / archive name given by the user
    files: list[tuple[str, Callable[[], BinaryIO]]]
    close: Callable[[], None] = lambda: None

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_source(path: Path, limits: DicomLimits) -> _Source:
    label = path.name or str(path)
    try:
        if path.is_dir():
            return _Source(label, list(_walk_folder(path, label, limits)))
        if not path.is_file():
            raise VolumeFileNotFoundError(f"{label}: no such file or folder")
        size = path.stat().st_size
    except OSError as exc:
        raise VolumeFileNotFoundError(f"{label}: cannot be read ({exc.strerror})") from None
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        return _open_zip(path, label, limits)
    if size > limits.max_file_bytes:
        raise ArchiveLimitError(f"{label}: file is {size / 1e6:.0f} MB, more than the "
                                f"{limits.max_file_bytes / 1e6:.0f} MB allowed for one DICOM file")
    return _Source(label, [(label, lambda: open(path, "rb"))])


def _walk_folder(root: Path, label: str, limits: DicomLimits) -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
    count, total = 0, 0
    stack: list[tuple[Path, int]] = [(root, 0)]
    found: list[tuple[str, Callable[[], BinaryIO]]] = []
    while stack:
        folder, depth = stack.pop()
        if depth > limits.max_depth:
            raise ArchiveLimitError(f"{label}: folders nested more than {limits.max_depth} deep")
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_symlink():
                    continue  # never follow links out of the folder the user named
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), depth + 1))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                size = entry.stat(follow_symlinks=False).st_size
                count += 1
                total += size
                if count > limits.max_files:
                    raise ArchiveLimitError(f"{label}: more than {limits.max_files:,} files; "
                                            "give the folder of one study or series")
                if size > limits.max_file_bytes:
                    raise ArchiveLimitError(f"{label}: a file of {size / 1e6:.0f} MB, more than the "
                                            f"{limits.max_file_bytes / 1e6:.0f} MB allowed for one DICOM file")
                if total > limits.max_total_bytes:
                    raise ArchiveLimitError(f"{label}: more than {limits.max_total_bytes / 1e9:.1f} GB of files")
                file_path = Path(entry.path)
                found.append((str(file_path.relative_to(root)), _file_opener(file_path)))
    return iter(found)


def _file_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def _zip_directory_size(path: Path, label: str) -> tuple[int, int] | None:
    """(entries, central directory bytes) from the end record, read before zipfile parses any entry."""
    end_record = getattr(zipfile, "_EndRecData", None)  # handles zip64; private but stable since Python 2
    if end_record is None:
        return None
    try:
        with open(path, "rb") as fh:
            rec = end_record(fh)
    except (OSError, struct_error, ValueError) as exc:
        raise UnsafeArchiveError(f"{label}: not a readable zip archive ({type(exc).__name__})") from None
    if not rec:
        raise UnsafeArchiveError(f"{label}: not a readable zip archive (no end of central directory)")
    return int(rec[zipfile._ECD_ENTRIES_TOTAL]), int(rec[zipfile._ECD_SIZE])  # type: ignore[attr-defined]  # private constants


def _open_zip(path: Path, label: str, limits: DicomLimits) -> _Source:
    # a crafted directory of millions of entries would cost gigabytes as ZipInfo objects: count them first
    sizes = _zip_directory_size(path, label)
    if sizes is not None:
        entries, directory_bytes = sizes
        if entries > 2 * limits.max_files or directory_bytes > 2 * limits.max_files * (46 + 1024):
            raise ArchiveLimitError(f"{label}: the archive lists {entries:,} entries, more than the "
                                    f"{limits.max_files:,} files allowed; zip one study or series")
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, NotImplementedError, struct/zlib errors on garbage
        raise UnsafeArchiveError(f"{label}: not a readable zip archive ({type(exc).__name__})") from None
    try:
        members = _check_zip(zf, label, limits)
    except BaseException:
        zf.close()
        raise

    def opener(info: zipfile.ZipInfo) -> Callable[[], BinaryIO]:
        def read() -> BinaryIO:
            try:
                with zf.open(info) as member:
                    data = member.read(info.file_size + 1)  # the declared size bounds the read
            except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib/bz2/lzma errors, bad CRC, EOF
                raise UnsafeArchiveError(f"{label}: a member of the archive is corrupt ({type(exc).__name__}); "
                                         "re-create the zip") from None
            if len(data) != info.file_size:
                raise UnsafeArchiveError(f"{label}: a member holds more or fewer bytes than its header "
                                         "declares; re-create the zip")
            return io.BytesIO(data)
        return read

    return _Source(label, [(m.filename, opener(m)) for m in members], close=zf.close)


def _check_zip(zf: zipfile.ZipFile, label: str, limits: DicomLimits) -> list[zipfile.ZipInfo]:
    members: list[zipfile.ZipInfo] = []
    total = 0
    infos = zf.infolist()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name):
            raise UnsafeArchiveError(f"{label}: the archive has a member whose path leaves the archive "
                                     "(absolute or '..'); refusing it")
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{label}: the archive holds a symbolic link; zip the files themselves")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"{label}: the archive is encrypted; send an unencrypted zip")
        if info.is_dir():
            continue
        if len(members) >= limits.max_files:
            raise ArchiveLimitError(f"{label}: the archive holds more than {limits.max_files:,} files; "
                                    "zip one study or series")
        if info.file_size > limits.max_file_bytes:
            raise ArchiveLimitError(f"{label}: a member expands to {info.file_size / 1e6:.0f} MB, more than the "
                                    f"{limits.max_file_bytes / 1e6:.0f} MB allowed for one DICOM file")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveLimitError(f"{label}: the archive expands to more than "
                                    f"{limits.max_total_bytes / 1e9:.1f} GB; zip one study or series")
        members.append(info)
    return members


# --------------------------------------------------------------------------- headers and series


@dataclass
class _Frame:
    """One 2D image: a single-frame file, or one frame of a multi-frame object."""

    file: int  # index into the source's files
    frame: int | None  # frame index inside a multi-frame object
    instance: int | None
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient (6 cosines)
    pixel_spacing: np.ndarray | None  # (row spacing, column spacing) mm
    slope: float
    intercept: float
    thickness: float | None
    between: float | None  # SpacingBetweenSlices


@dataclass
class _Group:
    uid: str
    headers: list[Any] = field(default_factory=list)  # one pydicom Dataset per file (header only)
    files: list[int] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    is_image: bool = True


def _dcmread(fh: BinaryIO, tags: list[str], stop_before_pixels: bool) -> Any:
    """Parse only ``tags``, every value converted now (pydicom converts lazily, and raises late, on garbage).

    Raises :class:`_NotDicom` for a file without the DICM marker that does not parse (skipped as "other
    file") and :class:`DicomHeaderError` for a file with the marker whose header is corrupt.
    """
    import pydicom

    head = fh.read(132)
    fh.seek(0)
    marked = head[128:132] == b"DICM"
    if not marked and head[:2] != b"\x08\x00":  # no preamble: accept only a stream that starts at group 0008
        raise _NotDicom()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's value warnings may quote header values
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels, specific_tags=tags, force=not marked)
            for _elem in ds.iterall():  # converts every kept element, sequences included
                pass
            for _elem in getattr(ds, "file_meta", None) or ():
                pass
            return ds
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage bytes
            if not marked:
                raise _NotDicom() from exc
            raise DicomHeaderError(f"a DICOM file with a corrupt header ({type(exc).__name__}); remove it "
                                   "or export the series again") from None


class _NotDicom(Exception):
    pass


def _scan_headers(source: _Source, limits: DicomLimits) -> list[_Group]:
    groups: dict[str, _Group] = {}
    skipped = 0
    for index, (_name, opener) in enumerate(source.files):
        try:
            with opener() as fh:
                ds = _dcmread(fh, _HEADER_TAGS, stop_before_pixels=True)
        except _NotDicom:
            skipped += 1
            continue
        except DicomHeaderError as exc:
            raise DicomHeaderError(f"{source.label}: {exc}") from None
        except OSError as exc:
            raise DicomError(f"{source.label}: a file cannot be read ({exc.strerror})") from None
        sop_class = str(getattr(ds, "SOPClassUID", None)
                        or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) or "")
        if sop_class == "1.2.840.10008.1.3.10":  # Media Storage Directory (DICOMDIR)
            skipped += 1
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        group = groups.setdefault(uid, _Group(uid))
        group.headers.append(ds)
        group.files.append(index)
    if skipped:
        log.debug("%s: %d non-DICOM file(s) skipped", source.label, skipped)
    if not groups:
        what = f"{len(source.files)} file(s), none of them DICOM" if source.files else "no files"
        raise NoDicomFilesError(f"{source.label}: {what}; give a folder or .zip of DICOM files (.dcm) of one series")
    out = []
    for group in groups.values():
        group.is_image = all(_is_image(ds) for ds in group.headers)
        if group.is_image:
            for ds, file_index in zip(group.headers, group.files, strict=True):
                try:
                    group.frames.extend(_frames_of(ds, file_index))
                except DicomError as exc:
                    raise type(exc)(f"{source.label}: series {_series_name(group)}: {exc}") from None
        out.append(group)
    out.sort(key=lambda g: (_int(getattr(g.headers[0], "SeriesNumber", None)) is None,
                            _int(getattr(g.headers[0], "SeriesNumber", None)) or 0, g.uid))
    return out


def _is_image(ds: Any) -> bool:
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if modality in _NON_IMAGE_MODALITIES:
        return False
    return bool(getattr(ds, "Rows", None)) and bool(getattr(ds, "Columns", None))


def _choose(groups: list[_Group], series: str | int | None, label: str) -> _Group:
    summaries = [_summarise(i, g) for i, g in enumerate(groups)]
    if series is not None:
        if isinstance(series, int) and not isinstance(series, bool):
            if not 0 <= series < len(groups):
                raise SeriesNotFoundError(f"{label}: series index {series} requested but there are "
                                          f"{len(groups)} series (0..{len(groups) - 1}): {_listing(summaries)}")
            chosen = groups[series]
        else:
            matches = [g for g in groups if g.uid == str(series)]
            if not matches:
                raise SeriesNotFoundError(f"{label}: no series with SeriesInstanceUID {str(series)!r}; "
                                          f"the series are: {_listing(summaries)}")
            chosen = matches[0]
        if not chosen.is_image:
            raise _non_image_error(chosen, label)
        return chosen
    images = [g for g in groups if g.is_image]
    if not images:
        raise _non_image_error(groups[0], label) if len(groups) == 1 else NonImageDicomError(
            f"{label}: no image series, only {_listing(summaries)}; voxagent reads image series (MR, CT)")
    if len(images) > 1:
        raise MixedSeriesError(
            f"{label}: {len(images)} image series in one folder/archive and none was chosen: "
            f"{_listing([s for s in summaries if s.is_image])}; choose one by SeriesInstanceUID or index "
            "(or give a folder holding one series)")
    if len(groups) > 1:
        log.info("%s: reading the only image series; %d non-image series ignored", label, len(groups) - 1)
    return images[0]


def _non_image_error(group: _Group, label: str) -> NonImageDicomError:
    ds = group.headers[0]
    modality = str(getattr(ds, "Modality", "") or "unknown")
    kinds = {"SR": "a structured report (SR)", "SEG": "a segmentation (SEG)", "RTSTRUCT": "an RT structure set",
             "PR": "a presentation state", "KO": "a key object selection", "RTPLAN": "an RT plan"}
    what = kinds.get(modality.upper(), f"a {modality} object without pixel data")
    return NonImageDicomError(f"{label}: the series (UID {group.uid}) is {what}, not an image; "
                              "give the image series (MR or CT slices) instead")


def _listing(summaries: Sequence[SeriesSummary], shown: int = 12) -> str:
    text = "; ".join(s.describe() for s in summaries[:shown])
    return text + (f"; and {len(summaries) - shown} more" if len(summaries) > shown else "")


def _summarise(index: int, group: _Group) -> SeriesSummary:
    ds = group.headers[0]
    return SeriesSummary(
        index=index, series_instance_uid=group.uid, modality=_str(getattr(ds, "Modality", None)),
        sequence=classify_sequence(ds), series_number=_int(getattr(ds, "SeriesNumber", None)),
        series_description=_str(getattr(ds, "SeriesDescription", None)), acquisition_date=_date(ds),
        files=len(group.headers), frames=len(group.frames) if group.is_image else 0,
        rows=_int(getattr(ds, "Rows", None)), columns=_int(getattr(ds, "Columns", None)), is_image=group.is_image)


# --------------------------------------------------------------------------- per-frame geometry


def _frames_of(ds: Any, file_index: int) -> list[_Frame]:
    instance = _int(getattr(ds, "InstanceNumber", None))
    nframes = _int(getattr(ds, "NumberOfFrames", None)) or 1
    shared = _first(getattr(ds, "SharedFunctionalGroupsSequence", None))
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is None and shared is None:
        if nframes > 1:
            raise UnsupportedDicomError("a multi-frame object without functional groups (per-frame positions); "
                                   "only enhanced multi-frame objects (e.g. Enhanced MR) can be read")
        return [_Frame(file_index, None, instance, _floats(getattr(ds, "ImagePositionPatient", None), 3),
                       _floats(getattr(ds, "ImageOrientationPatient", None), 6),
                       _floats(getattr(ds, "PixelSpacing", None), 2),
                       *_rescale(ds), _float(getattr(ds, "SliceThickness", None)),
                       _float(getattr(ds, "SpacingBetweenSlices", None)))]
    if per_frame is not None and len(per_frame) != nframes:
        raise DicomHeaderError(f"a multi-frame object declares {nframes} frames but has {len(per_frame)} "
                               "per-frame functional groups")
    frames = []
    for f in range(nframes):
        groups = [g for g in ((per_frame[f] if per_frame is not None else None), shared) if g is not None]

        def find(seq: str, attr: str, groups: list[Any] = groups) -> Any:
            for g in groups:
                item = _first(getattr(g, seq, None))
                if item is not None and getattr(item, attr, None) is not None:
                    return getattr(item, attr)
            return getattr(ds, attr, None)

        slope = _float(find("PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(find("PixelValueTransformationSequence", "RescaleIntercept"))
        frames.append(_Frame(
            file_index, f, instance,
            _floats(find("PlanePositionSequence", "ImagePositionPatient"), 3),
            _floats(find("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            _floats(find("PixelMeasuresSequence", "PixelSpacing"), 2),
            slope if slope is not None and slope != 0.0 else 1.0, intercept or 0.0,
            _float(find("PixelMeasuresSequence", "SliceThickness")),
            _float(find("PixelMeasuresSequence", "SpacingBetweenSlices"))))
    return frames


def _rescale(ds: Any) -> tuple[float, float]:
    slope = _float(getattr(ds, "RescaleSlope", None))
    intercept = _float(getattr(ds, "RescaleIntercept", None))
    return (slope if slope not in (None, 0.0) else 1.0), (intercept or 0.0)


@dataclass(frozen=True)
class _Geometry:
    order: list[int]  # indices into group.frames, in slice order
    affine: np.ndarray  # RAS
    rows: int
    columns: int


def _geometry(group: _Group, label: str, limits: DicomLimits) -> _Geometry:
    frames = group.frames
    what = f"{label}: series {_series_name(group)}"
    header_of = dict(zip(group.files, group.headers, strict=True))
    rows = {(_int(getattr(header_of[fr.file], "Rows", None)), _int(getattr(header_of[fr.file], "Columns", None)))
            for fr in frames}
    if len(rows) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sorted(rows, key=str))
        raise InconsistentGeometryError(f"{what}: slices of different matrix sizes ({shown}); "
                                        "the series mixes acquisitions, export them as separate series")
    nrows, ncols = next(iter(rows))
    if not nrows or not ncols:
        raise DicomHeaderError(f"{what}: Rows/Columns missing")
    for attr, name in (("orientation", "ImageOrientationPatient"), ("position", "ImagePositionPatient"),
                       ("pixel_spacing", "PixelSpacing")):
        missing = sum(1 for fr in frames if getattr(fr, attr) is None)
        if missing:
            raise DicomHeaderError(f"{what}: {missing} of {len(frames)} slice(s) lack {name} (or hold a malformed "
                                   "value), so their place in space is unknown; export the series with its "
                                   "geometry (secondary captures and screenshots cannot be read)")
    iops = np.array([fr.orientation for fr in frames], dtype=np.float64)
    if np.max(np.abs(iops - iops[0])) > limits.orientation_tol:
        distinct = len({tuple(np.round(o, 3)) for o in iops})
        raise InconsistentGeometryError(
            f"{what}: slices with {distinct} different orientations (ImageOrientationPatient), e.g. a localizer "
            "or several stacks in one series; remove the other slices or export each stack as its own series")
    row_cos, col_cos = _unit(iops[0, :3]), _unit(iops[0, 3:])
    if row_cos is None or col_cos is None or abs(float(row_cos @ col_cos)) > 1e-2:
        raise DicomHeaderError(f"{what}: ImageOrientationPatient is not two perpendicular unit vectors")
    normal = np.cross(row_cos, col_cos)
    image_type = getattr(group.headers[0], "ImageType", None) or []
    if any(str(v).upper() == "MOSAIC" for v in (image_type if not isinstance(image_type, str) else [image_type])):
        raise UnsupportedDicomError(f"{what}: a Siemens mosaic (several slices tiled in one image); convert it "
                                    "with dcm2niix and give the NIfTI, or export the series as single slices")
    spacings = np.array([fr.pixel_spacing for fr in frames], dtype=np.float64)
    if np.max(np.abs(spacings - spacings[0])) > limits.spacing_rtol * float(np.min(spacings[0])):
        raise InconsistentGeometryError(f"{what}: slices with different PixelSpacing; the series mixes "
                                        "acquisitions, export them as separate series")
    row_spacing, col_spacing = (float(s) for s in spacings[0])
    positions = np.array([fr.position for fr in frames], dtype=np.float64)
    dist = positions @ normal
    order = sorted(range(len(frames)), key=lambda i: (dist[i], frames[i].instance or 0))
    sorted_dist = dist[order]
    n = len(frames)
    if n == 1:
        step_len = next((s for s in (frames[0].between, frames[0].thickness) if s and s > 0), None)
        if step_len is None:
            raise DicomHeaderError(f"{what}: a single slice without SliceThickness; its thickness is unknown")
        step = normal * step_len
        log.info("%s: single slice; slice spacing %.4g mm from the header", what, step_len)
    else:
        gaps = np.diff(sorted_dist)
        tol = max(limits.spacing_atol_mm, 1e-3)
        dup = np.flatnonzero(gaps < tol)
        if dup.size:
            at = sorted_dist[dup[0]]
            count = int(np.sum(np.abs(sorted_dist - at) < tol))
            raise DuplicateSliceError(
                f"{what}: {count} slices at the same position ({at:.2f} mm along the slice normal), "
                f"{dup.size} duplicate position(s) in all; the folder holds a file twice, or the series holds "
                "several echoes, b-values or time points; keep one image per position")
        step_len = float(np.median(gaps))
        tol = max(limits.spacing_atol_mm, limits.spacing_rtol * step_len)
        bad = np.flatnonzero(np.abs(gaps - step_len) > tol)
        if bad.size:
            g = float(gaps[bad[0]])
            ratio = g / step_len
            if abs(ratio - round(ratio)) * step_len <= tol and round(ratio) >= 2:
                missing = int(sum(round(float(gaps[b]) / step_len) - 1 for b in bad))
                raise MissingSliceError(
                    f"{what}: {missing} slice(s) missing: a gap of {g:.3f} mm between the slices at "
                    f"{sorted_dist[bad[0]]:.2f} and {sorted_dist[bad[0] + 1]:.2f} mm where the others are "
                    f"{step_len:.3f} mm apart; export the complete series")
            raise InconsistentGeometryError(
                f"{what}: uneven slice spacing ({g:.3f} mm between the slices at {sorted_dist[bad[0]]:.2f} and "
                f"{sorted_dist[bad[0] + 1]:.2f} mm, {step_len:.3f} mm elsewhere); a volume needs equally "
                "spaced slices (export each stack separately, or resample the series)")
        p = positions[order]
        step = (p[-1] - p[0]) / (n - 1)
        residual = np.linalg.norm(p - (p[0] + np.outer(np.arange(n), step)), axis=1)
        if float(np.max(residual)) > tol:
            raise InconsistentGeometryError(
                f"{what}: slice positions do not lie on one line (off by up to {float(np.max(residual)):.3f} mm); "
                "the series mixes stacks, export each separately")
        if abs(float(step @ normal)) < 0.5 * float(np.linalg.norm(step)):
            raise InconsistentGeometryError(f"{what}: slices are stacked nearly within their own plane")
        if float(np.linalg.norm(step - normal * (step @ normal))) > tol:
            log.info("%s: slices are sheared (gantry tilt); the affine keeps the exact positions", what)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing  # array axis 0 = column index: along the row direction
    lps[:3, 1] = col_cos * row_spacing  # array axis 1 = row index: along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = positions[order[0]]
    affine = LPS_TO_RAS @ lps
    check_affine(affine, what, limits.voxels)
    return _Geometry(order, affine, nrows, ncols)


# --------------------------------------------------------------------------- pixels


# pip lines for pydicom's pixel decoders, by transfer syntax (pydicom 3 "Supported Transfer Syntaxes")
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pip install pylibjpeg pylibjpeg-libjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pip install pylibjpeg pylibjpeg-libjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls (or pylibjpeg pylibjpeg-libjpeg, or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls (or pylibjpeg pylibjpeg-libjpeg, or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg (or pillow, or python-gdcm)",
    "1.2.840.10008.1.2.4.201": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}


def decoder_available(transfer_syntax: str) -> bool | None:
    """True/False whether pydicom can decode this transfer syntax here; None if pydicom cannot at all."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return None


def _check_transfer_syntax(ds: Any, what: str) -> None:
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    ts = UID(str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2"))
    if not ts.is_valid or not ts.is_transfer_syntax:  # checked first: is_compressed raises for these
        raise UnsupportedTransferSyntaxError(
            f"{what}: unknown transfer syntax {str(ts)[:64]!r}; export the series as Explicit VR Little Endian")
    name = ts.name
    if not ts.is_compressed:
        return
    available = decoder_available(str(ts))
    if available is None:
        raise UnsupportedTransferSyntaxError(
            f"{what}: pixel data in transfer syntax {name} ({ts}), which no installed reader decodes; export "
            "the series uncompressed (Explicit VR Little Endian), e.g. with `gdcmconv --raw` or `dcmdjpeg`")
    if not available:
        hint = _DECODER_PACKAGES.get(str(ts), "install one of the decoders pydicom documents for it")
        raise MissingDecoderError(
            f"{what}: pixel data compressed as {name} ({ts}) and no decoder for it is installed; {hint}, "
            "or export the series uncompressed")


def _assemble(group: _Group, source: _Source, limits: DicomLimits, nonfinite: str) -> Volume:
    what = f"{source.label}: series {_series_name(group)}"
    first = group.headers[0]
    samples = _int(getattr(first, "SamplesPerPixel", None)) or 1
    if samples != 1:
        raise UnsupportedDicomError(f"{what}: a colour image ({samples} samples per pixel, "
                                    f"{getattr(first, 'PhotometricInterpretation', '?')}), not a grayscale scan")
    planar = _PLANAR_MODALITIES.get((_str(getattr(first, "Modality", None)) or "").upper())
    if planar and any(fr.orientation is None or fr.position is None for fr in group.frames):
        raise UnsupportedDicomError(f"{what}: {planar}, a 2D image without a place in 3D space; voxagent "
                                    "reads MR and CT volumes (or other series with patient geometry)")
    geo = _geometry(group, source.label, limits)
    n = len(geo.order)
    vlim = limits.voxels
    shape = (geo.columns, geo.rows, n)
    if max(shape) > vlim.max_dim or math.prod(shape) > vlim.max_voxels:
        raise SizeLimitError(f"{what}: a volume of {shape} voxels exceeds the limits "
                             f"({vlim.max_dim} per axis, {vlim.max_voxels:,} in all)")
    first = group.headers[0]
    needed: dict[int, list[tuple[int, int | None]]] = {}
    for k, idx in enumerate(geo.order):
        fr = group.frames[idx]
        needed.setdefault(fr.file, []).append((k, fr.frame))
    slices: list[np.ndarray | None] = [None] * n
    for file_index, wanted in needed.items():
        _name, opener = source.files[file_index]
        try:
            with opener() as fh:
                ds = _dcmread(fh, _PIXEL_TAGS, stop_before_pixels=False)
        except _NotDicom:
            raise DicomHeaderError(f"{what}: a file became unreadable between two reads") from None
        except DicomHeaderError as exc:
            raise DicomHeaderError(f"{what}: {exc}") from None
        _check_transfer_syntax(ds, what)
        if not any(hasattr(ds, t) for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise NonImageDicomError(f"{what}: an image header without PixelData; the files are incomplete "
                                     "(export the series with its pixel data)")
        pixels = _decode(ds, what)
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.shape[1:] != (geo.rows, geo.columns):
            raise InconsistentGeometryError(f"{what}: pixel data of shape {pixels.shape[1:]} where the header "
                                            f"says {geo.rows}x{geo.columns}")
        for k, frame in wanted:
            f = 0 if frame is None else frame
            if f >= pixels.shape[0]:
                raise DicomHeaderError(f"{what}: frame {f} declared but the pixel data holds {pixels.shape[0]}")
            slices[k] = pixels[f]
        del pixels
    scales = [(group.frames[i].slope, group.frames[i].intercept) for i in geo.order]
    integral = all(s == 1.0 and float(b).is_integer() for s, b in scales)
    stored = [s for s in slices if s is not None]
    if len(stored) != n:
        raise DicomHeaderError(f"{what}: {n - len(stored)} slice(s) without pixel data")
    kind_float = any(s.dtype.kind == "f" for s in stored)
    out_dtype: type[np.generic] = np.float32 if (kind_float or not integral) else np.int32
    array = np.empty(shape, dtype=out_dtype)
    for k, (pix, (slope, intercept)) in enumerate(zip(stored, scales, strict=True)):
        if out_dtype is np.int32:
            array[:, :, k] = pix.T.astype(np.int32) + int(intercept)
        else:
            array[:, :, k] = pix.T.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if out_dtype is np.int32 and array.size:
        lo, hi = int(array.min()), int(array.max())
        for small in (np.uint8, np.int16, np.uint16):
            info = np.iinfo(small)
            if info.min <= lo and hi <= info.max:
                array = array.astype(small)
                break
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        bad = int(array.size - np.count_nonzero(finite))
        if bad and nonfinite == "refuse":
            from voxel_ops.errors import NonFiniteError

            raise NonFiniteError(f"{what}: {bad:,} voxels are NaN or infinite")
        if bad:
            array[~finite] = 0
            log.warning("%s: %d NaN/Inf voxels set to 0", what, bad)
    meta = VolumeMeta(modality=classify_sequence(first), acquisition_date=_date(first),
                      series_description=_str(getattr(first, "SeriesDescription", None)), source_name=group.uid)
    log.debug("read %s: %s %s", what, array.shape, array.dtype)
    return Volume(array, geo.affine, meta)


def _decode(ds: Any, what: str) -> np.ndarray:
    meta = getattr(ds, "file_meta", None)
    if meta is None or not getattr(meta, "TransferSyntaxUID", None):  # a bare dataset: say how it was encoded
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = getattr(ds, "original_encoding", (True, True))
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit or implicit is None else
                                  ExplicitVRLittleEndian if little or little is None else ExplicitVRBigEndian)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except (ImportError, RuntimeError, NotImplementedError) as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = _DECODER_PACKAGES.get(str(ts), "")
        raise MissingDecoderError(f"{what}: the pixel data cannot be decoded ({type(exc).__name__})"
                                  + (f"; {hint}" if hint else "")) from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbled pixel data, any decoder's exception
        raise DicomHeaderError(f"{what}: the pixel data is truncated or does not match the header "
                               f"({type(exc).__name__}); export the series again") from None


# --------------------------------------------------------------------------- metadata


def classify_sequence(ds: Any) -> str | None:
    """voxagent's modality for a header: CT -> "CT"; MR -> T1, T1C, T2, FLAIR, DWI, ADC, SWI, else "MR".

    Keywords of SeriesDescription, ProtocolName, SequenceName, PulseSequenceName and ImageType decide
    first (ADC before DWI, FLAIR before T2, a contrast marker turns T1 into T1C, "T1 FLAIR" is T1);
    without one, ScanningSequence with the timing (TR, TE, TI) gives T1, T2 or FLAIR when unambiguous.
    """
    modality = (_str(getattr(ds, "Modality", None)) or "").upper()
    if modality != "MR":
        return {"CT": "CT", "PT": "PET", "": None}.get(modality, modality)
    text = " ".join(str(v) for v in (getattr(ds, a, None) for a in (
        "SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName")) if v)
    image_type = getattr(ds, "ImageType", None)
    if image_type:
        text += " " + " ".join(str(v) for v in (image_type if not isinstance(image_type, str) else [image_type]))
    low = text.lower().replace("_", " ").replace("-", " ")

    def has(*patterns: str) -> bool:
        return any(re.search(p, low) for p in patterns)

    contrast = has(r"\+\s*c\b", r"\bc\s*\+", r"\bpost\b", r"\bpostcontrast\b", r"\bgad", r"\bgd\b", r"\+\s*gd",
                   r"\bcontrast\b", r"\bce\b", r"\bmprage post\b", r"\bwith\b.*\bcontrast") \
        and not has(r"\bpre\b", r"\bprecontrast\b", r"\bnon\s*contrast\b", r"\bwithout\b")
    contrast = contrast or bool(_str(getattr(ds, "ContrastBolusAgent", None)))
    t1 = has(r"\bt1", r"t1w", r"mprage", r"mp rage", r"mp2rage", r"\bspgr\b", r"\bbravo\b", r"\btfl",
             r"\bfl3d\b", r"\bvibe\b", r"\bt1ffe\b", r"\btfe\b")
    if has(r"\badc\b", r"apparent diffusion", r"\bdadc\b"):
        return "ADC"
    if has(r"\bdwi\b", r"diffusion", r"\bdiff\b", r"ep2d diff", r"\btrace\w*", r"\bb\s*=?\s*1000\b", r"\bdti\b",
           r"\bep b\d+"):
        return "DWI"
    if has(r"\bswi\b", r"\bswan\b", r"susceptib", r"\bswip\b", r"\bsw[ai]n?\b"):
        return "SWI"
    if has(r"flair", r"\btirm\b", r"dark\s*fluid", r"\bdf\b"):
        return ("T1C" if contrast else "T1") if t1 else "FLAIR"
    if t1:
        return "T1C" if contrast else "T1"
    if has(r"\bt2", r"t2w", r"\bspace\b", r"\bhaste\b", r"\bssfse\b"):
        return "T2"
    return _classify_by_timing(ds, contrast)


def _classify_by_timing(ds: Any, contrast: bool) -> str:
    tr, te, ti = (_float(getattr(ds, a, None)) for a in ("RepetitionTime", "EchoTime", "InversionTime"))
    scanning = str(getattr(ds, "ScanningSequence", "") or "").upper()
    if "IR" in scanning and ti and ti > 1500 and te and te > 70:
        return "FLAIR"
    if tr and te:
        if tr < 1000 and te < 30:
            return "T1C" if contrast else "T1"
        if tr > 2000 and te > 70:
            return "T2"
    return "MR"


def _date(ds: Any) -> str | None:
    for attr in ("AcquisitionDate", "SeriesDate", "ContentDate", "StudyDate", "AcquisitionDateTime"):
        value = _str(getattr(ds, attr, None))
        if value and re.match(r"^\d{8}", value):
            y, m, d = value[:4], value[4:6], value[6:8]
            if 1 <= int(m) <= 12 and 1 <= int(d) <= 31:
                return f"{y}-{m}-{d}"
    return None


# --------------------------------------------------------------------------- small helpers


def _series_name(group: _Group) -> str:
    ds = group.headers[0]
    number = _int(getattr(ds, "SeriesNumber", None))
    return f"{number} (UID {group.uid})" if number is not None else f"UID {group.uid}"


def _clip(text: str | None, n: int = 64) -> str | None:
    return text if text is None or len(text) <= n else text[: n - 1] + "…"


def _first(seq: Any) -> Any:
    try:
        return seq[0] if seq is not None and len(seq) else None
    except (TypeError, IndexError):
        return None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        out = None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
    return out if out is not None and math.isfinite(out) else None


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    if out is None or out.shape != (n,) or not np.all(np.isfinite(out)):
        return None
    return out


def _unit(v: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(v))
    if not 0.9 < norm < 1.1:
        return None
    return v / norm


__all__ = [
    "DicomLimits",
    "SeriesSummary",
    "classify_sequence",
    "decoder_available",
    "is_dicom_source",
    "list_dicom_series",
    "load_dicom",
    "load_scan",
]
