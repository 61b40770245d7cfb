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

from typing import Literal, cast

import cc3d
import numpy as np
from scipy import ndimage

from voxel_ops._mask import as_bool, axis_counts, index_box, require_same_grid, to_mask_volume, values_at
from voxel_ops.errors import MeasurementError
from voxel_ops.volume import Volume

Vec3 = tuple[float, float, float]


def volume_ml(mask: Volume) -> float:
    """Volume of the mask in millilitres."""
    return float(np.count_nonzero(as_bool(mask))) * mask.voxel_volume_mm3 / 1000.0


def bounding_box_mm(mask: Volume) -> tuple[Vec3, Vec3]:
    """(min_xyz, max_xyz) world corners of the box around all inside voxel cells (see module doc)."""
    inside = as_bool(mask)
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
    counts = axis_counts(as_bool(mask))
    total = int(counts[0].sum())
    if total == 0:
        raise MeasurementError("a centroid is undefined for an empty mask")
    mean_ijk = np.array([float(c @ np.arange(c.size)) / total for c in counts])
    return _vec(mask.affine[:3, :3] @ mean_ijk + mask.affine[:3, 3])


def intensity_stats(image: Volume, mask: Volume) -> dict[str, float]:
    """mean, median, std (population), min and max of ``image`` inside ``mask``.

    The median of an even count is the mean of the two middle values (as ``numpy.median``).
    """
    return _region_stats(_values_in(image, mask, "intensity statistics"), with_median=True)


