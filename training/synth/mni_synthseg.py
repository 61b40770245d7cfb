"""The MNI152 template as one more anatomy of the SynthSeg-style generator (issue #19, "extra anatomy").

The nilearn wheel's MNI152 2009 template (T1 and GM/WM probability maps, 1 mm, RAS) is turned once
per process into a whole-head label map in the generation-label space of the SynthSeg maps, so that
:class:`training.synth.synthseg.SynthSegGenerator` draws it with exactly the same deformation,
intensity, contrast, bias, blur, resolution, lesion and noise augmentation as a real label map.

How the map is made (``mni_label_map``; the thresholds are those of ``training.synth.anatomy``):

* parenchyma = GM + WM probability >= 0.5 (its largest connected piece);
* brain = parenchyma with its enclosed cavities filled (3-D hole filling: the lateral ventricles,
  ~18 mL, plus small pockets), the cavities labelled lateral ventricle (4 / 43 by side);
* intracranial = brain, plus every voxel of the GM+WM hull (probability > 0.3, dilated 3 mm,
  hole-filled) where the skull-stripped template T1 is non-zero: labelled extra-ventricular CSF 24;
* inside the parenchyma a voxel is cerebral white matter (2 / 41) where WM >= GM, else cerebral
  cortex (3 / 42); the side is the template's midline (world x >= 0 is right). These labels only
  choose the voxel's *intensity class*; they are never supervised (below);
* outside, synthetic shells by distance from the intracranial space: 0-6 mm skull (515), 6-10 mm
  scalp (507), 10-13 mm fat (530), then air.

What an MNI sample may supervise (``MNI_TARGETS``): only the targets of ``vision.targets`` whose
definition the template maps determine voxel for voxel:

* ``brain`` (every lateral label, the 3rd/4th ventricles and the brain-stem: parenchyma plus the
  ventricles; here the filled parenchyma), ``csf`` (ventricles + extra-ventricular CSF; here the
  intracranial space minus the parenchyma) and ``intracranial volume`` (their union);
* the lesion targets, when lesions are painted: their truth is the painted lesion, as on any map.

Not supervised, because the template's maps do not define them the way the table does:

* ``gray matter`` / ``white matter`` and their cerebral / cerebellar parts: the table's gray
  matter is cortex + deep gray (thalamus, caudate, putamen, pallidum, hippocampus, amygdala,
  accumbens, ventral DC) + cerebellar cortex, and the brain-stem is neither; the template's
  probability maps put the pallidum (WM ~0.8), about half of the thalamus, the ventral DC and the
  brain-stem (~0.5/0.5) on the white side. ``cerebral cortex`` is not the GM map either (that map
  also holds deep gray, hippocampus, amygdala and cerebellar cortex);
* the hemispheres: the table leaves the midline structures (brain-stem, 3rd and 4th ventricle,
  extra-ventricular CSF) out of both, and the maps do not delineate them;
* the ventricles (the hole filling finds the enclosed lateral ventricles only, not the 3rd/4th) and
  every individual structure (hippocampus, thalamus, ...): the template has no labels for them, and
  an MNI sample must never teach that they are empty.

Known approximations: the CSF / intracranial boundary is the thresholded template (the 0.5
partial-volume level for the parenchyma, T1 > 0.05 inside the hull for CSF), and the brain-stem
runs to the template's lower edge, where a FreeSurfer label map cuts it near the foramen magnum.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from training.synth.anatomy import load_template_map, template_dir
from training.synth.synthseg import BRAIN_MARGIN_MM, LabelMaps
from vision.targets import LESION_TARGETS, canonical_target, segmentation_labels

logger = logging.getLogger(__name__)

MNI_SUBJECT = "mni152_2009"
# canonical names (vision.targets) an MNI sample supervises; lesion targets too when lesions are painted
MNI_TARGETS: tuple[str, ...] = ("brain", "csf", "intracranial volume")
MNI_SUPERVISED: tuple[str, ...] = MNI_TARGETS + LESION_TARGETS
assert all(canonical_target(n) == n for n in MNI_SUPERVISED)

PARENCHYMA_MIN = 0.5  # GM + WM probability
HULL_MIN, HULL_DILATE_MM, T1_MIN = 0.3, 3, 0.05  # the CSF hull, as training.synth.anatomy builds it
# (label, outer distance in mm from the intracranial space): skull, scalp, subcutaneous fat
SHELLS: tuple[tuple[int, float], ...] = ((515, 6.0), (507, 10.0), (530, 13.0))
PAD_MM = 20  # room for the shells around the template's box


@lru_cache(maxsize=1)
def mni_label_map() -> tuple[np.ndarray, np.ndarray]:
    """(int16 generation labels, voxel -> world affine) of the padded template, 1 mm RAS (see the module doc)."""
    t1, affine = load_template_map("t1")
    gm, _ = load_template_map("gm")
    wm, _ = load_template_map("wm")
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"expected the 1 mm RAS MNI152 template, got affine {affine.tolist()}")
    t1, gm, wm = (np.pad(a, PAD_MM) for a in (t1, gm, wm))
    affine = affine.copy()
    affine[:3, 3] -= PAD_MM
    tissue = gm + wm
    parenchyma = tissue >= PARENCHYMA_MIN
    lab, n = ndimage.label(parenchyma)
    if n > 1:
        parenchyma = lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    brain = ndimage.binary_fill_holes(parenchyma)
    hull = ndimage.binary_fill_holes(ndimage.binary_dilation(tissue > HULL_MIN, iterations=HULL_DILATE_MM))
    icv = brain | (hull & (t1 > T1_MIN))
    right = np.broadcast_to((np.arange(t1.shape[0]) + affine[0, 3] >= 0)[:, None, None], t1.shape)
    labels = np.zeros(t1.shape, dtype=np.int16)
    dist = ndimage.distance_transform_edt(~icv)
    inner = 0.0
    for value, outer in SHELLS:
        labels[(dist > inner) & (dist <= outer)] = value
        inner = outer
    labels[icv] = 24
    labels[brain & ~parenchyma] = np.where(right, 43, 4)[brain & ~parenchyma]
    white = parenchyma & (wm >= gm)
    grey = parenchyma & ~white
    labels[white] = np.where(right, 41, 2)[white]
    labels[grey] = np.where(right, 42, 3)[grey]
    logger.info("MNI label map: brain %.0f mL, intracranial %.0f mL", brain.sum() / 1000, icv.sum() / 1000)
    return labels, affine


class MNILabelMaps(LabelMaps):
    """The template's label map as a one-subject :class:`LabelMaps` (cropped to the head like the others)."""

    def __init__(self) -> None:  # noqa: D107 - LabelMaps reads files; this builds from the template
        full, _ = mni_label_map()
        nz = np.argwhere(full > 0)
        lo = np.maximum(nz.min(0) - BRAIN_MARGIN_MM, 0)
        hi = np.minimum(nz.max(0) + BRAIN_MARGIN_MM + 1, full.shape)
        crop = np.ascontiguousarray(full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        self.crop_origin = lo  # voxel of the padded template map at crop index 0
        inside = np.argwhere(segmentation_labels(crop) > 0)
        pick = np.random.default_rng(0).choice(len(inside), size=min(len(inside), 50_000), replace=False)
        self.root = template_dir()  # the nilearn wheel's data folder
        self.names = [MNI_SUBJECT]
        self.maps = [torch.from_numpy(crop)]
        self.brain_boxes = [(inside.min(0).astype(np.float64), inside.max(0).astype(np.float64))]
        self.brain_points = [inside[pick].astype(np.float64)]


__all__ = ["MNI_SUBJECT", "MNI_TARGETS", "MNI_SUPERVISED", "MNILabelMaps", "mni_label_map"]
