"""Task cases on real anatomy: a SynthSeg label map, deformed and painted into a cheap whole-head scan.

Why: the MNI cases (``training.synth.case``) know only GM/WM/CSF and hemispheres, so the agent never
heard of the hippocampus, the thalamus or the intracranial volume. A :class:`LabelCase` is built from
one of the 18 real label maps (``training.synth.synthseg``) and answers ``mask(target, scan)`` for
every target of ``vision.targets`` (all 59), straight from the labels on the scan's own grid, so the
ground truth of any measurement is exact by construction.

It duck-types :class:`training.synth.case.Case` where the task families, ``training.oracle`` and the
sandbox touch it (``seed``, ``spec.scans``, ``scans``, ``labels``, ``lesions``, ``sessions``,
``mask``, ``scan_name``, ``modality``, ``scans_of_session``) and survives
``training.tasks.rename.rename_scans`` (a dataclass whose per-scan data is keyed by scan name).

Cost: the label map is strided to ``resolution_mm`` (2 mm by default) once per subject and process,
then each case is one nearest-neighbour deformation, a SynthSeg-style contrast (the generator's class
intensities: T1 priors, T2/FLAIR/PD/CT/DWI orderings or random), bias, blur, optional thick slices,
noise and gamma, and a random header orientation: about 0.1-0.2 s on one core. Lesions come from
``training.synth.synthseg_lesions`` (painted one at a time so each voxel knows its lesion); the
characterization families (signal class, enhancement, restriction, growth, lobe) stay on the MNI cases,
whose lesion design records those properties.
"""
from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.synth import geometry as geo
from training.synth.case import ScanLookup, ScanSpec, _rng
from training.synth.synthseg import (
    DEFAULT_ROOT,
    VALIDATION_SUBJECTS,
    LabelMaps,
    Priors,
    SynthSegGenerator,
    blur,
    split_subjects,
)
from training.synth.synthseg_lesions import LesionSettings, lesion_intensities, paint_lesions
from vision.targets import LESION_TARGETS, canonical_target, segmentation_labels, target_mask
from voxel_ops import Volume, VolumeMeta

# modality of a scan -> contrast family of the SynthSeg generator
CONTRAST_OF = {"T1": "T1", "T1C": "T1", "T2": "T2", "FLAIR": "FLAIR", "PD": "PD", "CT": "CT", "DWI": "DWI",
               "MR": "random"}
WHITE_MATTER_LABEL = 2


@dataclass(frozen=True)
class LabelCaseSpec:
    """What a label case holds. All scans share one grid (one acquisition session each by ``session``)."""

    scans: tuple[ScanSpec, ...] = (ScanSpec("t1", "T1"),)
    lesions: tuple[int, int] = (0, 0)  # inclusive range of painted lesions
    lesion_radius_mm: tuple[float, float] = (4.0, 14.0)
    subject: str | None = None  # None: drawn from the source's subjects by the seed
    thick_prob: float = 0.2  # share of cases with one thick-slice axis (2-3 voxels)
    skull_strip_prob: float = 0.15
    margin_mm: tuple[float, float] = (4.0, 24.0)  # field of view around the intracranial box, per side
    reorient: bool = True  # random header orientation (axis permutation and flips)


