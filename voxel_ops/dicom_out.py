"""Geometry for DICOM results: a mask on a scan's grid, cut into the source series' own frames.

A DICOM SEG stores one frame per source image (or source frame), in the source's pixel layout
(row, column) and slice order. The analysis hands back masks on the scan's voxel grid: the grid
:func:`voxel_ops.dicom.load_dicom` built (axes column, row, slice sorted along the normal, RAS
world), or any axis permutation / flip of it (e.g. the RAS-conformed grid). Rather than replay the
loader's steps backwards, :func:`mask_frames` inverts the geometry itself: each source pixel's
centre (ImagePositionPatient + c * column spacing * row cosines + r * row spacing * column cosines,
LPS, as the standard defines it) is mapped through the mask's inverse affine and must land on a
voxel centre. So the result is right whatever order the source files came in, for oblique and
anisotropic series too, and a mask that is not on the source's grid is refused, never resampled.

:func:`read_series_datasets` reads the full headers (no pixel data) of the chosen series, which
the SEG/SR writers need to copy the patient and study modules and to reference each instance.
They are in memory only; nothing from them is logged.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxel_ops.dicom import (
    LPS_TO_RAS,
    DicomLimits,
    _choose,
    _first,
    _floats,
    _open_source,
    _scan_headers,
)
from voxel_ops.errors import DicomError, DicomHeaderError, GridMismatchError
from voxel_ops.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourcePlane:
    """Where one source image (one frame of it for multi-frame objects) lies in the patient (LPS, mm)."""

    position: np.ndarray  # ImagePositionPatient: centre of the first pixel (row 0, column 0)
    row_cosines: np.ndarray  # direction of increasing column index
    column_cosines: np.ndarray  # direction of increasing row index
    row_spacing: float  # PixelSpacing[0]: between rows
    column_spacing: float  # PixelSpacing[1]: between columns
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosines, self.column_cosines)


def planes_of(datasets: Sequence[Any]) -> list[SourcePlane]:
    """One :class:`SourcePlane` per frame, in dataset order then frame order (as a SEG references them).

    Reads the classic attributes of single-frame images and the functional groups of enhanced
    multi-frame objects (per-frame values first, shared ones second).
    """
    planes: list[SourcePlane] = []
    for n, ds in enumerate(datasets):
        rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
        shared = _first(getattr(ds, "SharedFunctionalGroupsSequence", None))
        per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
        for f in range(nframes):
            groups = [g for g in ((per_frame[f] if per_frame is not None and f < len(per_frame) else None),
                                  shared) if g is not None]

            def find(seq: str, attr: str, groups: list[Any] = groups, ds: Any = ds) -> Any:
                for g in groups:
                    item = _first(getattr(g, seq, None))
                    if item is not None and getattr(item, attr, None) is not None:
                        return getattr(item, attr)
                return getattr(ds, attr, None)

            ipp = _floats(find("PlanePositionSequence", "ImagePositionPatient"), 3)
            iop = _floats(find("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
            spacing = _floats(find("PixelMeasuresSequence", "PixelSpacing"), 2)
            if ipp is None or iop is None or spacing is None or not rows or not cols:
                raise DicomHeaderError(f"source image {n + 1}, frame {f + 1}: no complete plane geometry "
                                       "(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows, Columns)")
            planes.append(SourcePlane(ipp, iop[:3], iop[3:], float(spacing[0]), float(spacing[1]), rows, cols))
    return planes


def slice_order(planes: Sequence[SourcePlane]) -> list[int]:
    """Indices of ``planes`` sorted along the slice normal, the order the loader stacks slices in."""
    if not planes:
        return []
    normal = planes[0].normal
    return sorted(range(len(planes)), key=lambda i: float(planes[i].position @ normal))


def mask_frames(mask: Volume, planes: Sequence[SourcePlane], *, tol_voxels: float = 0.1) -> np.ndarray:
    """The mask's voxels as source frames: ``out[n, r, c]`` is the voxel at pixel (r, c) of ``planes[n]``.

    Every source pixel centre must fall within ``tol_voxels`` of a mask voxel centre, inside the
    mask, and the planes must cover the mask exactly once: the mask is on the source grid, up to
    an axis permutation or flip. Anything else raises :class:`GridMismatchError` (no resampling:
    a SEG must say what the analysis said, voxel for voxel).
    """
    if not planes:
        raise GridMismatchError("no source planes to place the mask on")
    rows, cols = planes[0].rows, planes[0].columns
    if any(p.rows != rows or p.columns != cols for p in planes):
        raise GridMismatchError("source frames of different matrix sizes; a SEG frame needs one size")
    if len(planes) * rows * cols != mask.array.size:
        raise GridMismatchError(f"the mask has {mask.array.size:,} voxels, the source series "
                                f"{len(planes)} x {rows} x {cols}; the mask is not on the source grid")
    inv = np.linalg.inv(mask.affine)
    to_voxel = inv @ LPS_TO_RAS  # LPS world -> mask voxel indices
    r_idx, c_idx = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    shape = np.array(mask.shape)
    seen = np.zeros(mask.shape, dtype=bool)
    out = np.empty((len(planes), rows, cols), dtype=mask.array.dtype)
    for n, p in enumerate(planes):
        origin = to_voxel[:3, :3] @ p.position + to_voxel[:3, 3]
        along_c = to_voxel[:3, :3] @ (p.row_cosines * p.column_spacing)
        along_r = to_voxel[:3, :3] @ (p.column_cosines * p.row_spacing)
        ijk = (origin[:, None, None] + along_c[:, None, None] * c_idx + along_r[:, None, None] * r_idx)
        rounded = np.rint(ijk)
        off = float(np.max(np.abs(ijk - rounded)))
        if off > tol_voxels:
            raise GridMismatchError(f"source frame {n + 1} lies {off:.2f} voxels off the mask's voxel centres; "
                                    "the mask is not on the source series' grid")
        index = rounded.astype(np.int64)
        if np.any(index < 0) or np.any(index >= shape[:, None, None]):
            raise GridMismatchError(f"source frame {n + 1} reaches outside the mask's grid; "
                                    "the mask is not on the source series' grid")
        i, j, k = index
        if np.any(seen[i, j, k]):
            raise GridMismatchError(f"source frame {n + 1} covers mask voxels another frame already covers "
                                    "(duplicate source positions)")
        seen[i, j, k] = True
        out[n] = mask.array[i, j, k]
    log.debug("mask %s cut into %d source frames of %dx%d", mask.shape, len(planes), rows, cols)
    return out


def read_series_datasets(
    path: str | os.PathLike[str], *, series: str | int | None = None, limits: DicomLimits | None = None,
) -> list[Any]:
    """Full headers (pixel data left out) of one image series, in slice order along the normal.

    The same source, limits and series choice as :func:`voxel_ops.dicom.load_dicom`, so a SEG
    references exactly the instances the analysis read. Multi-frame objects come back as they are
    (their frames keep the object's own order).
    """
    import pydicom

    limits = limits or DicomLimits()
    with warnings.catch_warnings(), _open_source(Path(path), limits) as source:
        warnings.simplefilter("ignore")  # pydicom warns (quoting values) on malformed attributes
        groups = _scan_headers(source, limits)
        group = _choose(groups, series, source.label)
        datasets = []
        for file_index in group.files:
            _name, opener = source.files[file_index]
            with opener() as fh:  # parsed once already by _scan_headers: these are DICOM files
                try:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage bytes
                    raise DicomHeaderError(f"{source.label}: a file of the series has a corrupt header "
                                           f"({type(exc).__name__})") from None
            datasets.append(ds)
    if len(datasets) > 1:
        planes = planes_of(datasets)
        if len(planes) != len(datasets):
            raise DicomError(f"{source.label}: a series mixing multi-frame and single-frame objects")
        datasets = [datasets[i] for i in slice_order(planes)]
    log.debug("%s: %d header(s) of series %s read for DICOM output", source.label, len(datasets), group.uid)
    return datasets


__all__ = ["SourcePlane", "mask_frames", "planes_of", "read_series_datasets", "slice_order"]
