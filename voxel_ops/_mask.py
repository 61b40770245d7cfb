"""How any Volume is read as a mask, and the grid checks shared by measurements and mask ops.

A mask is a Volume whose voxels are inside where the value is nonzero (bool / integer arrays)
or greater than 0.5 (float arrays, e.g. the vision network's probabilities).
"""
from __future__ import annotations

import numpy as np

from voxel_ops.errors import GridMismatchError, MeasurementError
from voxel_ops.volume import Volume


def as_bool(mask: Volume) -> np.ndarray:
    """The inside of ``mask`` as a boolean array (layout kept; may share memory: never write to it)."""
    array = mask.array
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind == "f":
        return array > 0.5
    if array.dtype == np.uint8 and array.size and int(array.max()) <= 1:
        return array.view(np.bool_)  # 0/1 bytes already are booleans: skip a full pass (read-only use)
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


def axis_counts(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inside-voxel count per index along each array axis, from two cheap reductions.

    numpy reduces fastest over the axis with the largest stride (it adds whole contiguous rows),
    so the outer axis is summed away first and the middle one second; uint16 accumulators hold
    any count up to the 2048-voxel axis limit.
    """
    u = inside.view(np.uint8)
    order = np.argsort(np.abs(u.strides))  # contiguous, middle, outer
    inner, middle, outer = (int(a) for a in order)
    acc = np.uint16 if max(inside.shape) < 65536 else np.int64
    counts: list[np.ndarray | None] = [None, None, None]
    plane = u.sum(axis=outer, dtype=acc)  # axes (min(inner, middle), max(...)) remain
    kept = sorted((inner, middle))
    counts[kept[0]] = plane.sum(axis=1, dtype=np.int64)
    counts[kept[1]] = plane.sum(axis=0, dtype=np.int64)
    side = u.sum(axis=middle, dtype=acc)  # axes inner and outer remain
    counts[outer] = side.sum(axis=0 if inner < outer else 1, dtype=np.int64)
    first, second, third = counts
    assert first is not None and second is not None and third is not None  # each axis filled above
    return first, second, third


def index_box(inside: np.ndarray, counts: tuple[np.ndarray, ...] | None = None) -> tuple[slice, slice, slice] | None:
    """Smallest index box holding every inside voxel, or None for an empty mask."""
    counts = axis_counts(inside) if counts is None else counts
    box = []
    for per_index in counts:
        hits = np.flatnonzero(per_index)
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return box[0], box[1], box[2]


def to_mask_volume(like: Volume, inside: np.ndarray) -> Volume:
    """A uint8 0/1 mask on ``like``'s grid."""
    array = inside.view(np.uint8) if inside.dtype == np.bool_ else inside.astype(np.uint8)  # bool bytes are 0/1
    return Volume(array, like.affine.copy(), like.meta)


def values_at(array: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``array[inside]`` in memory order: NIfTI data is Fortran-ordered and C-order boolean
    indexing of it strides through memory (several times slower)."""
    if array.flags.f_contiguous and inside.flags.f_contiguous and not array.flags.c_contiguous:
        return array.T[inside.T]
    return array[inside]
