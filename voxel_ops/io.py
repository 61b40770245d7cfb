"""Hostile-input-safe NIfTI-1/NIfTI-2 reading and plain NIfTI writing.

Why not just ``nibabel.load``: it trusts the header. A 1 MB ``.nii.gz`` can claim (or inflate to)
gigabytes, and nibabel would allocate them. Here the header is parsed first from the first few
hundred decompressed bytes, every field that decides memory or geometry is validated, and only
then exactly the declared number of bytes is decompressed through a bounded reader. Anything
unusable is refused with a typed :mod:`voxel_ops.errors` exception whose message a user can act on.

What the reader accepts (the contract other packages rely on):

* single-file NIfTI-1 (``n+1``) or NIfTI-2 (``n+2``), plain or gzip (detected by content, not name);
* 3D images; a 4D/5D image whose extra axes are all 1 is squeezed; a real 4D series is refused
  unless ``frame=`` picks one volume;
* every axis 1..``max_dim`` voxels, all voxels <= ``max_voxels``, data bytes <= ``max_data_bytes``;
* the affine nibabel would choose (sform if its code is set, else qform, else pixdim only),
  finite, invertible, voxel spacing within (``min_spacing_mm``, ``max_spacing_mm``);
* ``scl_slope``/``scl_inter`` applied (result float32, float64 kept for float64 data);
* NaN/Inf voxels refused (``nonfinite="refuse"``, default) or set to 0 (``nonfinite="zero"``);
  the count is reported in :class:`ReadReport` and logged.
"""
from __future__ import annotations

import gzip
import io
import logging
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal, cast

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from voxel_ops.errors import (
    AffineError,
    DataTypeError,
    DimensionError,
    HeaderError,
    NonFiniteError,
    NotNiftiError,
    SizeLimitError,
    SpacingError,
    TruncatedDataError,
    VolumeError,
    VolumeFileNotFoundError,
)
from voxel_ops.volume import Volume, VolumeMeta

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes decompressed per read; bounds the reader's transient memory
_PREFIX = 548  # largest header (NIfTI-2, 540) + the 4-byte extension flag + slack


@dataclass(frozen=True)
class ReadLimits:
    """Bounds that decide how much memory a single file may make the reader allocate."""

    max_dim: int = 2048  # voxels along any one axis
    max_voxels: int = 512**3  # all voxels in the file, every frame included
    max_data_bytes: int = 2 * 1024**3  # declared voxel bytes
    max_file_bytes: int = 2 * 1024**3  # bytes on disk (compressed or not)
    max_extension_bytes: int = 16 * 1024**2  # header extensions between header and data
    min_spacing_mm: float = 0.05  # exclusive
    max_spacing_mm: float = 50.0  # exclusive


@dataclass
class ReadReport:
    """What the reader found and what it changed, so nothing is fixed silently."""

    source: str
    format: str = ""  # "NIfTI-1" or "NIfTI-2"
    compressed: bool = False
    stored_shape: tuple[int, ...] = ()
    stored_dtype: str = ""
    affine_source: str = ""  # "sform", "qform" or "pixdim"
    squeezed_axes: int = 0
    frame: int | None = None
    scaled: bool = False
    nonfinite_count: int = 0
    nonfinite_action: str = "none"  # "none" or "zeroed"
    notes: list[str] = field(default_factory=list)


NonFinitePolicy = Literal["refuse", "zero"]


def load_volume(
    path: str | os.PathLike[str],
    *,
    limits: ReadLimits | None = None,
    nonfinite: NonFinitePolicy = "refuse",
    meta: VolumeMeta | None = None,
    frame: int | None = None,
) -> Volume:
    """Read a NIfTI file into a :class:`Volume`, refusing anything unsafe (see module docstring)."""
    volume, _ = load_volume_with_report(path, limits=limits, nonfinite=nonfinite, meta=meta, frame=frame)
    return volume


def load_volume_with_report(
    path: str | os.PathLike[str],
    *,
    limits: ReadLimits | None = None,
    nonfinite: NonFinitePolicy = "refuse",
    meta: VolumeMeta | None = None,
    frame: int | None = None,
) -> tuple[Volume, ReadReport]:
    """:func:`load_volume` plus the :class:`ReadReport` of what was found and changed."""
    path = Path(path)
    try:
        if not path.is_file():
            raise VolumeFileNotFoundError(f"{path.name}: no such file")
        size = path.stat().st_size
    except OSError as exc:
        raise VolumeFileNotFoundError(f"{path.name}: cannot be read ({exc.strerror})") from exc
    return _read(lambda: open(path, "rb"), size, path.name, limits, nonfinite, meta, frame)


