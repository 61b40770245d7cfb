"""Interim RAS conforming and intensity scaling, used only until voxel_ops exports its versions.

Same contract as ``voxel_ops.conform_ras`` / ``unconform`` / ``normalize_intensity``: axis
permutation and flips only (lossless), and percentile scaling to float32 [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornts

from voxel_ops.volume import Volume

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


@dataclass(frozen=True)
class RasTransform:
    ornt: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    ras_shape: tuple[int, int, int]
    ras_affine: np.ndarray


def conform_ras(vol: Volume) -> tuple[Volume, RasTransform]:
    ornt = ornts.io_orientation(vol.affine)
    array = np.asarray(ornts.apply_orientation(vol.array, ornt))
    affine = vol.affine @ ornts.inv_ornt_aff(ornt, vol.shape)
    ras = Volume(array, affine, vol.meta)
    return ras, RasTransform(ornt, vol.shape, vol.affine.copy(), ras.shape, affine.copy())


def unconform(vol_ras: Volume, transform: RasTransform) -> Volume:
    if vol_ras.shape != transform.ras_shape:
        raise ValueError(f"volume grid {vol_ras.shape} does not match the conformed grid {transform.ras_shape}")
    back = ornts.ornt_transform(_RAS, transform.ornt)
    return Volume(np.asarray(ornts.apply_orientation(vol_ras.array, back)), transform.source_affine.copy(), vol_ras.meta)


def normalize_intensity(vol: Volume, lower_pct: float = 0.5, upper_pct: float = 99.5) -> Volume:
    data = np.nan_to_num(np.asarray(vol.array, dtype=np.float32))
    lo, hi = np.percentile(data, [lower_pct, upper_pct])
    if not hi > lo:
        return vol.with_array(np.zeros(vol.shape, dtype=np.float32))
    return vol.with_array(((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32))