@dataclass
class LabelLesion:
    """A painted lesion: what the anatomy families may ask about it (volumes per scan name)."""

    index: int
    side: str  # "left" or "right" (side of the lesion's centre)
    heterogeneous: bool  # necrotic core + rim
    has_edema: bool
    enhancing: bool = False  # the rim counts as "enhancing tumor" in vision.targets; no contrast design here
    volume_ml: dict[str, float] = field(default_factory=dict)
    centroid_mm: dict[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass
class LabelCase(ScanLookup):
    """Scans synthesized from one real label map, and the segmentation labels on each scan's grid."""

    seed: int
    spec: LabelCaseSpec
    scans: dict[str, Volume]
    labels: dict[str, Volume]  # int16 segmentation labels (vision.targets) on each scan's grid
    lesions: list[LabelLesion]
    sessions: dict[int, str]  # session -> ISO date
    subject: str = ""
    lesion_ids: np.ndarray | None = None  # lesion index + 1 per voxel (shared grid), 0 elsewhere

    def mask(self, target: str, scan: str, *, lesion: int | None = None) -> Volume:
        """Ground-truth 0/1 uint8 mask of any ``vision.targets`` name or synonym on the grid of ``scan``.

        ``lesion`` restricts a lesion target to one painted lesion.
        """
        name = canonical_target(target)
        labels = self.labels[scan]
        inside = target_mask(labels.array, name)
        if lesion is not None and name in LESION_TARGETS:
            ids = self.lesion_ids if self.lesion_ids is not None else np.zeros(labels.shape, np.uint8)
            inside = inside & (ids == lesion + 1)
        return labels.with_array(inside.astype(np.uint8), modality="mask", series_description=name)


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


@dataclass
class _Subject:
    """One label map strided to the working resolution (generation labels, RAS axes)."""

    name: str
    labels: torch.Tensor  # int16 (X, Y, Z)
    lo: np.ndarray  # intracranial box, voxel corners on the strided grid
    hi: np.ndarray


class LabelCaseSource:
    """Subjects to build label cases from; loads each map once per process, on first use.

    ``subjects`` defaults to the training split of ``root`` (``synthseg.split_subjects``), so the
    validation subjects (training_seg_17/18) are never used for training tasks unless an evaluation
    passes them explicitly.
    """

    def __init__(self, root: str | Path = DEFAULT_ROOT, subjects: Sequence[str] | None = None,
                 resolution_mm: float = 2.0) -> None:
        self.root = Path(root)
        if subjects is None:
            subjects, _ = split_subjects(self.root)
            subjects = [s for s in subjects if s not in VALIDATION_SUBJECTS]
        self.subjects: tuple[str, ...] = tuple(subjects)
        if not self.subjects:
            raise FileNotFoundError(f"no label maps for label cases under {self.root / 'label_maps'}")
        self.stride = max(1, int(round(resolution_mm)))
        self.resolution_mm = float(self.stride)
        self._cache: dict[str, _Subject] = {}
        self._lock = threading.Lock()
        self._priors: Priors | None = None
        self._gen: SynthSegGenerator | None = None

    @staticmethod
    def available(root: str | Path = DEFAULT_ROOT) -> bool:
        """Whether ``root`` holds label maps and priors (the shared data is not on CI)."""
        root = Path(root)
        return (root / "priors").is_dir() and any((root / "label_maps").glob("training_seg_*.nii.gz"))

    def subject(self, name: str) -> _Subject:
        with self._lock:
            if name not in self._cache:
                maps = LabelMaps(self.root, [name])
                s = self.stride
                lo, hi = maps.brain_boxes[0]
                self._cache[name] = _Subject(name, maps.maps[0][::s, ::s, ::s].contiguous(), np.floor(lo / s),
                                             np.ceil(hi / s))
                if self._gen is None:
                    self._priors = Priors(self.root)
                    self._gen = SynthSegGenerator(maps, self._priors)  # for its class intensities
            return self._cache[name]

    @property
    def generator(self) -> SynthSegGenerator:
        if self._gen is None:
            self.subject(self.subjects[0])
        assert self._gen is not None
        return self._gen

    def case(self, seed: int, spec: LabelCaseSpec | None = None) -> LabelCase:
        return synthesize_label_case(seed, spec, source=self)


_DEFAULT: dict[str, LabelCaseSource] = {}


def default_source() -> LabelCaseSource:
    """The training subjects of ``../shared/data/synthseg``, shared by every caller in the process."""
    if "root" not in _DEFAULT:
        _DEFAULT["root"] = LabelCaseSource(DEFAULT_ROOT)
    return _DEFAULT["root"]


def _deform(rng: np.random.Generator, src: _Subject, spec: LabelCaseSpec, stride: int) -> torch.Tensor:
    """Generation labels on a randomly deformed box: the intracranial box plus a random margin.

    The sampling coordinates (rotation, scaling, shear and a smooth elastic field, SynthSeg's ranges)
    are computed on a control grid ~8 voxels apart and upsampled trilinearly: exact for the linear part,
    smooth for the elastic one, and a fraction of the cost of a full-resolution coordinate field.
    """
    margin_vox = rng.uniform(*spec.margin_mm, size=(2, 3)) / stride
    lo = src.lo - margin_vox[0]
    hi = src.hi + margin_vox[1]
    shape = tuple(int(n) for n in np.maximum(np.round(hi - lo + 1), 8))
    center = (lo + hi) / 2 + rng.uniform(-2, 2, 3) / stride
    linear = (geo.rotation_matrix(np.deg2rad(rng.uniform(-10, 10, 3))) @ np.diag(rng.uniform(0.9, 1.1, 3))
              @ (np.eye(3) + np.triu(rng.uniform(-0.02, 0.02, (3, 3)), 1)))
    coarse = [max(2, n // 8 + 2) for n in shape]
    axes = [np.linspace(-(n - 1) / 2, (n - 1) / 2, c) for n, c in zip(shape, coarse)]
    box = np.stack(np.meshgrid(*axes, indexing="ij"), -1) @ linear.T
    box += rng.standard_normal(box.shape) * (rng.uniform(0, 3.0) / stride / 2)  # elastic, ~3 mm at most
    vox = box + center
    norm = (vox / (np.array(src.labels.shape) - 1) * 2 - 1)[..., ::-1]  # align_corners, (z, y, x) order
    field_ = torch.from_numpy(np.ascontiguousarray(norm.transpose(3, 0, 1, 2), dtype=np.float32))[None]
    grid = F.interpolate(field_, size=shape, mode="trilinear", align_corners=True)[0].permute(1, 2, 3, 0)
    out = F.grid_sample(src.labels[None, None].float(), grid[None], mode="nearest", padding_mode="zeros",
                        align_corners=True)[0, 0]
    return out.to(torch.int64)


def _paint(rng: np.random.Generator, labels: torch.Tensor, spec: LabelCaseSpec, stride: int
           ) -> tuple[list[tuple[int, bool, bool, bool]], np.ndarray | None]:
    """Paint the spec's lesions one at a time; (index, right, heterogeneous, edema) and a lesion-index map."""
    n = int(rng.integers(spec.lesions[0], spec.lesions[1] + 1))
    if n == 0:
        return [], None
    ids = torch.zeros(labels.shape, dtype=torch.uint8)
    out = []
    for i in range(n):
        settings = LesionSettings(probability=1.0, max_lesions=1,
                                  radius_mm=tuple(r / stride for r in spec.lesion_radius_mm),  # voxels
                                  edema_mm=(1.0, 4.0))
        before = labels.clone()
        painted = paint_lesions(rng, labels, settings)
        if not painted:
            continue
        ids[labels != before] = i + 1
        p = painted[0]
        out.append((i, p.right, p.heterogeneous, bool(((labels == 1004) | (labels == 1014)).any())))
    return out, ids.numpy()


def _image(rng: np.random.Generator, labels: torch.Tensor, gen: SynthSegGenerator, contrast: str, strip: bool,
           has_lesions: bool) -> torch.Tensor:
    """A SynthSeg-style image of the generation labels (before thick slices).

    One Gaussian draw serves as both texture and acquisition noise (per-class std plus a global one):
    at 2 mm with sub-voxel blur the two are indistinguishable, and it halves the cost.
    """
    priors = gen.priors
    means, stds = gen.class_intensities(rng, contrast)
    stds = stds + np.float32(rng.uniform(0, 0.04) * float(means.max() - means.min()))
    cls = torch.from_numpy(priors.class_lut)[labels]
    image = torch.randn(labels.shape, generator=_torch_gen(rng))
    image.mul_(torch.from_numpy(stds)[cls]).add_(torch.from_numpy(means)[cls]).clamp_(min=0)
    if has_lesions:
        wm = int(priors.class_lut[WHITE_MATTER_LABEL])
        image = lesion_intensities(rng, image, labels, contrast, float(means[wm]), float(stds[wm]) + 1.0)
    if strip:
        image.mul_(torch.from_numpy(segmentation_labels(labels.numpy()) > 0))
    small = torch.from_numpy(rng.standard_normal((1, 1, 4, 4, 4)).astype(np.float32) * rng.uniform(0, 0.4))
    image.mul_(torch.exp(F.interpolate(small, size=tuple(labels.shape), mode="trilinear", align_corners=True)[0, 0]))
    return blur(image, list(rng.uniform(0, 0.5, 3) * (rng.random(3) < 0.5)))


def _finish(rng: np.random.Generator, image: torch.Tensor, contrast: str) -> np.ndarray:
    """Gamma and an arbitrary scanner scale (CT keeps a 0..255-like scale)."""
    bottom, top = (float(v) for v in torch.aminmax(image))
    if top > bottom:
        image = ((image - bottom) / (top - bottom)).pow_(float(np.exp(rng.normal(0, 0.2))))
    scale = 255.0 if contrast == "CT" else float(10 ** rng.uniform(0, 3))
    return image.mul_(scale).numpy().astype(np.float32, copy=False)


def synthesize_label_case(seed: int, spec: LabelCaseSpec | None = None, *, source: LabelCaseSource | None = None
                          ) -> LabelCase:
    """One case on real anatomy: the subject (drawn by seed from ``source.subjects``), its scans and labels."""
    spec = spec or LabelCaseSpec()
    source = source or default_source()
    gen = source.generator
    stride = source.stride
    subj_rng = _rng(seed, "label-subject")
    name = spec.subject or source.subjects[int(subj_rng.integers(len(source.subjects)))]
    src = source.subject(name)
    geo_rng = _rng(seed, "label-geometry")
    labels = _deform(geo_rng, src, spec, stride)
    painted, ids = _paint(_rng(seed, "label-lesions"), labels, spec, stride)
    seg = torch.from_numpy(segmentation_labels(labels.numpy()))
    spacing = [source.resolution_mm] * 3
    thick_axis, step, offset = None, 1, 0
    if geo_rng.random() < spec.thick_prob:
        thick_axis, step = int(geo_rng.integers(3)), int(geo_rng.integers(2, 4))
        offset = int(geo_rng.integers(step))
        spacing[thick_axis] *= step
    strip = bool(geo_rng.random() < spec.skull_strip_prob)
    perm, flips = geo.random_orientation(_rng(seed, "label-orientation")) if spec.reorient else \
        ((0, 1, 2), (False, False, False))

    def acquire(t: torch.Tensor) -> torch.Tensor:
        if thick_axis is None:
            return t
        return t.index_select(thick_axis, torch.arange(offset, t.shape[thick_axis], step))

    seg_grid = acquire(seg).numpy().astype(np.int16)
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = -(np.array(seg_grid.shape) - 1) / 2 * np.array(spacing)
    seg_arr, affine = geo.reorient(seg_grid, ras, perm, flips)
    ids_arr = None
    if ids is not None:
        ids_arr, _ = geo.reorient(acquire(torch.from_numpy(ids)).numpy(), ras, perm, flips)

    day = dt.date(2015, 1, 1) + dt.timedelta(days=int(_rng(seed, "label-dates").integers(0, 3000)))
    sessions = {s: (day + dt.timedelta(days=200 * i)).isoformat()
                for i, s in enumerate(sorted({sc.session for sc in spec.scans}))}
    scans: dict[str, Volume] = {}
    label_vols: dict[str, Volume] = {}
    for sc in spec.scans:
        contrast = CONTRAST_OF.get(sc.modality.upper(), "random") if sc.contrast is None else sc.contrast
        img_rng = _rng(seed, "label-image", sc.name)
        image = _image(img_rng, labels, gen, contrast, strip, bool(painted))
        if thick_axis is not None:
            sig = [0.0, 0.0, 0.0]
            sig[thick_axis] = 0.42 * step * img_rng.uniform(0.8, 1.2)  # slice profile ~ FWHM of the thickness
            image = acquire(blur(image, sig))
        arr, _ = geo.reorient(_finish(img_rng, image, contrast), ras, perm, flips)
        meta = VolumeMeta(modality=sc.modality.upper(), acquisition_date=sessions[sc.session],
                          series_description=f"synthetic {contrast} ({name})", source_name=sc.name)
        scans[sc.name] = Volume(arr, affine.copy(), meta)
        label_vols[sc.name] = Volume(seg_arr, affine.copy(), VolumeMeta(modality="labels", source_name=sc.name))

    case = LabelCase(seed=seed, spec=spec, scans=scans, labels=label_vols, lesions=[], sessions=sessions,
                     subject=name, lesion_ids=ids_arr)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    for index, right, hetero, _ in painted:
        first = next(iter(scans))
        m = case.mask("lesion", first, lesion=index).array > 0
        if not m.any():
            continue  # overwritten by a later lesion, or lost between thick slices
        edema = bool(case.mask("edema", first, lesion=index).array.any())
        centroid = tuple(float(c) for c in (affine[:3, :3] @ np.argwhere(m).mean(0) + affine[:3, 3]))
        t = LabelLesion(index=index, side="right" if right else "left", heterogeneous=hetero, has_edema=edema,
                        enhancing=hetero)
        for sc in scans:  # every scan shares the grid
            t.volume_ml[sc] = float(m.sum()) * voxel_ml
            t.centroid_mm[sc] = centroid  # type: ignore[assignment]  # a 3-tuple
        case.lesions.append(t)
    return case


__all__ = ["CONTRAST_OF", "LabelCase", "LabelCaseSource", "LabelCaseSpec", "LabelLesion",
           "default_source", "synthesize_label_case"]
