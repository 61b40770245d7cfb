"""Exact reorientation to RAS+ array order (axis permutations and flips, never interpolation).

Models and measurements want a canonical layout, clinicians want results on the scan they sent.
``conform_ras`` only permutes and flips axes, so it is lossless, and :class:`RasTransform` keeps
what is needed to put any same-grid output back on the original grid bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornts

from voxel_ops.errors import GridMismatchError
from voxel_ops.volume import Volume

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


@dataclass(frozen=True)
class RasTransform:
    """How a volume was conformed: its original grid and the axis mapping that was applied."""

    ornt: np.ndarray  # nibabel orientation (3, 2): per source axis, target axis and flip
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    ras_shape: tuple[int, int, int]
    ras_affine: np.ndarray

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.ornt, _RAS))


def conform_ras(vol: Volume) -> tuple[Volume, RasTransform]:
    """Reorder ``vol``'s axes so that they point (as nearly as the grid allows) to R, A and S.

    For oblique affines each array axis is assigned to the world axis it is closest to
    (nibabel's ``io_orientation``); the result keeps the obliquity in its affine. The returned
    array may share memory with the input (no copy when it is already RAS).
    """
    ornt = ornts.io_orientation(vol.affine)
    array = np.asarray(ornts.apply_orientation(vol.array, ornt))
    affine = vol.affine @ ornts.inv_ornt_aff(ornt, vol.shape)
    ras = Volume(array, affine, vol.meta)
    transform = RasTransform(ornt, vol.shape, vol.affine.copy(), ras.shape, affine.copy())
    return ras, transform


def unconform(vol_ras: Volume, transform: RasTransform) -> Volume:
    """Put a volume on the RAS grid of ``transform`` back on the original grid, exactly."""
    if vol_ras.shape != transform.ras_shape or not np.allclose(vol_ras.affine, transform.ras_affine, atol=1e-4):
        raise GridMismatchError(
            f"cannot map back: volume grid {vol_ras.shape} does not match the conformed grid {transform.ras_shape}"
        )
    back = ornts.ornt_transform(_RAS, transform.ornt)
    array = np.asarray(ornts.apply_orientation(vol_ras.array, back))
    return Volume(array, transform.source_affine.copy(), vol_ras.meta)


__all__ = ["RasTransform", "conform_ras", "unconform"]
