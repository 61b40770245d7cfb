"""Where each synthesized scan sits: subject deformation, scan pose, voxel grid, header orientation.

A subject is the template deformed once (random scale/shear + smooth elastic field); each session
places that subject in the scanner with its own small rigid pose; each scan samples the subject on
its own voxel grid (random spacing, thick slices along a random axis, random crop) and finally gets
a random axis permutation/flip with the affine updated so world positions never change.

Rotations about the anterior-posterior and superior-inferior axes are kept small (a few degrees) and
there is no left-right translation, so the anatomical midline stays close to world x = 0, the
convention of `voxel_ops.hemisphere`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.synth.fields import upsample_linear


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SubjectWarp:
    """Maps scanner-world points of one session to template-world points.

    x_template = center + A @ (y - center - shift) + elastic(y), with A the inverse of the
    session's (rotation @ subject scale/shear) matrix.
    """

    center: np.ndarray  # (3,) template brain centre (mm)
    inverse_linear: np.ndarray  # (3, 3)
    shift: np.ndarray  # (3,) scanner translation of the head (mm)
    elastic: np.ndarray  # (3, n, n, n) displacement (mm) on a coarse control grid
    elastic_min: np.ndarray  # (3,) world corner of the control grid
    elastic_step: np.ndarray  # (3,) control grid spacing (mm)
    forward_linear: np.ndarray  # (3, 3) template -> scanner linear part (for bounding boxes)

    def to_template(self, y: np.ndarray) -> np.ndarray:
        """(..., 3) scanner-world -> template-world."""
        x = (y - self.center - self.shift) @ self.inverse_linear.T + self.center
        if self.elastic.size:
            idx = (y - self.elastic_min) / self.elastic_step
            pts = idx.reshape(-1, 3).T
            disp = np.stack([ndimage.map_coordinates(self.elastic[c], pts, order=1, mode="nearest")
                             for c in range(3)], axis=-1)
            x = x + disp.reshape(x.shape)
        return x

    def to_scanner_linear(self, x: np.ndarray) -> np.ndarray:
        """Template-world -> scanner-world ignoring the (small) elastic part."""
        return (x - self.center) @ self.forward_linear.T + self.center + self.shift


def sample_subject_linear(rng: np.random.Generator, scale_range: float, shear_range: float) -> np.ndarray:
    scale = np.diag(rng.uniform(1 - scale_range, 1 + scale_range, 3))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-shear_range, shear_range, 3)
    return shear @ scale


def sample_warp(rng: np.random.Generator, center: np.ndarray, subject_linear: np.ndarray,
                elastic: np.ndarray, brain_min: np.ndarray, brain_max: np.ndarray, *,
                max_pitch_deg: float, max_roll_yaw_deg: float, max_shift_mm: float) -> SubjectWarp:
    angles = np.deg2rad([rng.uniform(-max_pitch_deg, max_pitch_deg),
                         rng.uniform(-max_roll_yaw_deg, max_roll_yaw_deg),
                         rng.uniform(-max_roll_yaw_deg, max_roll_yaw_deg)])
    forward = rotation_matrix(angles) @ subject_linear
    shift = np.array([0.0, *rng.uniform(-max_shift_mm, max_shift_mm, 2)])
    n = elastic.shape[-1] if elastic.size else 1
    lo = brain_min - 40.0
    step = (brain_max - brain_min + 80.0) / max(n - 1, 1)
    return SubjectWarp(center=center, inverse_linear=np.linalg.inv(forward), shift=shift, elastic=elastic,
                       elastic_min=lo, elastic_step=step, forward_linear=forward)


def sample_elastic(rng: np.random.Generator, control_points: int, max_mm: float) -> np.ndarray:
    """Smooth displacement (mm) on a coarse control grid; empty when disabled."""
    if max_mm <= 0:
        return np.zeros((3, 0, 0, 0), dtype=np.float32)
    sigma = rng.uniform(0, max_mm)
    return (rng.standard_normal((3, control_points, control_points, control_points)) * sigma).astype(np.float32)


@dataclass(frozen=True)
class ScanGrid:
    """A RAS-aligned acquisition grid; thick-slice scans are first sampled `oversample` times finer."""

    shape: tuple[int, int, int]  # final (thick) grid
    spacing: tuple[float, float, float]
    origin: np.ndarray  # world position of voxel (0, 0, 0)
    slice_axis: int | None  # thick-slice axis, None when isotropic-ish
    oversample: int  # fine samples per thick slice along slice_axis

    @property
    def affine(self) -> np.ndarray:
        aff = np.eye(4)
        aff[:3, :3] = np.diag(self.spacing)
        aff[:3, 3] = self.origin
        return aff

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        shape = list(self.shape)
        if self.slice_axis is not None:
            shape[self.slice_axis] *= self.oversample
        return tuple(shape)  # type: ignore[return-value]  # 3 axes

    @property
    def fine_affine(self) -> np.ndarray:
        """Fine grid whose every `oversample`-th sample (offset oversample // 2) is a thick-slice centre."""
        aff = self.affine.copy()
        if self.slice_axis is not None:
            k = self.oversample
            aff[self.slice_axis, self.slice_axis] /= k
            aff[self.slice_axis, 3] -= (k // 2) * aff[self.slice_axis, self.slice_axis]
        return aff


def sample_grid(rng: np.random.Generator, box_min: np.ndarray, box_max: np.ndarray, *,
                inplane_mm: tuple[float, float], thick_prob: float, slice_mm: tuple[float, float],
                margin_mm: tuple[float, float], crop_prob: float, crop_max_frac: float) -> ScanGrid:
    """Grid covering the head box plus a random margin, sometimes cropped into the head."""
    inplane = float(rng.uniform(*inplane_mm))
    spacing = [inplane] * 3
    slice_axis = None
    oversample = 1
    if rng.random() < thick_prob:
        slice_axis = int(rng.integers(3))
        spacing[slice_axis] = float(rng.uniform(*slice_mm))
        oversample = int(np.clip(np.ceil(spacing[slice_axis] / inplane), 1, 3))
    lo = box_min - rng.uniform(*margin_mm, 3)
    hi = box_max + rng.uniform(*margin_mm, 3)
    if rng.random() < crop_prob:  # cut into the head on one side of one axis
        axis = int(rng.integers(3))
        cut = rng.uniform(0.02, crop_max_frac) * (box_max[axis] - box_min[axis])
        if rng.random() < 0.5:
            lo[axis] = box_min[axis] + cut
        else:
            hi[axis] = box_max[axis] - cut
    shape = tuple(int(max(8, np.ceil((hi[a] - lo[a]) / spacing[a]))) for a in range(3))
    return ScanGrid(shape=shape, spacing=tuple(spacing), origin=lo, slice_axis=slice_axis,  # type: ignore[arg-type]  # 3 axes
                    oversample=oversample)


def template_indices(grid: ScanGrid, warp: SubjectWarp, template_affine: np.ndarray, stride: int = 4) -> np.ndarray:
    """(3, *fine_shape) float32 template voxel indices for every fine-grid voxel.

    The map is smooth, so it is evaluated on a grid `stride` times coarser and upsampled linearly
    (exact for the affine part).
    """
    shape = grid.fine_shape
    coarse = [np.linspace(0, n - 1, max(2, int(np.ceil((n - 1) / stride)) + 1)) for n in shape]
    mesh = np.stack(np.meshgrid(*coarse, indexing="ij"), axis=-1)
    fine_aff = grid.fine_affine
    world = mesh @ fine_aff[:3, :3].T + fine_aff[:3, 3]
    tmpl = warp.to_template(world)
    inv = np.linalg.inv(template_affine)
    ijk = (tmpl @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    out = np.empty((3, *shape), dtype=np.float32)
    for c in range(3):
        out[c] = upsample_linear(ijk[..., c], shape)
    return out


def sample_nearest(volume: np.ndarray, ijk: np.ndarray, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour lookup of integer codes (much faster than map_coordinates order 0)."""
    idx = np.rint(ijk).astype(np.int32)
    shape = volume.shape
    inside = np.ones(idx.shape[1:], dtype=bool)
    for a in range(3):
        inside &= (idx[a] >= 0) & (idx[a] < shape[a])
        np.clip(idx[a], 0, shape[a] - 1, out=idx[a])
    lin = (idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]
    out = volume.ravel().take(lin)
    out[~inside] = fill
    return out


def thick_slices(fine: np.ndarray, grid: ScanGrid, *, blur: bool) -> np.ndarray:
    """Fine-grid array -> thick-slice grid: optional slice-profile blur, then keep slice centres."""
    if grid.slice_axis is None or grid.oversample == 1:
        return fine
    k = grid.oversample
    if blur:
        fine = ndimage.gaussian_filter1d(fine, sigma=k / 2.355, axis=grid.slice_axis, mode="nearest")
    sl = [slice(None)] * 3
    sl[grid.slice_axis] = slice(k // 2, None, k)
    out = fine[tuple(sl)]
    target = grid.shape[grid.slice_axis]
    return np.ascontiguousarray(out.take(np.arange(target), axis=grid.slice_axis))


def random_orientation(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    perm = tuple(int(p) for p in rng.permutation(3))
    flips = tuple(bool(f) for f in rng.random(3) < 0.5)
    return perm, flips  # type: ignore[return-value]  # 3 axes each


def reorient(array: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int],
             flips: tuple[bool, bool, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip array axes and return the affine that keeps every voxel at its world point.

    New axis a is old axis perm[a], reversed when flips[a].
    """
    out = np.transpose(array, perm)
    shape = out.shape
    p = np.zeros((4, 4))
    p[3, 3] = 1
    for a in range(3):
        if flips[a]:
            p[perm[a], a] = -1
            p[perm[a], 3] = shape[a] - 1
        else:
            p[perm[a], a] = 1
    sl = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
    return np.ascontiguousarray(out[sl]), affine @ p
