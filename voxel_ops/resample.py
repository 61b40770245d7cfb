"""Resampling onto another grid, only when a caller asks for it (conforming never resamples).

Images are interpolated linearly (``order=1``) and come back as float32; label maps and masks
use nearest neighbour (``order=0``) and keep their dtype, so labels never blend.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from voxel_ops.errors import VolumeError
from voxel_ops.volume import Volume


def resample_like(vol: Volume, target: Volume, *, order: int = 1) -> Volume:
    """Values of ``vol`` at the voxel centres of ``target``'s grid (outside the FOV: 0)."""
    return _resample(vol, target.affine, target.shape, order)


def resample_to_spacing(vol: Volume, spacing: float | Sequence[float], *, order: int = 1) -> Volume:
    """Resample to voxel size ``spacing`` (mm, per array axis) over the same field of view.

    The new grid keeps the axis directions and the outer edges of the original field of view;
    its shape is the old extent divided by the new spacing, rounded (at least 1 voxel).
    """
    new = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if not np.all(np.isfinite(new)) or np.any(new <= 0):
        raise VolumeError(f"target spacing must be positive, got {tuple(new)}")
    old = np.asarray(vol.spacing)
    extent = old * np.asarray(vol.shape)
    sx, sy, sz = (int(max(1, round(e / s))) for e, s in zip(extent, new))
    shape = (sx, sy, sz)
    ratio = new / old
    # voxel centre i' of the new grid sits at old index (i' + 0.5) * ratio - 0.5
    scale = np.eye(4)
    scale[:3, :3] = np.diag(ratio)
    scale[:3, 3] = (ratio - 1.0) / 2.0
    return _resample(vol, vol.affine @ scale, shape, order)


def _resample(vol: Volume, affine: np.ndarray, shape: tuple[int, int, int], order: int) -> Volume:
    if order not in (0, 1, 3):
        raise VolumeError(f"interpolation order must be 0 (nearest), 1 (linear) or 3 (cubic), got {order}")
    target_to_source = np.linalg.inv(vol.affine) @ affine
    source = vol.array
    out_dtype: np.dtype | type[np.generic]
    if order == 0:
        out_dtype = source.dtype if source.dtype != np.bool_ else np.uint8
        source = source.astype(out_dtype, copy=False)
    else:
        out_dtype = np.float64 if source.dtype == np.float64 else np.float32
        source = source.astype(out_dtype, copy=False)
    out = ndimage.affine_transform(
        source,
        target_to_source[:3, :3],
        offset=target_to_source[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="constant",
        cval=0,
        output=out_dtype,
        prefilter=order > 1,
    )
    return Volume(out, affine, vol.meta)


__all__ = ["resample_like", "resample_to_spacing"]
