"""Analytic test objects rasterized on arbitrary grids, and helpers to store one object in any orientation."""
from __future__ import annotations

import numpy as np
from nibabel import orientations as ornts

from voxel_ops import Volume

SPACING = (0.7, 0.9, 3.0)
SEMI_AXES_MM = (12.0, 15.0, 40.0)  # >= 10 voxels along every axis at SPACING


def grid_affine(spacing, shape, rotation=None, centre_world=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Affine whose grid centre lands on ``centre_world``; columns = rotation x spacing."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    lin = rot @ np.diag(spacing)
    centre_index = (np.asarray(shape) - 1) / 2.0
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = np.asarray(centre_world) - lin @ centre_index
    return aff


def ellipsoid(affine, shape, centre, semi_axes, axes=None) -> Volume:
    """uint8 mask of voxel centres inside an ellipsoid given in world mm (principal axes = columns of ``axes``)."""
    axes = np.eye(3) if axes is None else np.asarray(axes, dtype=float)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3] - np.asarray(centre)
    local = xyz @ axes  # coordinates along the principal axes
    inside = ((local / np.asarray(semi_axes)) ** 2).sum(axis=1) <= 1.0
    return Volume(inside.reshape(shape).astype(np.uint8), affine)


def reoriented(vol: Volume, axcodes: str) -> Volume:
    """The same physical object stored with array axes pointing to ``axcodes`` (exact, no resampling)."""
    start = ornts.io_orientation(vol.affine)
    end = ornts.axcodes2ornt(tuple(axcodes))
    transform = ornts.ornt_transform(start, end)
    array = np.ascontiguousarray(ornts.apply_orientation(vol.array, transform))
    affine = vol.affine @ ornts.inv_ornt_aff(transform, vol.shape)
    return Volume(array, affine, vol.meta)


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]
