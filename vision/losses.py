"""Soft Dice: the segmentation loss, robust to the tiny foreground fractions of brain ROIs."""
from __future__ import annotations

import torch
from torch import Tensor


def soft_dice(probs: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Mean soft Dice over the batch (1 = perfect overlap); both (B, 1, X, Y, Z) in [0, 1]."""
    if probs.shape != target.shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} and target {tuple(target.shape)} differ")
    dims = tuple(range(1, probs.ndim))
    inter = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return ((2 * inter + eps) / (total + eps)).mean()


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """1 - soft Dice of sigmoid(logits) against a 0/1 target."""
    return 1.0 - soft_dice(torch.sigmoid(logits), target.to(logits.dtype), eps)


def voxel_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean voxel-wise binary cross-entropy, the partner of soft Dice in nnU-Net's segmentation loss.

    Soft Dice alone barely pushes back on a large false-positive region around a small target (its
    gradient per voxel falls with the square of the predicted volume), which is how a generator can
    sit on a brain-sized blob for a 100-voxel lesion; cross-entropy penalizes every wrong voxel.
    """
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


def balanced_voxel_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Voxel cross-entropy averaged inside and outside the target separately, then the two halves.

    Averaged over the grid, cross-entropy weighs a 0.03 % lesion 1 : 3,000 against its background, and
    a joint generator that shares its output with brain-sized targets settles on "empty" for it (model
    card, fifth and sixth runs). Here the target's voxels carry half the term whatever its size; an
    empty target leaves the outside half alone.
    """
    t = target.to(logits.dtype)
    per_voxel = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="none")
    inside = t > 0.5
    outside_mean = per_voxel[~inside].mean()
    if not bool(inside.any()):
        return outside_mean
    return 0.5 * (per_voxel[inside].mean() + outside_mean)


VOXEL_CE = {"grid": voxel_bce_loss, "balanced": balanced_voxel_bce_loss}


def hard_dice(probs: Tensor, target: Tensor, threshold: float = 0.5) -> float:
    """Dice of the thresholded prediction, for reporting."""
    pred = (probs > threshold).to(torch.float32)
    return float(soft_dice(pred, (target > 0.5).to(torch.float32)))
