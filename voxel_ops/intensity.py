"""Intensity normalization that is robust to a few extreme voxels (hot spots, metal, air)."""
from __future__ import annotations

import numpy as np

from voxel_ops.errors import VolumeError
from voxel_ops.volume import Volume


def normalize_intensity(vol: Volume, lower_pct: float = 0.5, upper_pct: float = 99.5) -> Volume:
    """Clip to the given percentiles of all voxels and scale linearly to float32 [0, 1].

    A constant image maps to all zeros (there is no contrast to scale).
    """
    if not 0.0 <= lower_pct < upper_pct <= 100.0:
        raise VolumeError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower_pct}, {upper_pct}")
    data = np.asarray(vol.array, dtype=np.float32)
    lo, hi = np.percentile(data, [lower_pct, upper_pct])
    if not hi > lo:
        return vol.with_array(np.zeros(vol.shape, dtype=np.float32))
    lo32, hi32 = np.float32(lo), np.float32(hi)
    out = np.clip(data, lo32, hi32)  # new array: the input is never modified
    out -= lo32
    out /= hi32 - lo32  # division maps hi exactly to 1
    np.clip(out, 0.0, 1.0, out=out)  # float32 rounding must not leave [0, 1]
    return vol.with_array(out)


__all__ = ["normalize_intensity"]
