"""SynthSeg-style training scans from real whole-head label maps (Billot et al., MedIA 2023).

Each sample: one subject's label map, deformed (random affine and elastic field), painted with
per-class Gaussian intensities (realistic T1 priors, T2/FLAIR/PD/CT/DWI-like orderings, or fully
random), multiplied by a bias field, blurred and resampled to a random acquisition (thick slices
included), with noise and a gamma change; optionally skull-stripped. Everything runs in torch on
the synthesis grid of the sample (1 mm over the patch), so a 128^3 sample costs a few tenths of a
second on one core and can be made in a worker process while the network trains.

The label maps are read by path (``DEFAULT_ROOT``); nothing derived from them is written to the
repository.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.synth.synthseg_lesions import LesionSettings, lesion_intensities, paint_lesions
from vision.targets import LUT_SIZE, TARGETS, segmentation_labels

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "synthseg"
VALIDATION_SUBJECTS = ("training_seg_17", "training_seg_18")  # never trained on
CONTRASTS = ("T1", "T2", "FLAIR", "PD", "CT", "DWI", "random")
BRAIN_MARGIN_MM = 6  # label maps are cropped to the head's bounding box plus this margin
WHOLE_MARGIN_MM = 16  # a whole-volume sample keeps this much head around the intracranial box
# augmentation moves each side of a whole-volume sample's box by -WHOLE_SHRINK_MM..+WHOLE_GROW_MM
WHOLE_SHRINK_MM, WHOLE_GROW_MM = 20, 40
MAX_WHOLE_VOXELS = 12_000_000  # whole-volume samples are shrunk to at most this many 1 mm voxels
# the small structures near the brain's centre that small training patches are centred on
DEEP_LABELS = np.array(sorted(TARGETS["deep gray matter"].labels | TARGETS["ventricles"].labels
                              | TARGETS["brain-stem"].labels), dtype=np.int16)

# Tissue kind of each of SynthSeg's 25 contrast-specific classes (priors/generation_classes_contrast_
# specific.npy), for the orderings that are not T1. Extra-cerebral classes 14-24 are sorted by their
# T1 prior: bright ones behave like fat, dark ones like bone or air, the rest like muscle/soft tissue.
_KIND_OF_CLASS = ("air", "csf", "wm", "gm", "wm", "gm", "deep", "deep", "deep_wm", "deep_wm", "wm", "blood",
                  "csf", "deep_wm", "soft", "bone", "soft", "soft", "muscle", "soft", "muscle", "bone", "bone",
                  "soft", "fat")
# Relative intensity of each kind per contrast (0..1), before a per-class jitter.
_ORDERINGS: dict[str, dict[str, float]] = {
    "T2": dict(air=0.0, csf=1.0, gm=0.55, wm=0.35, deep=0.45, deep_wm=0.38, blood=0.1, soft=0.45, muscle=0.25,
               bone=0.05, fat=0.6),
    "FLAIR": dict(air=0.0, csf=0.08, gm=0.62, wm=0.45, deep=0.55, deep_wm=0.48, blood=0.1, soft=0.4, muscle=0.3,
                  bone=0.05, fat=0.55),
    "PD": dict(air=0.0, csf=0.85, gm=0.72, wm=0.58, deep=0.66, deep_wm=0.6, blood=0.3, soft=0.6, muscle=0.4,
               bone=0.06, fat=0.75),
    "CT": dict(air=0.0, csf=0.42, gm=0.52, wm=0.47, deep=0.52, deep_wm=0.49, blood=0.56, soft=0.5, muscle=0.5,
               bone=1.0, fat=0.3),
    "DWI": dict(air=0.0, csf=0.12, gm=0.62, wm=0.5, deep=0.6, deep_wm=0.52, blood=0.15, soft=0.2, muscle=0.2,
                bone=0.04, fat=0.1),
}


@dataclass(frozen=True)
class SynthSettings:
    """Ranges of the random draws (SynthSeg's defaults where it has one)."""

    rotation_deg: float = 15.0
    scaling: float = 0.15
    shear: float = 0.012 * 4
    elastic_mm: float = 3.0
    bias_std: float = 0.5
    noise_max: float = 0.06  # fraction of the image range
    gamma_std: float = 0.25
    thick_slice_prob: float = 0.4  # share of samples acquired with one thick axis
    max_slice_mm: int = 7
    skull_strip_prob: float = 0.2
    contrast_odds: tuple[float, ...] = (0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.35)  # CONTRASTS order
    center_pull: float = 0.5  # patch centres: this far from a random brain voxel towards the brain's centre
    center_jitter_mm: float = 0.0
    # share of patch centres drawn anywhere in a whole scan's field of view (head, neck, air) instead of
    # at a brain voxel: whole-head scans hold tissue far below the brain that brain-centred patches never
    # show, and the network called it brain there
    head_point_share: float = 0.0
    lesion_probability: float = 0.0  # share of samples with painted lesions (synthseg_lesions)
    max_lesions: int = 2


@dataclass
class SynthSample:
    """One synthesized scan and its truth on the same grid."""

    image: torch.Tensor  # (X, Y, Z) float32, arbitrary units
    labels: torch.Tensor  # (X, Y, Z) int16, segmentation labels (vision.targets)
    spacing: tuple[float, float, float]  # mm per array axis, RAS-ordered axes
    contrast: str
    subject: str
    lesions: list = field(default_factory=list)  # synthseg_lesions.PaintedLesion


class LabelMaps:
    """The subjects' label maps in RAS orientation, cropped to the head, as int16 tensors."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, subjects: Sequence[str] | None = None) -> None:
        import nibabel as nib

        self.root = Path(root)
        maps_dir = self.root / "label_maps"
        if not maps_dir.is_dir():
            raise FileNotFoundError(
                f"no label maps at {maps_dir}: pass the folder holding SynthSeg's training label maps "
                "(label_maps/training_seg_*.nii.gz and priors/); see README 'Training data'")
        files = sorted(maps_dir.glob("training_seg_*.nii.gz"))
        names = [f.name.replace(".nii.gz", "") for f in files]
        if subjects is not None:
            missing = sorted(set(subjects) - set(names))
            if missing:
                raise ValueError(f"subjects {missing} not in {maps_dir}; have {names}")
            files = [f for f, n in zip(files, names) if n in set(subjects)]
        self.names: list[str] = []
        self.maps: list[torch.Tensor] = []
        self.brain_boxes: list[tuple[np.ndarray, np.ndarray]] = []  # (lo, hi) voxel corners of the brain
        self.brain_points: list[np.ndarray] = []  # a random subset of intracranial voxels (N, 3)
        self.deep_points: list[np.ndarray] = []  # the same of the deep structures (DEEP_LABELS)
        for path in files:
            img = nib.as_closest_canonical(nib.load(str(path)))
            labels = np.asarray(img.dataobj).astype(np.int16)
            if not np.allclose(np.abs(np.diag(img.affine)[:3]), 1.0, atol=1e-3):
                raise ValueError(f"{path} is not 1 mm isotropic")
            nz = np.argwhere(labels > 0)
            lo = np.maximum(nz.min(0) - BRAIN_MARGIN_MM, 0)
            hi = np.minimum(nz.max(0) + BRAIN_MARGIN_MM + 1, labels.shape)
            crop = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            inside = np.argwhere(segmentation_labels(crop) > 0)
            pick = np.random.default_rng(0).choice(len(inside), size=min(len(inside), 50_000), replace=False)
            self.brain_points.append(inside[pick].astype(np.float64))
            deep = np.argwhere(np.isin(crop, DEEP_LABELS))
            pick = np.random.default_rng(1).choice(len(deep), size=min(len(deep), 20_000), replace=False)
            self.deep_points.append(deep[pick].astype(np.float64))
            self.brain_boxes.append((inside.min(0).astype(np.float64), inside.max(0).astype(np.float64)))
            self.names.append(path.name.replace(".nii.gz", ""))
            self.maps.append(torch.from_numpy(np.ascontiguousarray(crop)))
        if not self.maps:
            raise FileNotFoundError(f"no training_seg_*.nii.gz in {maps_dir}")
        logger.info("loaded %d label maps from %s", len(self.maps), maps_dir)

    def __len__(self) -> int:
        return len(self.maps)


def split_subjects(root: str | Path = DEFAULT_ROOT) -> tuple[list[str], list[str]]:
    """(training, validation) subject names; validation is ``VALIDATION_SUBJECTS``."""
    names = sorted(p.name.replace(".nii.gz", "") for p in (Path(root) / "label_maps").glob("training_seg_*.nii.gz"))
    val = [n for n in names if n in VALIDATION_SUBJECTS]
    return [n for n in names if n not in VALIDATION_SUBJECTS], val


class Priors:
    """SynthSeg's generation classes and T1 intensity priors, as lookup tables over label values."""

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        p = Path(root) / "priors"
        gen_labels = np.load(p / "generation_labels.npy")
        classes = np.load(p / "generation_classes.npy")
        specific = np.load(p / "generation_classes_contrast_specific.npy")
        self.t1_means = np.load(p / "prior_means_t1.npy").astype(np.float32)  # (2, 25): mean, spread
        self.t1_stds = np.load(p / "prior_stds_t1.npy").astype(np.float32)
        self.n_classes = int(classes.max()) + 1
        self.n_specific = int(specific.max()) + 1
        # label value -> class index; unknown labels join class 0 (background)
        self.class_lut = np.zeros(LUT_SIZE, dtype=np.int64)
        self.specific_lut = np.zeros(LUT_SIZE, dtype=np.int64)
        self.class_lut[gen_labels] = classes
        self.specific_lut[gen_labels] = specific
        # classes (not contrast-specific) -> contrast-specific class, to give each class a tissue kind
        self.kind_of = [_KIND_OF_CLASS[int(specific[np.argmax(classes == c)])] for c in range(self.n_classes)]
        self.specific_of = np.array([int(specific[np.argmax(classes == c)]) for c in range(self.n_classes)])


def _random_affine(rng: np.random.Generator, s: SynthSettings) -> np.ndarray:
    """3x3 matrix: rotation x scaling x shear."""
    angles = np.deg2rad(rng.uniform(-s.rotation_deg, s.rotation_deg, 3))
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, si = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -si, si, c
        rot = rot @ r
    scale = np.diag(rng.uniform(1 - s.scaling, 1 + s.scaling, 3))
    shear = np.eye(3) + np.triu(rng.uniform(-s.shear, s.shear, (3, 3)), 1)
    return rot @ scale @ shear


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], std: float, coarse: int, channels: int = 1,
                  ) -> torch.Tensor:
    """A smooth random field (channels, *shape): Gaussian values on a coarse grid, upsampled."""
    small = torch.from_numpy(rng.standard_normal((1, channels, coarse, coarse, coarse)).astype(np.float32) * std)
    return F.interpolate(small, size=tuple(shape), mode="trilinear", align_corners=True)[0]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(image: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of (X, Y, Z) with a sigma (voxels) per axis; 0 leaves an axis alone."""
    x = image[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.05:
            continue
        k = _gaussian_kernel(float(sigma))
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        r = k.numel() // 2
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x[0, 0]


class SynthSegGenerator:
    """Draws :class:`SynthSample` s from a set of label maps."""

    def __init__(self, maps: LabelMaps, priors: Priors, settings: SynthSettings | None = None) -> None:
        self.maps = maps
        self.priors = priors
        self.settings = settings or SynthSettings()
        self._seg_lut = torch.from_numpy(segmentation_labels(np.arange(LUT_SIZE)).astype(np.int16))
        self._class_lut = torch.from_numpy(priors.class_lut)
        brain_like = np.zeros(LUT_SIZE, dtype=bool)
        seg = segmentation_labels(np.arange(LUT_SIZE))
        brain_like[seg > 0] = True  # intracranial: every segmentation label (CSF included)
        self._intracranial = torch.from_numpy(brain_like)

    # -- intensities -------------------------------------------------------------------------
    def class_intensities(self, rng: np.random.Generator, contrast: str) -> tuple[np.ndarray, np.ndarray]:
        """(means, stds) per generation class on a 0..255 scale."""
        p = self.priors
        n = p.n_classes
        if contrast == "T1":
            spec = p.specific_of
            means = rng.normal(p.t1_means[0, spec], p.t1_means[1, spec])
            stds = np.abs(rng.normal(p.t1_stds[0, spec], p.t1_stds[1, spec])) * 0.5
        elif contrast == "random":
            means = rng.uniform(0, 225, n)
            stds = rng.uniform(0, 25, n)
        else:
            order = _ORDERINGS[contrast]
            base = np.array([order[k] for k in p.kind_of]) * 200 + 10
            means = base + rng.normal(0, 12, n)
            stds = rng.uniform(1, 12, n)
        means[0] = rng.uniform(0, 10)  # air / background
        stds[0] = rng.uniform(0, 3)
        return np.clip(means, 0, 255).astype(np.float32), np.clip(stds, 0, 40).astype(np.float32)

    # -- geometry ----------------------------------------------------------------------------
    def _sample_grid(self, rng: np.random.Generator, source: torch.Tensor, shape: tuple[int, ...],
                     center: np.ndarray) -> torch.Tensor:
        """grid_sample coordinates (1, X, Y, Z, 3) of a deformed 1 mm box centred at ``center``."""
        s = self.settings
        axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
        mm = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (X, Y, Z, 3) box mm
        mm = mm @ torch.from_numpy(_random_affine(rng, s).astype(np.float32)).T
        if s.elastic_mm > 0:
            disp = _smooth_field(rng, shape, rng.uniform(0, s.elastic_mm), coarse=int(rng.integers(3, 6)), channels=3)
            mm = mm + disp.permute(1, 2, 3, 0)
        vox = mm + torch.from_numpy(center.astype(np.float32))
        size = torch.tensor(source.shape, dtype=torch.float32)
        norm = vox / (size - 1) * 2 - 1  # align_corners=True convention
        return norm.flip(-1)[None]  # grid_sample wants (z, y, x) order last

    def sample(self, rng: np.random.Generator, patch_mm: int | None = 128, subject: int | None = None,
               contrast: str | None = None, thick: bool | None = None, augment: bool = True,
               skull_strip: bool | None = None, slice_mm: int | None = None, deep: bool = False) -> SynthSample:
        """One scan: a ``patch_mm`` cube (None: the whole cropped head) at a random acquisition.

        ``deep``: the patch is centred on a random voxel of the deep structures (``DEEP_LABELS``), for
        small patches that hold them (jittered by ``center_jitter_mm``, never pulled or head-drawn)."""
        s = self.settings
        idx = int(rng.integers(len(self.maps))) if subject is None else subject
        source = self.maps.maps[idx]
        lo, hi = self.maps.brain_boxes[idx]
        if patch_mm is None:
            # the intracranial box plus a margin of head: what a brain MRI's field of view holds; with
            # augmentation each side moves by -20..+40 mm (cut-off vertex or chin, or much air around)
            lo, hi = np.maximum(lo - WHOLE_MARGIN_MM, 0), np.minimum(hi + WHOLE_MARGIN_MM, np.array(source.shape) - 1)
            if augment:
                lo = lo - rng.uniform(-WHOLE_SHRINK_MM, WHOLE_GROW_MM, 3)
                hi = hi + rng.uniform(-WHOLE_SHRINK_MM, WHOLE_GROW_MM, 3)
                while np.prod(hi - lo + 1) > MAX_WHOLE_VOXELS:
                    lo, hi = lo + 4, hi - 4
            shape = tuple(int(n) for n in (hi - lo + 1))
            center = (lo + hi) / 2 + (rng.uniform(-4, 4, 3) if augment else 0)
        else:
            shape = (patch_mm,) * 3
            # centred on a random intracranial voxel (so every structure is drawn as often as its size),
            # pulled towards the brain's centre by ``center_pull`` (1: always the centre), then jittered
            if deep and len(self.maps.deep_points[idx]):
                points = self.maps.deep_points[idx]
                center = points[int(rng.integers(len(points)))] + rng.uniform(-1, 1, 3) * s.center_jitter_mm
            elif s.head_point_share > 0 and rng.random() < s.head_point_share:
                # the largest box a whole-volume sample can have
                view_lo = np.maximum(lo - WHOLE_MARGIN_MM - WHOLE_GROW_MM, 0)
                view_hi = np.minimum(hi + WHOLE_MARGIN_MM + WHOLE_GROW_MM, np.array(source.shape) - 1)
                center = rng.uniform(view_lo, view_hi)
            else:
                point = self.maps.brain_points[idx][int(rng.integers(len(self.maps.brain_points[idx])))]
                center = point + s.center_pull * ((lo + hi) / 2 - point) + rng.uniform(-1, 1, 3) * s.center_jitter_mm
        if augment:
            grid = self._sample_grid(rng, source, shape, center)
            labels = F.grid_sample(source[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=True)[0, 0].to(torch.int64)
        else:
            a, b = lo.astype(int), hi.astype(int) + 1
            labels = source[a[0]:b[0], a[1]:b[1], a[2]:b[2]].to(torch.int64)
        lesions = paint_lesions(rng, labels, LesionSettings(probability=s.lesion_probability,
                                                            max_lesions=s.max_lesions))
        contrast = contrast or str(rng.choice(CONTRASTS, p=np.array(s.contrast_odds) / sum(s.contrast_odds)))
        means, stds = self.class_intensities(rng, contrast)
        cls = self._class_lut[labels]
        image = torch.from_numpy(means)[cls] + torch.from_numpy(stds)[cls] * torch.randn(labels.shape,
                                                                                          generator=_torch_gen(rng))
        image = image.clamp_min(0)
        if lesions:
            wm = int(self.priors.class_lut[2])
            image = lesion_intensities(rng, image, labels, contrast, float(means[wm]), float(stds[wm]) + 1.0)
        strip = (rng.random() < s.skull_strip_prob) if skull_strip is None else skull_strip
        if strip:
            image = image * self._intracranial[labels]
        if augment and s.bias_std > 0:
            image = image * torch.exp(_smooth_field(rng, shape, rng.uniform(0, s.bias_std), coarse=4)[0])
        spacing = [1.0, 1.0, 1.0]
        thick = (rng.random() < s.thick_slice_prob) if thick is None else thick
        sigmas = list(rng.uniform(0, 0.5, 3)) if augment else [0.0, 0.0, 0.0]
        seg = self._seg_lut[labels]
        if thick:
            axis = int(rng.integers(3))
            step = int(slice_mm) if slice_mm else int(rng.integers(2, s.max_slice_mm + 1))
            sigmas[axis] = 0.42 * step * rng.uniform(0.8, 1.2)  # slice profile ~ FWHM of the thickness
            image = blur(image, sigmas)
            offset = int(rng.integers(step))
            index = torch.arange(offset, image.shape[axis], step)
            image = image.index_select(axis, index)
            seg = seg.index_select(axis, index)
            spacing[axis] = float(step)
        else:
            image = blur(image, sigmas)
        if augment:
            span = float(image.max() - image.min()) or 1.0
            image = image + torch.randn(image.shape, generator=_torch_gen(rng)) * rng.uniform(0, s.noise_max) * span
            image = image.clamp_min(0)
            bottom, top = float(image.min()), float(image.max())
            if top > bottom:
                image = ((image - bottom) / (top - bottom)) ** float(np.exp(rng.normal(0, s.gamma_std)))
        return SynthSample(image.float().contiguous(), seg.contiguous(), (spacing[0], spacing[1], spacing[2]),
                           contrast, self.maps.names[idx], lesions)


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


__all__ = ["DEFAULT_ROOT", "VALIDATION_SUBJECTS", "CONTRASTS", "SynthSettings", "SynthSample", "LabelMaps",
           "Priors", "SynthSegGenerator", "split_subjects", "blur"]
