"""Write DICOM series with pydicom from NIfTI-like arrays (RAS affine), for the DICOM reader's tests.

The writer is deliberately independent of ``voxel_ops.dicom``: it places each slice with the textbook
DICOM relations (LPS world; pixel (row r, column c) at IPP + c * dc * row_cos + r * dr * col_cos),
so a round trip checks the reader against the standard, not against itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
# identifiers that must never appear in a message or a log line
PHI = {"PatientName": "DOE^JANE", "PatientID": "PID-0042-SECRET", "PatientBirthDate": "19660412",
       "OtherPatientIDs": "OTHER-77-SECRET", "InstitutionName": "St Example Hospital"}


def ds_values(values) -> list[DSfloat]:
    return [DSfloat(float(v), auto_format=True) for v in values]


def geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray, np.ndarray]:
    """(row_cos, col_cos, PixelSpacing [row, column], origin LPS, slice step LPS) of a RAS affine."""
    lps = LPS @ np.asarray(affine, dtype=np.float64)
    a0, a1 = lps[:3, 0], lps[:3, 1]
    return (a0 / np.linalg.norm(a0), a1 / np.linalg.norm(a1), [float(np.linalg.norm(a1)), float(np.linalg.norm(a0))],
            lps[:3, 3], lps[:3, 2])


def expected_volume(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a dcm2niix-style reader returns: slices ordered along the normal of the slice plane."""
    row_cos, col_cos, _, _, step = geometry(affine)
    if float(step @ np.cross(row_cos, col_cos)) >= 0:
        return array, np.asarray(affine, dtype=np.float64)
    n = array.shape[2]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, n - 1
    return array[:, :, ::-1], np.asarray(affine, dtype=np.float64) @ flip


def base_dataset(sop_class: str, modality: str, series_uid: str, description: str | None, **extra) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID = extra.pop("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1")
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = extra.pop("SeriesNumber", 3)
    if description is not None:
        ds.SeriesDescription = description
    ds.AcquisitionDate = extra.pop("AcquisitionDate", "20240302")
    ds.StudyDate = "20240302"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def set_pixels(ds: Dataset, frames: np.ndarray) -> None:
    """frames: (rows, cols) or (n, rows, cols) stored integers."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[-2]), int(frames.shape[-1])
    ds.BitsAllocated = frames.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if frames.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(frames).astype(frames.dtype.newbyteorder("<")).tobytes()


def write_series(
    stored: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    *,
    modality: str = "MR",
    description: str | None = "T1 MPRAGE",
    slope: float = 1.0,
    intercept: float = 0.0,
    series_uid: str | None = None,
    seed: int | None = 0,
    **extra,
) -> list[Path]:
    """One single-frame file per slice k of ``stored[:, :, k]`` (integers), files in shuffled names/order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    row_cos, col_cos, pixel_spacing, origin, step = geometry(affine)
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    n = stored.shape[2]
    names = [f"IM{k:04d}.dcm" for k in range(n)]
    if seed is not None:
        np.random.default_rng(seed).shuffle(names)
    paths = []
    for k in range(n):
        ds = base_dataset(sop_class, modality, series_uid, description, **dict(extra))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ds_values(origin + k * step)
        ds.ImageOrientationPatient = ds_values(np.concatenate([row_cos, col_cos]))
        ds.PixelSpacing = ds_values(pixel_spacing)
        ds.SliceThickness = DSfloat(float(np.linalg.norm(step)) * 0.8, auto_format=True)  # not the spacing
        if slope != 1.0 or intercept != 0.0 or modality == "CT":
            ds.RescaleSlope = DSfloat(slope, auto_format=True)
            ds.RescaleIntercept = DSfloat(intercept, auto_format=True)
        set_pixels(ds, stored[:, :, k].T)
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_mr(
    stored: np.ndarray, affine: np.ndarray, path: Path, *, slope: float = 1.0, intercept: float = 0.0,
    description: str = "AX FLAIR", frame_order: list[int] | None = None, per_frame_scaling: bool = False,
) -> Path:
    """One Enhanced MR object: orientation/spacing in the shared groups, positions per frame."""
    row_cos, col_cos, pixel_spacing, origin, step = geometry(affine)
    n = stored.shape[2]
    order = frame_order if frame_order is not None else list(range(n))
    ds = base_dataset(ENHANCED_MR_STORAGE, "MR", generate_uid(), description)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n
    ds.AcquisitionDateTime = "20240302101500"
    del ds.AcquisitionDate
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = ds_values(np.concatenate([row_cos, col_cos]))
    shared.PlaneOrientationSequence = Sequence([orient])
    measures = Dataset()
    measures.PixelSpacing = ds_values(pixel_spacing)
    measures.SliceThickness = DSfloat(float(np.linalg.norm(step)), auto_format=True)
    shared.PixelMeasuresSequence = Sequence([measures])
    transform = Dataset()
    transform.RescaleSlope = DSfloat(slope, auto_format=True)
    transform.RescaleIntercept = DSfloat(intercept, auto_format=True)
    transform.RescaleType = "US"
    if not per_frame_scaling:
        shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = ds_values(origin + k * step)
        item.PlanePositionSequence = Sequence([position])
        content = Dataset()
        content.InStackPositionNumber = k + 1
        item.FrameContentSequence = Sequence([content])
        if per_frame_scaling:
            item.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    set_pixels(ds, np.stack([stored[:, :, k].T for k in order]))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def affine_from(directions: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]
                ) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=np.float64) * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine
