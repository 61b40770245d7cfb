"""Measurements in physical units, always through the voxel-to-world affine.

Definitions (world = RAS+ millimetres, as NIfTI defines it; masks read as in ``_mask``):

* ``volume_ml``: inside-voxel count x |det(affine[:3, :3])| / 1000.
* ``bounding_box_mm``: the world axis-aligned box enclosing every inside voxel *cell* (not just
  its centre): per world axis, the range of voxel-centre coordinates widened on both sides by
  half of one voxel's projected size on that axis, ``0.5 * sum_j |affine[axis, j]|``. For an
  axis-aligned grid this is the centre range plus one voxel spacing, which is within one voxel
  of the true extent of the object; for oblique grids it is the box around the tilted cells.
* ``extents_mm``: the bounding box sizes along x (left-right), y (anterior-posterior) and
  z (superior-inferior), independent of how the array axes are stored.
* ``centroid_mm``: world position of the mean inside-voxel centre.
* ``snr``: mean intensity inside ``mask`` divided by the standard deviation of intensity in
  ``background`` when given (classic two-region SNR), else by the standard deviation inside
  ``mask`` (the signal-to-variability ratio of a region, i.e. 1 / coefficient of variation).
* ``asymmetry_index``: 2 (L - R) / (L + R); positive means the left value is larger.
* ``change``: ``after - before`` and ``100 (after - before) / before`` (percent is None when
  ``before`` is 0).
* ``hemisphere``: the side of the plane x = ``midline_x_mm`` holding the mask; "left" (x below
  the midline in RAS) or "right" when at most ``tolerance`` of its volume lies on the other side,
  else "bilateral".
* components use 26-connectivity by default (faces, edges and corners touch), the convention
  of FSL ``cluster`` and most lesion-counting tools.
"""
from __future__ import annotations

import cc3d
import numpy as np

from voxel_ops._mask import as_bool, index_box, require_nonempty, require_same_grid, to_mask_volume, values_at
from voxel_ops.errors import MeasurementError
from voxel_ops.volume import Volume

Vec3 = tuple[float, float, float]


def volume_ml(mask: Volume) -> float:
    """Volume of the mask in millilitres."""
    return float(np.count_nonzero(as_bool(mask))) * mask.voxel_volume_mm3 / 1000.0


def bounding_box_mm(mask: Volume) -> tuple[Vec3, Vec3]:
    """(min_xyz, max_xyz) world corners of the box around all inside voxel cells (see module doc)."""
    inside = as_bool(mask)
    require_nonempty(inside, "a bounding box")
    lo, hi = _centre_ranges(inside, mask.affine)
    half = 0.5 * np.abs(mask.affine[:3, :3]).sum(axis=1)
    return _vec(lo - half), _vec(hi + half)


def extents_mm(mask: Volume) -> dict[str, float]:
    """Size of the mask along the world left-right, anterior-posterior and superior-inferior axes."""
    lo, hi = bounding_box_mm(mask)
    size = np.asarray(hi) - np.asarray(lo)
    return {
        "left_right": float(size[0]),
        "anterior_posterior": float(size[1]),
        "superior_inferior": float(size[2]),
    }


def centroid_mm(mask: Volume) -> Vec3:
    """World coordinates (mm) of the mask's centre of mass (unweighted)."""
    inside = as_bool(mask)
    count = np.count_nonzero(inside)
    if count == 0:
        raise MeasurementError("a centroid is undefined for an empty mask")
    mean_ijk = np.empty(3)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        per_index = np.count_nonzero(inside, axis=others)
        mean_ijk[axis] = float(per_index @ np.arange(per_index.size)) / count
    return _vec(mask.affine[:3, :3] @ mean_ijk + mask.affine[:3, 3])


