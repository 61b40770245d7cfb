"""Real anatomy for synthesis: the MNI152 2009 template and its GM/WM maps from the nilearn wheel.

Everything is turned once (per working resolution) into a single uint8 *code map* in template
space, because warping one integer map per case is far cheaper than warping several probability
maps. Code scheme (see `training.synth.labels`):

* bit 7 (128) set: the voxel lies in the right hemisphere (template world x >= 0; the 2009
  symmetric template has its midline at x = 0). Only set inside the brain.
* low 7 bits: 0 air, 1 CSF, 2 GM, 3 WM, 4..63 extra-cerebral distance bins (1 mm each, turned into
  dura/skull/scalp shells per case by a lookup table), 64..127 lesion parts (added per case).

How the tissue labels are derived (the template ships no CSF map): the GM+WM hull is the
GM+WM probability > 0.3, dilated by 3 mm and hole-filled (this closes the ventricles and sulci);
CSF is every voxel of that hull where the skull-stripped T1 is non-zero and GM+WM < 0.5, plus the
hull's interior holes (ventricles). Brain mask = GM+WM >= 0.5 or CSF. Each brain voxel then takes
the largest of (GM prob, WM prob, CSF prob = 1 - GM - WM).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from training.synth.labels import AIR, CSF, GM, RIGHT_BIT, SHELL_FIRST, SHELL_LAST, WM

log = logging.getLogger(__name__)

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
PAD_MM = 36.0  # room around the brain for synthetic extra-cerebral shells
# nilearn stores the template T1 and its GM/WM probability maps as uint8 0..255: value / 255 is the
# probability. Every reader of these files goes through `load_template_map` so none forgets the scale.
TEMPLATE_MAP_SCALE = 255.0


def template_dir() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data"


@dataclass(frozen=True)
class Anatomy:
    """Template anatomy on a padded RAS grid at one working resolution."""

    codes: np.ndarray  # uint8 code map (tissue + hemisphere bit + shell distance bins)
    t1: np.ndarray  # float32 template T1 in [0, 1] (skull-stripped), same grid
    affine: np.ndarray  # voxel -> template world (mm)
    resolution_mm: float
    brain_center_mm: np.ndarray  # centroid of the brain mask, template world
    brain_min_mm: np.ndarray  # brain bounding box, template world
    brain_max_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = (int(s) for s in self.codes.shape)
        return x, y, z


def template_path(name: str) -> Path:
    """Path of a template file ("t1", "gm" or "wm") inside the nilearn wheel."""
    return template_dir() / TEMPLATE_FILES[name]


def load_template_map(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A template file as float32 in [0, 1] (stored 0..255) and its voxel -> world affine."""
    img = nib.load(template_path(name))
    return np.asarray(img.dataobj, dtype=np.float32) / TEMPLATE_MAP_SCALE, np.asarray(img.affine)


def _resample(arr: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """Shrink by `factor` (template mm per output voxel) with anti-aliasing first."""
    if abs(factor - 1.0) < 1e-6:
        return arr
    if factor > 1:
        arr = ndimage.gaussian_filter(arr, sigma=0.4 * factor)
    out_shape = [int(round(s / factor)) for s in arr.shape]
    coords = [np.arange(n, dtype=np.float32) * factor + (factor - 1) / 2 for n in out_shape]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(arr, grid, order=order, mode="nearest").astype(np.float32)


@lru_cache(maxsize=4)
def load_anatomy(resolution_mm: float = 2.0) -> Anatomy:
    """Build (once per resolution) the padded template code map used by every synthesized case."""
    t1, aff = load_template_map("t1")
    gm, _ = load_template_map("gm")
    wm, _ = load_template_map("wm")
    factor = float(resolution_mm) / float(aff[0, 0])
    t1, gm, wm = (_resample(a, factor) for a in (t1, gm, wm))
    affine = aff.copy()
    affine[:3, :3] = np.diag([resolution_mm] * 3)
    affine[:3, 3] = aff[:3, 3] + (factor - 1) / 2 * aff[0, 0]

    pad = int(np.ceil(PAD_MM / resolution_mm))
    t1, gm, wm = (np.pad(a, pad) for a in (t1, gm, wm))
    affine[:3, 3] -= pad * resolution_mm

    tissue = gm + wm
    vox_mm = resolution_mm
    hull = ndimage.binary_dilation(tissue > 0.3, iterations=max(1, int(round(3.0 / vox_mm))))
    hull = ndimage.binary_fill_holes(hull)
    parenchyma = tissue >= 0.5
    holes = ndimage.binary_fill_holes(parenchyma) & ~parenchyma  # ventricles
    csf = ((hull & (t1 > 0.05)) | holes) & ~parenchyma
    brain = parenchyma | csf
    # keep the largest connected piece so no stray specks become "brain"
    lab, n = ndimage.label(brain)
    if n > 1:
        sizes = ndimage.sum(brain, lab, index=np.arange(1, n + 1))
        brain = lab == (int(np.argmax(sizes)) + 1)

    probs = np.stack([np.clip(1.0 - tissue, 0, 1), gm, wm])
    tissue_code = np.array([CSF, GM, WM], dtype=np.uint8)[np.argmax(probs, axis=0)]
    codes = np.where(brain, tissue_code, AIR).astype(np.uint8)

    # hemisphere bit by the template's midline, world x >= 0 is right (RAS)
    x_world = affine[0, 0] * np.arange(codes.shape[0]) + affine[0, 3]
    right = (x_world >= 0)[:, None, None] & brain
    codes[right] |= RIGHT_BIT

    # extra-cerebral distance bins (1 mm each) for synthetic dura/skull/scalp shells
    dist = ndimage.distance_transform_edt(~brain, sampling=resolution_mm)
    n_bins = SHELL_LAST - SHELL_FIRST + 1
    outside = ~brain & (dist < n_bins)
    codes[outside] = (SHELL_FIRST + np.minimum(dist[outside].astype(np.int32), n_bins - 1)).astype(np.uint8)

    idx = np.argwhere(brain)
    world = idx * resolution_mm + affine[:3, 3]
    anatomy = Anatomy(
        codes=codes,
        t1=np.where(brain, t1, 0).astype(np.float32),
        affine=affine,
        resolution_mm=float(resolution_mm),
        brain_center_mm=world.mean(axis=0),
        brain_min_mm=world.min(axis=0),
        brain_max_mm=world.max(axis=0),
    )
    log.info("template anatomy at %.1f mm: grid %s, brain %.0f mL", resolution_mm, codes.shape,
             brain.sum() * resolution_mm**3 / 1000)
    return anatomy
