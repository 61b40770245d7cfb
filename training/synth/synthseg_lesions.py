"""Lesions painted into deformed SynthSeg label patches, with signal relative to white matter.

The shape follows ``training.synth.lesions`` (VoxelPrompt A.3): a union of a few random ellipsoids
inside a boundary radius, roughened by a smooth random field, kept to brain parenchyma; heterogeneous
lesions split into a necrotic core and a rim, and edema grows into the white matter around it. The
signal classes and factor bands are that module's (hyper/hypo/iso per sequence family), so both
generators agree on what "hyperintense on FLAIR" means. Everything runs in torch in a local box
around the lesion, a few milliseconds per lesion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from training.synth.lesions import CLASS_PRIORS, EDEMA_BANDS, FACTOR_BANDS
from vision.targets import LESION_CORE, LESION_EDEMA, LESION_RIM, LESION_SOLID, RIGHT_LESION

WHITE_MATTER = (2, 41, 7, 46)  # lesion centres are drawn here
PARENCHYMA_MAX = 100  # FreeSurfer labels below this (but CSF 24 and the ventricles) may become lesion
FLUID = (4, 5, 14, 15, 24, 43, 44, 72)
RIGHT_LABELS = frozenset({41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60, 57, 163, 164})


@dataclass(frozen=True)
class LesionSettings:
    probability: float = 0.0  # share of samples with lesions (0: anatomy only)
    max_lesions: int = 2
    radius_mm: tuple[float, float] = (3.0, 22.0)
    heterogeneous_prob: float = 0.4
    edema_prob: float = 0.5
    edema_mm: tuple[float, float] = (2.0, 10.0)


@dataclass
class PaintedLesion:
    center: tuple[int, int, int]
    radius_mm: float
    right: bool
    heterogeneous: bool
    voxels: int


def _coords(shape: tuple[int, ...]) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 0)  # (3, X, Y, Z)


def _shape_mask(rng: np.random.Generator, box: tuple[int, ...], center: np.ndarray, radius: float) -> torch.Tensor:
    """Union of 1-3 ellipsoids within ``radius`` of ``center`` (box coordinates), roughened."""
    xyz = _coords(box) - torch.from_numpy(center.astype(np.float32))[:, None, None, None]
    inside = torch.zeros(box, dtype=torch.bool)
    for _ in range(int(rng.integers(1, 4))):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        radii = radius * rng.uniform(0.45, 1.0, 3)
        offset = rng.uniform(-0.4, 0.4, 3) * radius
        local = torch.einsum("ij,jxyz->ixyz", torch.from_numpy(q.T.astype(np.float32)),
                             xyz - torch.from_numpy(offset.astype(np.float32))[:, None, None, None])
        r2 = sum((local[i] / float(radii[i])) ** 2 for i in range(3))
        inside |= r2 <= 1.0
    rough = torch.from_numpy(rng.standard_normal((1, 1, 4, 4, 4)).astype(np.float32))
    rough = F.interpolate(rough, size=box, mode="trilinear", align_corners=True)[0, 0]
    dist = xyz.norm(dim=0)
    return inside & (rough > -1.2) & (dist <= radius)


def paint_lesions(rng: np.random.Generator, labels: torch.Tensor, settings: LesionSettings) -> list[PaintedLesion]:
    """Paint lesion codes into ``labels`` (int64, 1 mm grid, modified in place)."""
    if settings.probability <= 0 or rng.random() >= settings.probability:
        return []
    painted = []
    # centres: random voxels that are white matter (a few hundred draws instead of a scan of the patch)
    draws = rng.integers(0, np.array(labels.shape), size=(400, 3))
    at = labels[draws[:, 0], draws[:, 1], draws[:, 2]].numpy()
    candidates = draws[np.isin(at, WHITE_MATTER)]
    if len(candidates) == 0:
        return []
    fluid = torch.tensor(FLUID)
    for _ in range(int(rng.integers(1, settings.max_lesions + 1))):
        c = candidates[int(rng.integers(len(candidates)))]
        radius = float(rng.uniform(*settings.radius_mm))
        edema = float(rng.uniform(*settings.edema_mm)) if rng.random() < settings.edema_prob else 0.0
        reach = int(np.ceil(radius + edema)) + 1
        lo = np.maximum(c - reach, 0)
        hi = np.minimum(c + reach + 1, labels.shape)
        box = tuple(int(h - low) for h, low in zip(hi, lo))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        local = labels[sl]
        tissue = (local > 0) & (local < PARENCHYMA_MAX) & ~torch.isin(local, fluid)
        shape = _shape_mask(rng, box, c - lo, radius) & tissue
        n = int(shape.sum())
        if n < 8:
            continue
        right = int(labels[tuple(c)]) in RIGHT_LABELS
        side = RIGHT_LESION if right else 0
        hetero = rng.random() < settings.heterogeneous_prob and radius >= 6
        new = local.clone()
        mask = shape.numpy()
        if edema > 0:
            outside = torch.from_numpy(ndimage.distance_transform_edt(~mask))
            ring = (outside <= edema) & ~shape & torch.isin(local, torch.tensor(WHITE_MATTER))
            new[ring] = LESION_EDEMA + side
        if hetero:
            # necrotic core: voxels deeper than 40-60 % of the lesion's largest depth; the rest is the rim
            depth = torch.from_numpy(ndimage.distance_transform_edt(mask))
            core = depth > float(depth.max()) * rng.uniform(0.4, 0.6)
            new[shape] = LESION_RIM + side
            new[core & shape] = LESION_CORE + side
        else:
            new[shape] = LESION_SOLID + side
        labels[sl] = new
        painted.append(PaintedLesion((int(c[0]), int(c[1]), int(c[2])), radius, right, hetero, n))
    return painted


def lesion_intensities(rng: np.random.Generator, image: torch.Tensor, labels: torch.Tensor, contrast: str,
                       wm_mean: float, wm_std: float) -> torch.Tensor:
    """Overwrite lesion voxels with signal relative to white matter (class bands of ``lesions``)."""
    family = contrast if contrast in CLASS_PRIORS else "random"
    priors = CLASS_PRIORS[family]
    classes = list(priors)
    probs = np.array([priors[k] for k in classes])
    cls = classes[int(rng.choice(len(classes), p=probs / probs.sum()))]
    base = float(rng.uniform(*FACTOR_BANDS[cls]))
    factors = {LESION_SOLID: base, LESION_RIM: base * float(rng.uniform(1.0, 1.6)),
               LESION_CORE: float(rng.uniform(*FACTOR_BANDS[classes[int(rng.integers(len(classes)))]])),
               LESION_EDEMA: float(rng.uniform(*EDEMA_BANDS.get(family, EDEMA_BANDS["random"])))}
    out = image.clone()
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
    for part, factor in factors.items():
        for side in (0, RIGHT_LESION):
            m = labels == part + side
            if bool(m.any()):
                out[m] = wm_mean * factor + wm_std * noise[m]
    return out.clamp_min(0)


__all__ = ["LesionSettings", "PaintedLesion", "paint_lesions", "lesion_intensities"]
