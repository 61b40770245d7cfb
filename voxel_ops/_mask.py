"""How any Volume is read as a mask, and the grid checks shared by measurements and mask ops.

A mask is a Volume whose voxels are inside where the value is nonzero (bool / integer arrays)
or greater than 0.5 (float arrays, e.g. the vision network's probabilities).
"""
from __future__ import annotations

import numpy as np

from voxel_ops.errors import GridMismatchError, MeasurementError
from voxel_ops.volume import Volume


def as_bool(mask: Volume) -> np.ndarray:
    """The inside of ``mask`` as a boolean array (memory layout of the input kept)."""
    array = mask.array
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind == "f":
        return array > 0.5
    return array != 0


def require_same_grid(a: Volume, b: Volume, what: str = "mask") -> None:
    if not a.same_grid(b):
        raise GridMismatchError(
            f"the {what} is on a different voxel grid ({b.shape}) than the image ({a.shape}); "
            "resample it first (resample_like with order=0)"
        )


def require_nonempty(inside: np.ndarray, what: str) -> None:
    if not inside.any():
        raise MeasurementError(f"{what} is undefined for an empty mask")


def index_box(inside: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Smallest index box holding every inside voxel, or None for an empty mask."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(inside.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return box[0], box[1], box[2]


def to_mask_volume(like: Volume, inside: np.ndarray) -> Volume:
    """A uint8 0/1 mask on ``like``'s grid."""
    return Volume(inside.astype(np.uint8, copy=False), like.affine.copy(), like.meta)


def values_at(array: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``array[inside]`` in memory order: NIfTI data is Fortran-ordered and C-order boolean
    indexing of it strides through memory (several times slower)."""
    if array.flags.f_contiguous and inside.flags.f_contiguous and not array.flags.c_contiguous:
        return array.T[inside.T]
    return array[inside]