def load_volume_from_bytes(
    data: bytes,
    *,
    name: str = "upload.nii.gz",
    limits: ReadLimits | None = None,
    nonfinite: NonFinitePolicy = "refuse",
    meta: VolumeMeta | None = None,
    frame: int | None = None,
) -> tuple[Volume, ReadReport]:
    """Same checks as :func:`load_volume` for bytes already in memory (e.g. an upload)."""
    return _read(lambda: io.BytesIO(data), len(data), name, limits, nonfinite, meta, frame)


@dataclass(frozen=True)
class VolumeProbe:
    """What reading a file would allocate, known from its header alone (no voxel data decompressed)."""

    shape: tuple[int, ...]  # as stored (every frame)
    dtype: str  # the stored voxel type
    data_bytes: int  # declared voxel bytes: the reader's buffer holds them all at once
    peak_bytes: int  # the reader's peak: buffer, the scaled copy and the finiteness mask where they arise
    compressed: bool


def probe_volume(path: str | os.PathLike[str], *, limits: ReadLimits | None = None) -> VolumeProbe:
    """The memory a :func:`load_volume` of ``path`` would need, from the header only.

    A service decides from this whether it can afford the read *before* the reader allocates: a 1 MB
    ``.nii.gz`` may be a valid 512^3 float64 image that inflates to a gigabyte. Only the first few
    hundred decompressed bytes are read; the header is validated as the reader would (same errors).
    """
    path = Path(path)
    limits = limits or ReadLimits()
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise VolumeFileNotFoundError(f"{path.name}: cannot be read ({exc.strerror})") from exc
    report = ReadReport(source=path.name)
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb")) if compressed else raw
        with _translate_stream_errors(path.name):
            prefix = _read_upto(stream, _PREFIX)
    hdr = _parse_header(prefix, path.name, report)
    layout = _validate_layout(hdr, path.name, limits, frame=0, report=report)
    slope, inter = _slope_inter(hdr, path.name)
    voxels = math.prod(layout.volume_shape)
    peak = layout.offset + layout.nbytes
    if slope != 1.0 or inter != 0.0:  # _array_from_buffer: a float copy of one frame
        peak += voxels * (8 if layout.dtype == np.float64 else 4)
    if layout.dtype.kind == "f" or slope != 1.0 or inter != 0.0:  # _apply_nonfinite_policy: a bool mask
        peak += voxels
    return VolumeProbe(shape=layout.stored_shape, dtype=str(layout.dtype.newbyteorder("=")),
                       data_bytes=layout.nbytes, peak_bytes=peak, compressed=compressed)


# --------------------------------------------------------------------------- reading internals


