"""How much Dice the vision net's working grid leaves room for, per target.

The tiny preset works on a grid no finer than ``min_spacing`` (4 mm) and interpolates its logits back
to the input grid. A target a few millimetres thick (cortex, a small lesion) cannot be drawn exactly
through that grid, however well the network is trained. This module passes the *truth* itself through
the same round trip the network's output takes (area average onto the working grid, trilinear back,
threshold 0.5) and scores it against the truth: the figure a perfect generator at that grid would reach
with a smooth output. It is a reference, not a strict bound (sharper logits can fit a border a little
better), and it tells "the model is undertrained" apart from "the grid is too coarse".
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vision.config import VisionConfig
from vision.native import plan_stream


def through_working_grid(mask: np.ndarray, spacing: tuple[float, float, float], config: VisionConfig) -> np.ndarray:
    """The truth as the network's output path would render it: averaged onto the working grid and back."""
    plan = plan_stream(tuple(mask.shape), tuple(float(s) for s in spacing), config)
    if not plan.reduced:
        return np.asarray(mask) > 0.5
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    x = F.interpolate(x, size=plan.working_shape, mode="area")
    x = F.interpolate(x, size=plan.input_shape, mode="trilinear", align_corners=False)
    return x[0, 0].numpy() > 0.5


def grid_ceiling_dice(mask: np.ndarray, spacing: tuple[float, float, float], config: VisionConfig) -> float:
    """Dice of the truth rendered through the working grid against the truth (1.0 when nothing is lost)."""
    truth = np.asarray(mask) > 0.5
    rendered = through_working_grid(truth, spacing, config)
    total = int(truth.sum()) + int(rendered.sum())
    return 1.0 if total == 0 else float(2.0 * np.logical_and(truth, rendered).sum() / total)
