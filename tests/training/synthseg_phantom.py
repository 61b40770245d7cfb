"""A phantom SynthSeg data folder: label maps of nested ellipsoids and made-up priors.

The real label maps (../shared/data/synthseg) are third-party data that tests do not depend on;
this folder has the same layout (label_maps/training_seg_NN.nii.gz in LIA orientation, priors/*.npy)
with known structure sizes, so every count in a test can be checked by hand.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (72, 80, 72)  # LIA array axes: x = left, y = inferior, z = anterior
# label -> generation class and contrast-specific class (0 air, 1 CSF, 2 WM, 3 GM, 6 deep GM, 13 brainstem,
# 15 dark extra-cerebral, 16 soft extra-cerebral)
GENERATION = {0: (0, 0), 24: (1, 1), 4: (2, 1), 43: (2, 1), 2: (3, 2), 41: (3, 2), 3: (4, 3), 42: (4, 3),
              10: (5, 6), 49: (5, 6), 17: (6, 3), 53: (6, 3), 16: (7, 13), 515: (8, 15), 507: (9, 16)}


def ellipsoid(center: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    idx = np.indices(SHAPE).astype(np.float64)
    return sum(((idx[i] - center[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


def phantom_labels(shift: int = 0) -> np.ndarray:
    """Whole-head phantom in LIA array order; the brain's left half has x index < centre (LIA: x grows to L)."""
    c = (36.0, 40.0 + shift, 36.0)
    lab = np.zeros(SHAPE, dtype=np.int16)
    lab[ellipsoid(c, (34, 38, 34))] = 507  # scalp / soft tissue
    lab[ellipsoid(c, (31, 35, 31))] = 515  # skull
    lab[ellipsoid(c, (28, 32, 28))] = 24  # CSF
    brain = ellipsoid(c, (26, 30, 26))
    x = np.indices(SHAPE)[0]
    left = x >= c[0]  # LIA: the first axis points to the subject's left
    lab[brain & left] = 3
    lab[brain & ~left] = 42
    wm = ellipsoid(c, (22, 26, 22))
    lab[wm & left] = 2
    lab[wm & ~left] = 41
    for side, (vent, thal, hip) in ((1, (4, 10, 17)), (-1, (43, 49, 53))):
        lab[ellipsoid((c[0] + 6 * side, c[1], c[2]), (3, 8, 5))] = vent
        lab[ellipsoid((c[0] + 9 * side, c[1] + 4, c[2]), (3, 3, 4))] = thal
        lab[ellipsoid((c[0] + 14 * side, c[1] + 12, c[2]), (2, 2, 5))] = hip
    lab[ellipsoid((c[0], c[1] + 24, c[2]), (4, 8, 4)) & brain] = 16
    return lab


LIA_AFFINE = np.array([[-1.0, 0, 0, 36], [0, 0, 1, -36], [0, -1, 0, 40], [0, 0, 0, 1]])


def write_phantom_root(root: Path, subjects: int = 3, numbers: tuple[int, ...] | None = None) -> Path:
    """Subjects training_seg_01.. (or the given ``numbers``; 17 and 18 are the held-out ones)."""
    (root / "label_maps").mkdir(parents=True, exist_ok=True)
    (root / "priors").mkdir(exist_ok=True)
    for i, number in enumerate(numbers or range(1, subjects + 1)):
        img = nib.Nifti1Image(phantom_labels(shift=i), LIA_AFFINE)
        nib.save(img, str(root / "label_maps" / f"training_seg_{number:02d}.nii.gz"))
    labels = np.array(list(GENERATION), dtype=np.int32)
    np.save(root / "priors" / "generation_labels.npy", labels)
    np.save(root / "priors" / "generation_classes.npy", np.array([g[0] for g in GENERATION.values()]))
    np.save(root / "priors" / "generation_classes_contrast_specific.npy",
            np.array([g[1] for g in GENERATION.values()]))
    # made-up T1 priors over 25 contrast-specific classes: CSF dark, GM mid, WM bright
    means = np.full((2, 25), 80.0)
    means[0, :4] = (5, 40, 160, 100)
    means[1] = 5.0
    stds = np.full((2, 25), 5.0)
    stds[1] = 1.0
    np.save(root / "priors" / "prior_means_t1.npy", means)
    np.save(root / "priors" / "prior_stds_t1.npy", stds)
    return root