def _read(
    opener: Callable[[], BinaryIO],
    file_size: int,
    name: str,
    limits: ReadLimits | None,
    nonfinite: str,
    meta: VolumeMeta | None,
    frame: int | None,
) -> tuple[Volume, ReadReport]:
    limits = limits or ReadLimits()
    if nonfinite not in ("refuse", "zero"):
        raise ValueError(f"nonfinite must be 'refuse' or 'zero', got {nonfinite!r}")
    report = ReadReport(source=name)
    if file_size > limits.max_file_bytes:
        raise SizeLimitError(f"{name}: file is {file_size / 1e6:.0f} MB, more than the "
                             f"{limits.max_file_bytes / 1e6:.0f} MB allowed")
    with opener() as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        report.compressed = compressed
        stream = cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb")) if compressed else raw
        with _translate_stream_errors(name):
            prefix = _read_upto(stream, _PREFIX)
        hdr = _parse_header(prefix, name, report)
        layout = _validate_layout(hdr, name, limits, frame, report)
        affine = _validate_affine(hdr, name, limits, report)
        slope, inter = _slope_inter(hdr, name)
        needed = layout.offset + layout.nbytes
        if not compressed and file_size < needed:
            raise TruncatedDataError(
                f"{name}: file is truncated: the header declares {layout.nbytes} bytes of voxel data "
                f"from byte {layout.offset}, but the file has only {file_size} bytes"
            )
        buf = bytearray(needed)
        buf[: len(prefix)] = prefix[:needed]
        with _translate_stream_errors(name):
            got = min(len(prefix), needed) + _fill(stream, memoryview(buf)[min(len(prefix), needed):])
            if got < needed:
                raise TruncatedDataError(
                    f"{name}: file is truncated: the header declares {layout.nbytes} bytes of voxel data "
                    f"but only {max(got - layout.offset, 0)} are present"
                )
            extra = prefix[needed:] if len(prefix) > needed else stream.read(1)
        if extra:
            raise SizeLimitError(
                f"{name}: the file holds more data than its header declares ({layout.nbytes} bytes of voxels); "
                "refusing it (corrupt or crafted file)"
            )
    array = _array_from_buffer(buf, layout, slope, inter, report)
    array = _apply_nonfinite_policy(array, name, nonfinite, report)
    volume_meta = meta if meta is not None else VolumeMeta()
    if volume_meta.source_name is None:
        volume_meta = replace(volume_meta, source_name=name)
    if volume_meta.series_description is None:
        descrip = _header_description(hdr)
        if descrip:
            volume_meta = replace(volume_meta, series_description=descrip)
    log.debug("read %s: %s %s %s affine from %s", name, report.format, array.shape, array.dtype, report.affine_source)
    return Volume(array, affine, volume_meta), report


class _translate_stream_errors:
    """Turn zlib/gzip failures into refusals a user understands."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None or isinstance(exc, VolumeError):
            return False
        if isinstance(exc, EOFError):
            raise TruncatedDataError(f"{self.name}: the compressed stream ends early (file truncated)") from exc
        if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
            raise NotNiftiError(f"{self.name}: corrupt gzip stream ({exc})") from exc
        if isinstance(exc, OSError):
            raise NotNiftiError(f"{self.name}: cannot be read ({exc})") from exc
        return False


def _read_upto(stream: BinaryIO, n: int) -> bytes:
    parts = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _fill(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` in bounded chunks; returns bytes read (short = truncated)."""
    pos = 0
    total = len(view)
    while pos < total:
        n = stream.readinto(view[pos : min(total, pos + _CHUNK)])  # type: ignore[attr-defined]  # BinaryIO lacks readinto
        if not n:
            break
        pos += n
    return pos


def _parse_header(prefix: bytes, name: str, report: ReadReport) -> nib.Nifti1Header:
    if len(prefix) < 348:
        raise NotNiftiError(f"{name}: only {len(prefix)} bytes, too short to be a NIfTI image")
    sizes = {int.from_bytes(prefix[:4], "little"), int.from_bytes(prefix[:4], "big")}
    if 348 in sizes:
        klass, report.format = nib.Nifti1Header, "NIfTI-1"
    elif 540 in sizes and len(prefix) >= 540:
        klass, report.format = nib.Nifti2Header, "NIfTI-2"
    else:
        raise NotNiftiError(f"{name}: not a NIfTI file (header size field is not 348 or 540)")
    try:
        hdr = klass(prefix[: klass.template_dtype.itemsize], check=False)
    except Exception as exc:  # nibabel raises several types for garbage
        raise NotNiftiError(f"{name}: unreadable NIfTI header ({exc})") from exc
    magic = bytes(hdr["magic"].item())[:3]
    if magic in (b"ni1", b"ni2"):
        raise NotNiftiError(f"{name}: this is the header of a two-file NIfTI pair (.hdr/.img); "
                            "send a single .nii or .nii.gz")
    if magic not in (b"n+1", b"n+2"):
        raise NotNiftiError(f"{name}: not a NIfTI file (magic string {magic!r} is not 'n+1'/'n+2')")
    return hdr


@dataclass(frozen=True)
class _Layout:
    stored_shape: tuple[int, ...]
    volume_shape: tuple[int, int, int]
    frames: int
    frame: int
    dtype: np.dtype
    offset: int
    nbytes: int