def snr(image: Volume, mask: Volume, background: Volume | None = None) -> float:
    """Signal-to-noise ratio (definition in the module docstring)."""
    signal = _region_stats(_values_in(image, mask, "SNR"))
    if background is None:
        noise = signal["std"]
    else:
        noise = _region_stats(_values_in(image, background, "SNR background"))["std"]
    if noise == 0.0:
        raise MeasurementError("SNR is undefined: the noise region has no intensity variation")
    return signal["mean"] / noise


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
    so counting and sizing pieces never pays for a relabelled full-size image.
    """

    def __init__(self, count: int, volumes_ml: tuple[float, ...], grid: Volume,
                 raw_labels: np.ndarray | None, lut: np.ndarray | None) -> None:
        self.count = count
        self.volumes_ml = volumes_ml
        self._grid = grid
        self._raw = raw_labels  # labels in discovery order
        self._lut = lut  # discovery label -> rank by size
        self._labels: Volume | None = None

    @property
    def labels(self) -> Volume:
        if self._labels is None:
            if self._raw is None or self._lut is None:
                array = np.zeros(self._grid.shape, dtype=np.int32)
            else:
                array = self._lut[self._raw]
            self._labels = Volume(array, self._grid.affine.copy(), self._grid.meta)
        return self._labels

    def component(self, rank: int = 1) -> np.ndarray:
        """Boolean array of the ``rank``-th largest piece (1 = largest) on the full grid."""
        if self._raw is None or self._lut is None or not 1 <= rank <= self.count:
            return np.zeros(self._grid.shape, dtype=bool)
        raw = int(np.flatnonzero(self._lut == rank)[0])
        return self._raw == self._raw.dtype.type(raw)

    def __repr__(self) -> str:
        shown = ", ".join(f"{v:.4g}" for v in self.volumes_ml[:5])
        more = ", ..." if self.count > 5 else ""
        return f"Components(count={self.count}, volumes_ml=({shown}{more}))"


def connected_components(mask: Volume, connectivity: int = 26) -> Components:
    """Label separate pieces of a mask (26-, 18- or 6-connectivity) and measure each."""
    if connectivity not in (6, 18, 26):
        raise MeasurementError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    inside = as_bool(mask)
    if not inside.any():
        return Components(0, (), mask, None, None)
    conn = cast(Literal[6, 18, 26], connectivity)  # checked above
    labels, count = cc3d.connected_components(inside, connectivity=conn, return_N=True, binary_image=True)
    sizes = np.bincount(values_at(labels, inside), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    lut = np.zeros(count + 1, dtype=np.int32)
    lut[order + 1] = np.arange(1, count + 1, dtype=np.int32)
    voxel_ml = mask.voxel_volume_mm3 / 1000.0
    volumes = tuple(float(s) * voxel_ml for s in sizes[order])
    return Components(int(count), volumes, mask, labels, lut)


def largest_component(mask: Volume, connectivity: int = 26) -> Volume:
    """uint8 mask of the largest connected piece (empty in, empty out)."""
    comps = connected_components(mask, connectivity)
    if comps.count <= 1:  # the mask is its own largest piece
        return to_mask_volume(mask, as_bool(mask).copy())
    return to_mask_volume(mask, comps.component(1))


# RAS world axis and sign of each direction a piece can be picked by
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (0, -1), "right": (0, 1), "posterior": (1, -1), "anterior": (1, 1),
    "inferior": (2, -1), "superior": (2, 1),
}


def _pick_component(mask: Volume, comps: Components, score: np.ndarray) -> Volume:
    """The piece with the highest score (ties: the larger piece, i.e. the lower rank)."""
    return to_mask_volume(mask, comps.component(int(np.argmax(score)) + 1))


def extreme_component(mask: Volume, direction: str, connectivity: int = 26) -> Volume:
    """uint8 mask of the piece whose world centroid lies furthest toward ``direction`` (RAS).

    "The most superior lesion" is decided by centroids in scanner space, so the answer does not
    depend on how the array is stored (any orientation, oblique grids included).
    """
    if direction not in DIRECTIONS:
        raise MeasurementError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
    comps = connected_components(mask, connectivity)
    if comps.count <= 1:
        return to_mask_volume(mask, as_bool(mask).copy())
    ranks = comps.labels.array
    index = np.arange(1, comps.count + 1)
    centres = np.asarray(ndimage.center_of_mass(np.ones(ranks.shape, dtype=np.uint8), ranks, index))  # (n, 3)
    world = mask.voxel_to_world(centres)
    axis, sign = DIRECTIONS[direction]
    return _pick_component(mask, comps, sign * world[:, axis])


def brightest_component(image: Volume, mask: Volume, connectivity: int = 26) -> Volume:
    """uint8 mask of the piece with the highest mean intensity in ``image`` (same grid)."""
    require_same_grid(image, mask)
    comps = connected_components(mask, connectivity)
    if comps.count <= 1:
        return to_mask_volume(mask, as_bool(mask).copy())
    index = np.arange(1, comps.count + 1)
    means = np.asarray(ndimage.mean(np.asarray(image.array, dtype=np.float64), comps.labels.array, index))
    return _pick_component(mask, comps, means)


def hemisphere(mask: Volume, midline_x_mm: float = 0.0, tolerance: float = 0.05) -> str:
    """"left", "right" or "bilateral" relative to the sagittal plane x = ``midline_x_mm``.

    Voxel centres exactly on the plane count half to each side.
    """
    inside = as_bool(mask)
    counts = axis_counts(inside)
    count = int(counts[0].sum())
    if count == 0:
        raise MeasurementError("hemisphere is undefined for an empty mask")
    row = mask.affine[0, :3]
    offset = mask.affine[0, 3] - float(midline_x_mm)
    axes = np.flatnonzero(np.abs(row) > 1e-9 * np.abs(row).max())
    if axes.size == 1:  # x depends on one array axis: count per index along it
        axis = int(axes[0])
        per_index = counts[axis]
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


_HISTOGRAM_TYPES = {np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16)}


def _region_stats(values: np.ndarray, with_median: bool = False) -> dict[str, float]:
    """mean, std (population, float64), min, max and optionally median of ``values``.

    Small integer types (most stored MRI/CT) go through one histogram: a single counting pass
    replaces the float64 copy, the squared deviations and the partition a median needs.
    """
    if values.dtype in _HISTOGRAM_TYPES:
        return _histogram_stats(values) if with_median else _integer_moments(values)
    as64 = values.astype(np.float64, copy=False)
    mean = float(as64.sum()) / as64.size
    centred = as64 - mean
    np.square(centred, out=centred)
    out = {"mean": mean, "std": float(np.sqrt(centred.sum() / as64.size)), "min": float(values.min()),
           "max": float(values.max())}
    if with_median:
        n = values.size
        lower, upper = (n - 1) // 2, n // 2
        middle = np.partition(values, [lower, upper] if lower != upper else lower)
        out["median"] = 0.5 * (float(middle[lower]) + float(middle[upper]))
    return out


def _integer_moments(values: np.ndarray) -> dict[str, float]:
    """Exact mean/std of <= 16-bit integers from integer sums (no histogram, no float copy)."""
    # twice the width holds every square exactly (255^2, 32768^2, 65535^2); sums go to 64 bits
    wide = values.astype(f"{values.dtype.kind}{2 * values.dtype.itemsize}")
    acc = np.int64 if values.dtype.kind == "i" else np.uint64
    s1 = int(wide.sum(dtype=acc))
    np.square(wide, out=wide)
    s2 = int(wide.sum(dtype=acc))
    n = values.size
    variance = (n * s2 - s1 * s1) / (n * n)  # exact integer numerator
    return {"mean": s1 / n, "std": float(np.sqrt(max(variance, 0.0))), "min": float(values.min()),
            "max": float(values.max())}


def _histogram_stats(values: np.ndarray) -> dict[str, float]:
    bits = values.dtype.itemsize * 8
    if values.dtype.kind == "i":  # order-preserving map of signed onto unsigned codes
        codes = values.view(f"u{values.dtype.itemsize}") ^ np.array(1 << (bits - 1), dtype=f"u{values.dtype.itemsize}")
        first_level = -(1 << (bits - 1))
    else:
        codes, first_level = values, 0
    counts = np.bincount(codes, minlength=1 << bits)
    levels = np.arange(counts.size, dtype=np.float64) + first_level
    n = values.size
    mean = float(counts @ levels) / n
    std = float(np.sqrt(counts @ (levels - mean) ** 2 / n))
    present = np.flatnonzero(counts)
    cumulative = np.cumsum(counts)
    lower, upper = (n - 1) // 2, n // 2
    at = np.searchsorted(cumulative, [lower + 1, upper + 1])  # first level whose count reaches rank
    median = 0.5 * (float(levels[at[0]]) + float(levels[at[1]]))
    return {"mean": mean, "std": std, "min": float(levels[present[0]]), "max": float(levels[present[-1]]),
            "median": median}


def _centre_ranges(inside: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact min/max world coordinate of inside voxel centres, for any affine."""
    lin = affine[:3, :3]
    nonzero = np.abs(lin) > 1e-12 * np.abs(lin).max()
    if np.all(nonzero.sum(axis=1) == 1) and np.all(nonzero.sum(axis=0) == 1):
        # each world axis follows one array axis: the index box decides everything
        box = index_box(inside)
        if box is None:
            raise MeasurementError("a bounding box is undefined for an empty mask")
        corners = np.array([[b.start, b.stop - 1] for b in box], dtype=np.float64)  # (3, 2)
        world = lin[:, :, None] * corners[None, :, :]  # contribution of each array axis
        lo = world.min(axis=2).sum(axis=1) + affine[:3, 3]
        hi = world.max(axis=2).sum(axis=1) + affine[:3, 3]
        return lo, hi
    if not inside.any():
        raise MeasurementError("a bounding box is undefined for an empty mask")
    return _centre_ranges_oblique(inside, affine)


def _centre_ranges_oblique(inside: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates are linear in (i, j, k), so along each line of voxels parallel to one
    array axis only the first and last inside voxel can be extreme. Scanning the axis that is
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
    "DIRECTIONS",
    "asymmetry_index",
    "brightest_component",
    "bounding_box_mm",
    "centroid_mm",
    "change",
    "connected_components",
    "extents_mm",
    "extreme_component",
    "hemisphere",
    "intensity_stats",
    "largest_component",
    "ratio",
    "snr",
    "volume_ml",
]
