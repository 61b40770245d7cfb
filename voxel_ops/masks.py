"""Mask algebra, morphology by a radius in millimetres, and field-of-view operations.

Morphology uses the exact anisotropic ball: a voxel joins a dilation when some inside voxel
centre lies within ``mm`` millimetres of it (physical distance through the voxel spacing), and
survives an erosion when every voxel centre within ``mm`` is inside; outside the field of view
counts as outside. Small radii use a binary ellipsoid structuring element, large ones the
equivalent Euclidean distance transform (same result, cost independent of the radius). All work
happens in the mask's bounding box, so small masks in large scans stay cheap.
"""
from __future__ import annotations

import math

import cc3d
import numpy as np
from scipy import ndimage

from voxel_ops._mask import as_bool, index_box, require_same_grid, to_mask_volume
from voxel_ops.errors import VolumeError
from voxel_ops.volume import Volume

_MAX_STRUCTURE_VOXELS = 125  # above this a distance transform beats a structuring element


def union(a: Volume, b: Volume) -> Volume:
    require_same_grid(a, b, "second mask")
    return to_mask_volume(a, as_bool(a) | as_bool(b))


def intersection(a: Volume, b: Volume) -> Volume:
    require_same_grid(a, b, "second mask")
    return to_mask_volume(a, as_bool(a) & as_bool(b))


def difference(a: Volume, b: Volume) -> Volume:
    """Voxels in ``a`` and not in ``b``."""
    require_same_grid(a, b, "second mask")
    return to_mask_volume(a, as_bool(a) & ~as_bool(b))


def threshold(vol: Volume, value: float) -> Volume:
    """uint8 mask of voxels strictly above ``value``."""
    return to_mask_volume(vol, vol.array > value)


def ball_structure(spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    """Boolean ellipsoid (in voxels) of all offsets within ``mm`` physical distance."""
    reach = [int(math.floor(mm / s + 1e-9)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-r, r + 1) * s for r, s in zip(reach, spacing)], indexing="ij")
    return sum(g**2 for g in grids) <= mm**2 * (1 + 1e-9)


def dilate_mm(mask: Volume, mm: float) -> Volume:
    """Grow the mask by ``mm`` millimetres in every physical direction."""
    return _morph(mask, mm, grow=True)


def erode_mm(mask: Volume, mm: float) -> Volume:
    """Shrink the mask by ``mm`` millimetres in every physical direction."""
    return _morph(mask, mm, grow=False)


def fill_holes(mask: Volume) -> Volume:
    """Fill background cavities fully enclosed by the mask (6-connected background)."""
    inside = as_bool(mask)
    out = inside.copy()
    box = index_box(inside)
    if box is None:
        return to_mask_volume(mask, out)
    sub = np.pad(inside[box], 1)  # zero shell: all background reaching the box edge joins it
    background = cc3d.connected_components(~sub, connectivity=6, binary_image=True)
    outside = background[0, 0, 0]  # the shell's label; every other background piece is a hole
    out[box] = (background != outside)[1:-1, 1:-1, 1:-1]
    return to_mask_volume(mask, out)


def crop_to_mask(vol: Volume, mask: Volume, margin_mm: float = 0.0) -> Volume:
    """The sub-volume around ``mask`` plus ``margin_mm``; the affine moves so world positions hold."""
    require_same_grid(vol, mask)
    if margin_mm < 0 or not math.isfinite(margin_mm):
        raise VolumeError(f"margin must be a finite, non-negative number of mm, got {margin_mm}")
    box = index_box(as_bool(mask))
    if box is None:
        raise VolumeError("cannot crop to an empty mask")
    starts, stops = [], []
    for sl, size, spacing in zip(box, vol.shape, vol.spacing):
        pad = int(math.ceil(margin_mm / spacing - 1e-9))
        starts.append(max(0, sl.start - pad))
        stops.append(min(size, sl.stop + pad))
    array = vol.array[starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]].copy()
    shift = np.eye(4)
    shift[:3, 3] = starts
    return Volume(array, vol.affine @ shift, vol.meta)


def keep_region(vol: Volume, mask: Volume) -> Volume:
    """``vol`` with everything outside ``mask`` set to 0."""
    require_same_grid(vol, mask)
    return vol.with_array(np.where(as_bool(mask), vol.array, np.zeros((), dtype=vol.array.dtype)))


def remove_region(vol: Volume, mask: Volume) -> Volume:
    """``vol`` with everything inside ``mask`` set to 0."""
    require_same_grid(vol, mask)
    return vol.with_array(np.where(as_bool(mask), np.zeros((), dtype=vol.array.dtype), vol.array))


def _morph(mask: Volume, mm: float, grow: bool) -> Volume:
    if not math.isfinite(mm) or mm < 0:
        raise VolumeError(f"radius must be a finite, non-negative number of mm, got {mm}")
    inside = as_bool(mask)
    box = index_box(inside)
    if box is None or mm == 0:
        return to_mask_volume(mask, inside.copy())
    spacing = mask.spacing
    reach = [int(math.floor(mm / s + 1e-9)) for s in spacing]
    out = np.zeros(mask.shape, dtype=bool)
    if grow:
        region = tuple(slice(max(0, b.start - r), min(n, b.stop + r)) for b, r, n in zip(box, reach, mask.shape))
        sub = inside[region]
        structure = ball_structure(spacing, mm)
        if structure.size <= _MAX_STRUCTURE_VOXELS:
            grown = ndimage.binary_dilation(sub, structure=structure)
        else:
            grown = ndimage.distance_transform_edt(~sub, sampling=spacing) <= mm * (1 + 1e-9)
        out[region] = grown
    else:
        sub = np.pad(inside[box], 1)  # outside the FOV (and the box) counts as outside
        structure = ball_structure(spacing, mm)
        if structure.size <= _MAX_STRUCTURE_VOXELS:
            kept = ndimage.binary_erosion(sub, structure=structure, border_value=0)
        else:
            kept = ndimage.distance_transform_edt(sub, sampling=spacing) > mm * (1 + 1e-9)
        out[box] = kept[1:-1, 1:-1, 1:-1]
    return to_mask_volume(mask, out)


__all__ = [
    "ball_structure",
    "crop_to_mask",
    "difference",
    "dilate_mm",
    "erode_mm",
    "fill_holes",
    "intersection",
    "keep_region",
    "remove_region",
    "threshold",
    "union",
]
