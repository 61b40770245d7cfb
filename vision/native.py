"""Native-space geometry (VoxelPrompt A.1): which grid every level of every stream works on.

Each stream keeps its own voxel spacing through the network. At a level, an axis whose spacing is
more than ``omega_threshold`` times the finest (in-plane) spacing is "thick": the convolution uses
the central slice of the 3x3x3 kernel along it (a 2D convolution per slice) and the following
max-pool leaves it alone, so that only in-plane resolution is reduced until the grid is roughly
isotropic. The plan is computed up front and kept with the encoding, which makes the per-level
decisions inspectable (and testable) and lets the generator retrace the exact grids.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from vision.config import VisionConfig

Shape3 = tuple[int, int, int]
Spacing3 = tuple[float, float, float]
T = TypeVar("T")


@dataclass(frozen=True)
class LevelPlan:
    """The grid one level works on, and how it is reduced for the next level."""

    level: int
    shape: Shape3
    spacing: Spacing3
    omega: float  # largest spacing / smallest spacing at this level
    flat_axes: tuple[int, ...]  # axes convolved with the kernel's central slice (omega_axis > threshold)
    pool: Shape3  # max-pool factor per axis after this level (1 = not pooled); (1, 1, 1) at the bottom

    @property
    def uses_2d_kernel(self) -> bool:
        return bool(self.flat_axes)


@dataclass(frozen=True)
class StreamPlan:
    """All levels of one stream, plus the reduction from input grid to working grid."""

    input_shape: Shape3
    input_spacing: Spacing3
    working_shape: Shape3  # grid the network sees (input grid unless min_spacing reduces it)
    working_spacing: Spacing3
    levels: tuple[LevelPlan, ...]

    @property
    def reduced(self) -> bool:
        return self.working_shape != self.input_shape


def working_grid(shape: Shape3, spacing: Spacing3, min_spacing: float | None) -> tuple[Shape3, Spacing3]:
    """Coarsen axes finer than ``min_spacing`` so the network never works below it (same extent)."""
    if min_spacing is None:
        return shape, spacing
    new_shape, new_spacing = [], []
    for size, step in zip(shape, spacing):
        if step < min_spacing and size > 1:
            reduced = max(1, math.ceil(size * step / min_spacing - 1e-6))
            new_shape.append(reduced)
            new_spacing.append(size * step / reduced)
        else:
            new_shape.append(size)
            new_spacing.append(step)
    return _three(new_shape), _three(new_spacing)


def _three(values: Sequence[T]) -> tuple[T, T, T]:
    a, b, c = values
    return a, b, c


def plan_stream(shape: Sequence[int], spacing: Sequence[float], config: VisionConfig) -> StreamPlan:
    """Per-level shapes, spacings, kernel and pooling decisions for one input grid."""
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"expected a 3D shape and spacing, got {tuple(shape)} and {tuple(spacing)}")
    shape3: Shape3 = _three([int(s) for s in shape])
    spacing3: Spacing3 = _three([float(s) for s in spacing])
    shape, spacing = shape3, spacing3
    if min(shape) < 1:
        raise ValueError(f"empty grid {shape}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"voxel spacing must be positive and finite, got {spacing}")

    work_shape, work_spacing = working_grid(shape, spacing, config.min_spacing)
    levels = []
    cur_shape, cur_spacing = work_shape, work_spacing
    for level in range(config.levels):
        finest = min(cur_spacing)
        ratios = [s / finest for s in cur_spacing]
        flat = tuple(a for a in range(3) if ratios[a] > config.omega_threshold)
        last = level == config.levels - 1
        pool: Shape3 = _three([1 if (last or a in flat or cur_shape[a] == 1) else 2 for a in range(3)])
        levels.append(
            LevelPlan(
                level=level,
                shape=cur_shape,
                spacing=cur_spacing,
                omega=max(ratios),
                flat_axes=flat,
                pool=pool,
            )
        )
        cur_shape = _three([math.ceil(n / p) for n, p in zip(cur_shape, pool)])
        cur_spacing = _three([s * p for s, p in zip(cur_spacing, pool)])
    return StreamPlan(
        input_shape=shape,
        input_spacing=spacing,
        working_shape=work_shape,
        working_spacing=work_spacing,
        levels=tuple(levels),
    )