def _validate_layout(hdr: nib.Nifti1Header, name: str, limits: ReadLimits, frame: int | None,
                     report: ReadReport) -> _Layout:
    dim = [int(d) for d in hdr["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise HeaderError(f"{name}: header declares {ndim} dimensions (NIfTI allows 1 to 7)")
    shape = tuple(dim[1 : ndim + 1])
    report.stored_shape = shape
    if ndim < 3:
        raise DimensionError(f"{name}: a {ndim}D image {shape}; voxagent needs a 3D volume")
    if any(s < 1 for s in shape):
        raise DimensionError(f"{name}: image shape {shape} has an empty axis")
    if any(s > limits.max_dim for s in shape):
        raise SizeLimitError(f"{name}: image shape {shape} exceeds {limits.max_dim} voxels along an axis")
    nvox = math.prod(shape)
    if nvox > limits.max_voxels:
        raise SizeLimitError(f"{name}: image has {nvox:,} voxels, more than the {limits.max_voxels:,} allowed")
    extra = shape[3:]
    if len(extra) > 1 and math.prod(extra[1:]) > 1:
        raise DimensionError(f"{name}: a {ndim}D image {shape}; voxagent reads 3D volumes "
                             "(or one frame of a 4D series)")
    frames = extra[0] if extra else 1
    if frames > 1 and frame is None:
        raise DimensionError(f"{name}: a 4D series of {frames} volumes {shape}; choose one frame to read")
    chosen = 0 if frame is None else int(frame)
    if not 0 <= chosen < frames:
        raise DimensionError(f"{name}: frame {chosen} requested but the image has {frames} frame(s)")
    report.squeezed_axes = sum(1 for s in extra if s == 1)
    report.frame = chosen if frames > 1 else None

    try:
        dtype = hdr.get_data_dtype()
    except (HeaderDataError, KeyError, ValueError) as exc:
        raise DataTypeError(f"{name}: unknown voxel data type code {int(hdr['datatype'])}") from exc
    if dtype.fields is not None or dtype.kind not in "uif" or dtype.itemsize > 8:
        raise DataTypeError(f"{name}: voxel data type {dtype} is not supported (need integers or float32/float64)")
    report.stored_dtype = str(dtype.newbyteorder("="))
    nbytes = nvox * dtype.itemsize
    if nbytes > limits.max_data_bytes:
        raise SizeLimitError(f"{name}: image data is {nbytes / 1e6:.0f} MB, more than the "
                             f"{limits.max_data_bytes / 1e6:.0f} MB allowed")

    min_offset = int(hdr.single_vox_offset)
    raw_offset = float(hdr["vox_offset"])
    if not math.isfinite(raw_offset) or raw_offset < 0 or raw_offset != int(raw_offset):
        raise HeaderError(f"{name}: invalid data offset (vox_offset={raw_offset})")
    offset = int(raw_offset) or min_offset  # 0 means "unset": data follows the header directly
    if offset < min_offset:
        raise HeaderError(f"{name}: data offset {offset} overlaps the header (must be >= {min_offset})")
    if offset > min_offset + limits.max_extension_bytes:
        raise HeaderError(f"{name}: data offset {offset} is implausibly far past the header")
    return _Layout(shape, (shape[0], shape[1], shape[2]), frames, chosen, dtype, offset, nbytes)


def _validate_affine(hdr: nib.Nifti1Header, name: str, limits: ReadLimits, report: ReadReport) -> np.ndarray:
    if int(hdr["sform_code"]) != 0:
        report.affine_source = "sform"
    elif int(hdr["qform_code"]) != 0:
        report.affine_source = "qform"
    else:
        report.affine_source = "pixdim"
        report.notes.append("no sform/qform code: orientation taken from voxel sizes only (ANALYZE fallback)")
        log.warning("%s: no sform/qform set; using the pixdim-only fallback affine", name)
    try:
        with np.errstate(all="ignore"):
            affine = np.asarray(hdr.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel raises on broken quaternions
        raise AffineError(f"{name}: the voxel-to-world transform ({report.affine_source}) is invalid ({exc})") from exc
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise AffineError(f"{name}: the voxel-to-world transform ({report.affine_source}) holds NaN or infinite values")
    check_affine(affine, name, limits)
    return affine


def check_affine(affine: np.ndarray, name: str = "volume", limits: ReadLimits | None = None) -> None:
    """Refuse a non-finite or singular affine, or spacing outside the plausible range."""
    limits = limits or ReadLimits()
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise AffineError(f"{name}: the voxel-to-world transform must be a finite 4x4 matrix")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all((spacing > limits.min_spacing_mm) & (spacing < limits.max_spacing_mm)):
        shown = ", ".join(f"{s:.4g}" for s in spacing)
        raise SpacingError(
            f"{name}: voxel spacing ({shown}) mm is outside the plausible range "
            f"({limits.min_spacing_mm}, {limits.max_spacing_mm}) mm"
        )
    # |det| / product of column lengths is 1 for orthogonal axes and 0 for parallel ones.
    if abs(np.linalg.det(affine[:3, :3])) / float(np.prod(spacing)) < 1e-3:
        raise AffineError(f"{name}: the voxel-to-world transform is singular (voxel axes are (nearly) parallel)")


def _slope_inter(hdr: nib.Nifti1Header, name: str) -> tuple[float, float]:
    # nibabel reads a NaN or 0 slope as "not scaled" (common and harmless) but also silently
    # ignores an infinite one, which no writer produces on purpose.
    if math.isinf(float(hdr["scl_slope"])):
        raise HeaderError(f"{name}: intensity scaling is not finite (scl_slope={float(hdr['scl_slope'])})")
    try:
        slope, inter = hdr.get_slope_inter()
    except HeaderDataError as exc:
        raise HeaderError(f"{name}: invalid intensity scaling ({exc})") from exc
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise HeaderError(f"{name}: intensity scaling is not finite (scl_slope={slope}, scl_inter={inter})")
    return slope, inter


def _array_from_buffer(buf: bytearray, layout: _Layout, slope: float, inter: float, report: ReadReport) -> np.ndarray:
    count = math.prod(layout.stored_shape)
    array = np.frombuffer(buf, dtype=layout.dtype, count=count, offset=layout.offset)
    array = array.reshape(layout.volume_shape + (layout.frames,), order="F")[..., layout.frame]
    if layout.frames > 1:
        array = array.copy(order="F")  # let the other frames' bytes go
    if not layout.dtype.isnative:
        array = array.byteswap().view(layout.dtype.newbyteorder("="))
    if slope != 1.0 or inter != 0.0:
        out = np.float64 if array.dtype == np.float64 else np.float32
        array = array.astype(out)
        array *= out(slope)
        array += out(inter)
        report.scaled = True
    return array


def _apply_nonfinite_policy(array: np.ndarray, name: str, policy: str, report: ReadReport) -> np.ndarray:
    if array.dtype.kind != "f":
        return array
    finite = np.isfinite(array)
    bad = int(array.size - np.count_nonzero(finite))
    report.nonfinite_count = bad
    if bad == 0:
        return array
    if policy == "refuse":
        raise NonFiniteError(f"{name}: {bad:,} voxels are NaN or infinite")
    array[~finite] = 0
    report.nonfinite_action = "zeroed"
    report.notes.append(f"{bad} NaN/Inf voxels set to 0")
    log.warning("%s: %d NaN/Inf voxels set to 0", name, bad)
    return array


def _header_description(hdr: nib.Nifti1Header) -> str | None:
    try:
        text = bytes(hdr["descrip"].item()).decode("ascii", errors="ignore").strip("\x00 ").strip()
    except Exception:  # a description is a nicety, never a reason to refuse
        return None
    return text or None


# --------------------------------------------------------------------------- writing


def save_volume(vol: Volume, path: str | os.PathLike[str]) -> Path:
    """Write ``vol`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with its affine as sform and qform.

    Boolean masks are stored as uint8; 64-bit integers that fit are stored as int32 and float16
    as float32, so every common viewer opens the result.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise VolumeError(f"{path.name}: NIfTI output needs a .nii or .nii.gz name")
    array = np.asarray(vol.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
            array = array.astype(np.int32)
    image = nib.Nifti1Image(array, vol.affine)
    image.set_sform(vol.affine, code=1)
    image.set_qform(vol.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if vol.meta.series_description:
        image.header["descrip"] = vol.meta.series_description.encode("ascii", errors="replace")[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


__all__ = [
    "ReadLimits",
    "ReadReport",
    "check_affine",
    "load_volume",
    "load_volume_from_bytes",
    "load_volume_with_report",
    "save_volume",
]
