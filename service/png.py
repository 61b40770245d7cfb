"""A mask over its scan as a PNG: middle axial slice through the mask, no imaging library needed."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def encode_png(rgb: np.ndarray) -> bytes:
    """Minimal PNG writer (8-bit RGB, filter type 0 per row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(array, ornt)


def overlay_snapshot(scan: np.ndarray, scan_affine: np.ndarray, mask: np.ndarray | None,
                     mask_affine: np.ndarray | None = None) -> bytes:
    """Axial slice (RAS, superior axis) through the mask's centre of mass, mask in red at 50 %."""
    img = _to_ras(np.asarray(scan, dtype=np.float32), scan_affine)
    m = None
    if mask is not None and mask.shape == scan.shape:
        m = _to_ras(np.asarray(mask) > 0.5, mask_affine if mask_affine is not None else scan_affine)
    if m is not None and m.any():
        k = int(round(np.nonzero(m)[2].mean()))
    else:
        k = img.shape[2] // 2
    sl = img[:, :, k]
    finite = sl[np.isfinite(sl)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    grey = np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(np.nan_to_num(grey)[..., None], 3, axis=2)
    if m is not None:
        ms = m[:, :, k]
        rgb[ms] = rgb[ms] * 0.5 + np.array([255, 0, 0]) * 0.5
    # rows: anterior at the top; columns: patient right on the image left (radiological view)
    return encode_png(np.flipud(np.transpose(rgb, (1, 0, 2))))