def intensity_stats(image: Volume, mask: Volume) -> dict[str, float]:
    """mean, median, std (population), min and max of ``image`` inside ``mask``."""
    values = _values_in(image, mask, "intensity statistics")
    return {
        "mean": float(np.mean(values, dtype=np.float64)),
        "median": float(np.median(values)),
        "std": float(np.std(values, dtype=np.float64)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def snr(image: Volume, mask: Volume, background: Volume | None = None) -> float:
    """Signal-to-noise ratio (definition in the module docstring)."""
    signal = _values_in(image, mask, "SNR")
    noise_values = signal if background is None else _values_in(image, background, "SNR background")
    noise = float(np.std(noise_values, dtype=np.float64))
    if noise == 0.0:
        raise MeasurementError("SNR is undefined: the noise region has no intensity variation")
    return float(np.mean(signal, dtype=np.float64)) / noise


def asymmetry_index(left_value: float, right_value: float) -> float:
    """2 (L - R) / (L + R)."""
    left, right = float(left_value), float(right_value)
    if left + right == 0.0:
        raise MeasurementError("asymmetry index is undefined when left + right is 0")
    return 2.0 * (left - right) / (left + right)


def ratio(a: float, b: float) -> float:
    """a / b, e.g. a structure's volume normalized by intracranial volume."""
    if float(b) == 0.0:
        raise MeasurementError("ratio is undefined: the denominator is 0")
    return float(a) / float(b)


def change(before: float, after: float) -> dict[str, float | None]:
    """Absolute and percent change between two sessions (percent None when before is 0)."""
    b, a = float(before), float(after)
    return {"absolute": a - b, "percent": None if b == 0.0 else 100.0 * (a - b) / b}


class Components:
    """Connected components, largest first: label 1 is the largest, ``volumes_ml[0]`` its volume.

    ``labels`` (int32 Volume, 0 outside, 1..count by decreasing size) is built on first access,
    so counting and sizing pieces never pays for a full-size label image.
    """

    def __init__(self, count: int, volumes_ml: tuple[float, ...], grid: Volume, box: tuple[slice, ...] | None,
                 sub_labels: np.ndarray | None, lut: np.ndarray | None) -> None:
        self.count = count
        self.volumes_ml = volumes_ml
        self._grid = grid
        self._box = box
        self._sub_labels = sub_labels
        self._lut = lut
        self._labels: Volume | None = None

    @property
    def labels(self) -> Volume:
        if self._labels is None:
            array = np.zeros(self._grid.shape, dtype=np.int32)
            if self._box is not None and self._sub_labels is not None and self._lut is not None:
                array[self._box] = self._lut[self._sub_labels]
            self._labels = Volume(array, self._grid.affine.copy(), self._grid.meta)
        return self._labels

    def component(self, rank: int = 1) -> np.ndarray:
        """Boolean array of the ``rank``-th largest piece (1 = largest) on the full grid."""
        out = np.zeros(self._grid.shape, dtype=bool)
        if self._box is not None and self._sub_labels is not None and self._lut is not None and 1 <= rank <= self.count:
            raw = int(np.flatnonzero(self._lut == rank)[0])
            out[self._box] = self._sub_labels == raw
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{v:.4g}" for v in self.volumes_ml[:5])
        more = ", ..." if self.count > 5 else ""
        return f"Components(count={self.count}, volumes_ml=({shown}{more}))"


def connected_components(mask: Volume, connectivity: int = 26) -> Components:
    """Label separate pieces of a mask (26-, 18- or 6-connectivity) and measure each."""
    if connectivity not in (6, 18, 26):
        raise MeasurementError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    inside = as_bool(mask)
    box = index_box(inside)
    if box is None:
        return Components(0, (), mask, None, None, None)
    sub = inside[box]
    sub = np.asfortranarray(sub) if inside.flags.f_contiguous else np.ascontiguousarray(sub)
    sub_labels, count = cc3d.connected_components(sub, connectivity=connectivity, return_N=True)
    sizes = np.bincount(values_at(sub_labels, sub), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    lut = np.zeros(count + 1, dtype=np.int32)
    lut[order + 1] = np.arange(1, count + 1, dtype=np.int32)
    voxel_ml = mask.voxel_volume_mm3 / 1000.0
    volumes = tuple(float(s) * voxel_ml for s in sizes[order])
    return Components(int(count), volumes, mask, box, sub_labels, lut)


def largest_component(mask: Volume, connectivity: int = 26) -> Volume:
    """uint8 mask of the largest connected piece (empty in, empty out)."""
    return to_mask_volume(mask, connected_components(mask, connectivity).component(1))


def hemisphere(mask: Volume, midline_x_mm: float = 0.0, tolerance: float = 0.05) -> str:
    """"left", "right" or "bilateral" relative to the sagittal plane x = ``midline_x_mm``.

    Voxel centres exactly on the plane count half to each side.
    """
    inside = as_bool(mask)
    count = np.count_nonzero(inside)
    if count == 0:
        raise MeasurementError("hemisphere is undefined for an empty mask")
    row = mask.affine[0, :3]
    offset = mask.affine[0, 3] - float(midline_x_mm)
    axes = np.flatnonzero(np.abs(row) > 1e-9 * np.abs(row).max())
    if axes.size == 1:  # x depends on one array axis: count per index along it
        axis = int(axes[0])
        others = tuple(a for a in range(3) if a != axis)
        per_index = np.count_nonzero(inside, axis=others)
        x = row[axis] * np.arange(per_index.size) + offset
        left = float(per_index[x < 0].sum()) + 0.5 * float(per_index[x == 0].sum())
    else:
        x = np.stack(np.nonzero(inside), axis=1) @ row + offset
        left = float(np.count_nonzero(x < 0)) + 0.5 * float(np.count_nonzero(x == 0))
    left_share = left / count
    if left_share >= 1.0 - tolerance:
        return "left"
    if left_share <= tolerance:
        return "right"
    return "bilateral"


# --------------------------------------------------------------------------- helpers


def _vec(v: np.ndarray) -> Vec3:
    return float(v[0]), float(v[1]), float(v[2])


def _values_in(image: Volume, mask: Volume, what: str) -> np.ndarray:
    require_same_grid(image, mask)
    inside = as_bool(mask)
    values = values_at(image.array, inside)
    if values.size == 0:
        raise MeasurementError(f"{what} is undefined for an empty mask")
    return values


def _centre_ranges(inside: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact min/max world coordinate of inside voxel centres, for any affine.

    World coordinates are linear in (i, j, k), so along each line of voxels parallel to one array
    axis only the first and last inside voxel can be extreme. Scanning the axis that is
    contiguous in memory keeps this at a few passes over the array with no index lists.
    """
    axis = int(np.argmin(np.abs(inside.strides)))
    others = [a for a in range(3) if a != axis]
    n = inside.shape[axis]
    hit = inside.any(axis=axis)
    first = np.argmax(inside, axis=axis)[hit]
    last = (n - 1) - np.argmax(np.flip(inside, axis=axis), axis=axis)[hit]
    p, q = np.nonzero(hit)
    lin = affine[:3, :3]
    base = np.outer(lin[:, others[0]], p) + np.outer(lin[:, others[1]], q) + affine[:3, 3:4]
    along = lin[:, axis : axis + 1]
    at_first = base + along * first
    at_last = base + along * last
    lo = np.minimum(at_first, at_last).min(axis=1)
    hi = np.maximum(at_first, at_last).max(axis=1)
    return lo, hi


__all__ = [
    "Components",
    "asymmetry_index",
    "bounding_box_mm",
    "centroid_mm",
    "change",
    "connected_components",
    "extents_mm",
    "hemisphere",
    "intensity_stats",
    "largest_component",
    "ratio",
    "snr",
    "volume_ml",
]
