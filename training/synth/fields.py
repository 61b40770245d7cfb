"""Smooth fields: separable linear upsampling of a coarse grid (corners aligned).

`scipy.ndimage.zoom` goes through generic spline machinery and is ~10x slower for this job; three
1D interpolations, the last one over the full volume only once, are all a smooth field needs.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n_in == 1:
        z = np.zeros(n_out, dtype=np.intp)
        return z, z, np.zeros(n_out, dtype=np.float32)
    pos = np.linspace(0, n_in - 1, n_out, dtype=np.float64)
    lo = np.minimum(np.floor(pos).astype(np.intp), n_in - 2)
    return lo, lo + 1, (pos - lo).astype(np.float32)


def upsample_linear(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resize of a small 3D array to `shape`, corner samples aligned (float32)."""
    out = np.asarray(coarse, dtype=np.float32)
    for axis, n_out in enumerate(shape):
        lo, hi, w = _axis_weights(out.shape[axis], n_out)
        bshape = [1] * out.ndim
        bshape[axis] = n_out
        w = w.reshape(bshape)
        a = np.take(out, lo, axis=axis)
        b = np.take(out, hi, axis=axis)
        out = a + (b - a) * w
    return out


_NOISE_LEN = 1 << 23


@lru_cache(maxsize=1)
def _noise_pool() -> np.ndarray:
    return np.random.default_rng(20240229).standard_normal(_NOISE_LEN, dtype=np.float32)


def pooled_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of `shape`, a random window of a fixed 8M-sample pool.

    Drawing fresh normals costs ~35 ns per voxel, most of a case's budget; a window at a random
    offset (plus a random sign) is as good as fresh for noise and texture, and stays seeded.
    The returned array is a read-only view: multiply, do not write into it.
    """
    n = int(np.prod(shape))
    if n > _NOISE_LEN // 2:
        return rng.standard_normal(shape, dtype=np.float32)
    pool = _noise_pool()
    start = int(rng.integers(0, _NOISE_LEN - n))
    view = pool[start:start + n].reshape(shape)
    view.flags.writeable = False
    return view if rng.random() < 0.5 else -view
