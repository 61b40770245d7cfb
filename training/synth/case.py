"""`synthesize_case(seed, spec) -> Case`: scans, label maps and ground-truth properties of one subject.

Every random draw comes from a named substream of the seed (`_rng(seed, "grid", session)`), so a
choice in one part (e.g. header orientation) never shifts the draws of another, and the same seed
always gives identical arrays.
"""
from __future__ import annotations

import datetime as dt
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from training.errors import SynthesisError
from training.synth import contrast as cx
from training.synth import geometry as geo
from training.synth import lesions as les
from training.synth.anatomy import Anatomy, load_anatomy
from training.synth.fields import pooled_normal
from training.synth.labels import (
    CSF,
    GM,
    LESION_FIRST,
    LOW_MASK,
    MAX_LESIONS,
    PART_CORE,
    PART_EDEMA,
    PART_RIM,
    PART_SOLID,
    RIGHT_BIT,
    SHELL_FIRST,
    SHELL_LAST,
    WM,
    lesion_code,
    target_lut,
)
from voxel_ops import Volume, VolumeMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanSpec:
    """One scan of a case. `contrast` picks the intensity prior ("random" = SynthSeg-style)."""

    name: str
    modality: str = "T1"  # T1, T1C, T2, FLAIR, CT, DWI, ADC
    session: int = 0
    contrast: str | None = None  # default: the modality's own family


@dataclass(frozen=True)
class LesionSpec:
    count: tuple[int, int] = (0, 0)  # inclusive range
    tissue: str | None = None  # "wm", "gm_wm", None = random
    sides: tuple[str, ...] | None = None  # per-lesion side ("left"/"right"/"bilateral"); None = random
    bilateral_prob: float = 0.1
    radius_mm: tuple[float, float] = (5.0, 14.0)
    heterogeneous_prob: float = 0.3
    edema_prob: float = 0.3
    enhancing_prob: float = 0.5
    restricting_prob: float = 0.5
    growth_range: tuple[float, float] = (0.4, 2.5)  # volume ratio between sessions
    stable_prob: float = 0.2  # probability the lesion keeps its size
    visible_on: tuple[str, ...] = ()  # sequence families on which lesions must not be isointense
    flair_classes: tuple[str, ...] | None = None  # per-lesion FLAIR signal class (cycled); None = drawn


@dataclass(frozen=True)
class CaseSpec:
    scans: tuple[ScanSpec, ...] = (ScanSpec("t1", "T1"),)
    lesions: LesionSpec = LesionSpec()
    resolution_mm: float = 2.0  # template working resolution
    inplane_mm: tuple[float, float] = (1.8, 2.6)
    thick_prob: float = 0.25
    slice_mm: tuple[float, float] = (4.0, 7.0)
    margin_mm: tuple[float, float] = (4.0, 24.0)
    crop_prob: float = 0.15
    crop_max_frac: float = 0.12
    reorient: bool = True
    shells_prob: float = 0.8
    scale_range: float = 0.1
    shear_range: float = 0.05
    elastic_mm: float = 3.0
    max_pitch_deg: float = 15.0
    max_roll_yaw_deg: float = 4.0
    max_shift_mm: float = 10.0
    bias_log_std: float = 0.3
    blur_sigma_vox: float = 0.8
    noise_rel: float = 0.05
    # Share of T1 scans whose healthy-tissue intensities are the warped real MNI T1 (gamma-remapped)
    # instead of per-label random values. Off by default: the real-MNI evaluation uses that very image,
    # so a model trained with this on is no longer tested out of distribution there.
    template_t1_prob: float = 0.0


@dataclass
class LesionTruth:
    """Ground truth of one lesion. Per-scan values are keyed by scan name."""

    index: int
    tissue: str
    side: str  # anatomical side: "left", "right", "bilateral"
    region: str  # coarse lobe (see lesions.coarse_region)
    centroid_template_mm: tuple[float, float, float]
    heterogeneous: bool
    has_edema: bool
    enhancing: bool
    restricting: bool
    signal: dict[str, str]  # sequence family -> "hyperintense"/"hypointense"/"isointense"
    growth_factor: float  # designed volume ratio session 1 / session 0
    volume_ml: dict[str, float] = field(default_factory=dict)
    centroid_mm: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    growth_percent: float | None = None  # measured on the first scan of each session


class ScanLookup:
    """Scan lookups shared by every kind of case (template `Case`, label-map `LabelCase`): they need
    only ``scans`` (name -> Volume) and ``spec.scans`` (ScanSpec-like: name, modality, session)."""

    scans: dict[str, Volume]
    spec: Any

    def scan_name(self, volume: Volume) -> str:
        """Which of this case's scans ``volume`` is: the same object, else the same grid and source.

        Vision clients used in training and evaluation receive Volumes from the sandbox and must map
        them back to the case's ground truth.
        """
        for name, scan in self.scans.items():
            if scan is volume:
                return name
        for name, scan in self.scans.items():
            if scan.same_grid(volume) and scan.meta.source_name == volume.meta.source_name:
                return name
        raise KeyError("this volume is not one of the case's scans")

    def scans_of_session(self, session: int) -> list[str]:
        return [s.name for s in self.spec.scans if s.session == session]

    def modality(self, scan: str) -> str:
        return next(s.modality for s in self.spec.scans if s.name == scan)


@dataclass
class Case(ScanLookup):
    seed: int
    spec: CaseSpec
    scans: dict[str, Volume]
    labels: dict[str, Volume]  # uint8 code maps on each scan's grid (see training.synth.labels)
    lesions: list[LesionTruth]
    sessions: dict[int, str]  # session -> ISO date
    skull_bins: tuple[int, int] | None
    head_last_bin: int | None

    def mask(self, target: str, scan: str, *, lesion: int | None = None) -> Volume:
        """Ground-truth 0/1 uint8 mask of `target` on the grid of `scan`."""
        lut = target_lut(target, enhancing_lesions=[t.index for t in self.lesions if t.enhancing],
                         lesion_index=lesion, skull_bins=self.skull_bins, head_last_bin=self.head_last_bin)
        codes = self.labels[scan]
        return codes.with_array(lut.astype(np.uint8)[codes.array], modality="mask",
                                series_description=target)



def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def volume_ml(mask: Volume) -> float:
    from voxel_ops import volume_ml as _volume_ml

    return float(_volume_ml(mask))


# ---------------------------------------------------------------- lesions in template space

def _design_lesions(seed: int, spec: CaseSpec, anatomy: Anatomy) -> list[les.LesionDesign]:
    ls = spec.lesions
    rng = _rng(seed, "lesions")
    n = int(rng.integers(ls.count[0], ls.count[1] + 1))
    n = min(n, MAX_LESIONS)
    designs: list[les.LesionDesign] = []
    taken = np.zeros(anatomy.shape, dtype=bool)
    for i in range(n):
        if ls.sides is not None and i < len(ls.sides):
            side = ls.sides[i]
        else:
            side = "bilateral" if rng.random() < ls.bilateral_prob else ("left" if rng.random() < 0.5 else "right")
        tissue = ls.tissue or ("wm" if rng.random() < 0.6 else "gm_wm")
        radius = ls.radius_mm if side != "bilateral" else (max(ls.radius_mm[0], 8.0), max(ls.radius_mm[1], 12.0))
        hetero = bool(rng.random() < ls.heterogeneous_prob)
        growth = 1.0 if rng.random() < ls.stable_prob else float(np.exp(rng.uniform(*np.log(ls.growth_range))))
        if growth != 1.0 and abs(np.log(growth)) < np.log(1.3):  # clear growth or shrinkage, or none
            growth = float(1.3 ** np.sign(np.log(growth)))
        d = les.sample_design(rng, i, anatomy.codes, anatomy.resolution_mm, anatomy.affine, tissue=tissue, side=side,
                              radius_mm=radius, heterogeneous=hetero, edema=bool(rng.random() < ls.edema_prob),
                              enhancing=bool(rng.random() < ls.enhancing_prob),
                              restricting=bool(rng.random() < ls.restricting_prob), growth_factor=growth,
                              taken=taken)
        box, parts = les.render(d, anatomy.codes, anatomy.resolution_mm)
        d.heterogeneous = PART_CORE in parts
        weights = {p: float(m.sum()) for p, m in parts.items() if p != PART_EDEMA}
        if sum(weights.values()) == 0:
            weights = {PART_SOLID: 1.0}
        forced = {"FLAIR": ls.flair_classes[i % len(ls.flair_classes)]} if ls.flair_classes else None
        les.design_signal(rng, d, weights, ls.visible_on, forced)
        # keep later lesions apart from this one (grown size plus a gap)
        grow = max(1, int(np.ceil((d.radius_mm * max(1.0, growth) ** (1 / 3) * 1.6 + d.edema_mm + 6)
                                  / anatomy.resolution_mm)))
        lo = np.maximum(d.center_vox - grow, 0)
        hi = d.center_vox + grow + 1
        taken[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        designs.append(d)
    return designs


def _paint_session(anatomy: Anatomy, designs: list[les.LesionDesign], session: int
                   ) -> tuple[np.ndarray, dict[int, tuple[tuple[slice, slice, slice], np.ndarray]]]:
    """Template code map with this session's lesions, and each lesion's (box, painted voxels)."""
    codes = anatomy.codes.copy()
    painted = {}
    for d in designs:
        scale = d.growth_factor ** (1 / 3) if session > 0 else 1.0
        box, parts = les.render(d, anatomy.codes, anatomy.resolution_mm, scale)
        les.paint(codes, d, box, parts)
        low = codes[box] & LOW_MASK
        rel = low.astype(np.int16) - LESION_FIRST
        painted[d.index] = (box, (low >= LESION_FIRST) & (rel // 8 == d.index) & (rel % 8 != PART_EDEMA))
    return codes, painted


def _template_truth(anatomy: Anatomy, codes: np.ndarray, box: tuple[slice, slice, slice], mine: np.ndarray
                    ) -> tuple[str, str, tuple]:
    idx = np.argwhere(mine)
    if idx.size == 0:
        raise SynthesisError("lesion vanished after painting")
    right = (codes[box][mine] & RIGHT_BIT) > 0
    frac_right = float(right.mean())
    side = "right" if frac_right > 0.95 else "left" if frac_right < 0.05 else "bilateral"
    idx = idx + np.array([b.start for b in box])
    centroid = idx.mean(axis=0) * anatomy.resolution_mm + anatomy.affine[:3, 3]
    return side, les.coarse_region(centroid), tuple(float(c) for c in centroid)


# ---------------------------------------------------------------- intensities

def _shell_layers(rng: np.random.Generator, enabled: bool) -> tuple[np.ndarray, tuple[int, int] | None, int | None]:
    """Per shell bin: 0 air, 1 dura/CSF rim, 2 skull, 3 scalp."""
    n = SHELL_LAST - SHELL_FIRST + 1
    layer = np.zeros(n, dtype=np.int8)
    if not enabled:
        return layer, None, None
    dura = int(rng.integers(1, 4))
    skull = int(rng.integers(4, 9))
    scalp = int(rng.integers(3, 9))
    layer[:dura] = 1
    layer[dura:dura + skull] = 2
    layer[dura + skull:dura + skull + scalp] = 3
    return layer, (dura, dura + skull - 1), dura + skull + scalp - 1


def _intensity_luts(rng: np.random.Generator, family: str, shell_layer: np.ndarray, designs: list[les.LesionDesign]
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    means = cx.sample_class_means(rng, family)
    stds = cx.texture_std(rng, family, means)
    mean_lut = np.full(128, means["air"], dtype=np.float32)
    std_lut = np.full(128, stds["air"] * 0.2, dtype=np.float32)
    for code, key in ((CSF, "csf"), (GM, "gm"), (WM, "wm")):
        mean_lut[code], std_lut[code] = means[key], stds[key]
    for b, layer in enumerate(shell_layer):
        key = ("air", "dura", "skull", "scalp")[layer]
        mean_lut[SHELL_FIRST + b] = means[key]
        std_lut[SHELL_FIRST + b] = stds[key] * (0.2 if key == "air" else 1.0)
    sig_family = family if family in les.SIGNAL_FAMILIES else "random"
    for d in designs:
        for part, factor in d.factors[sig_family].items():
            mean_lut[lesion_code(d.index, part)] = factor * means["wm"]
            std_lut[lesion_code(d.index, part)] = stds["wm"]
        for part in (PART_SOLID, PART_RIM, PART_CORE):  # parts absent from this lesion: harmless defaults
            if part not in d.factors[sig_family]:
                mean_lut[lesion_code(d.index, part)] = means["wm"]
    return np.tile(mean_lut, 2), np.tile(std_lut, 2), means


@dataclass
class _GridFacts:
    """Label facts of one sampled grid, shared by every scan of a session."""

    codes: np.ndarray
    wm_flat: np.ndarray  # flat indices of normal white matter
    lesion_flat: dict[int, np.ndarray]  # lesion index -> flat indices of its parts (edema excluded)
    lesion_parts: dict[int, np.ndarray]  # lesion index -> part of each of those voxels

    @classmethod
    def of(cls, codes: np.ndarray) -> "_GridFacts":
        flat = codes.ravel() & LOW_MASK
        wm = np.flatnonzero(flat == WM)
        les_idx = np.flatnonzero(flat >= LESION_FIRST)
        rel = flat[les_idx].astype(np.int16) - LESION_FIRST
        ids, parts = rel // 8, rel % 8
        keep = parts != PART_EDEMA
        les_idx, ids, parts = les_idx[keep], ids[keep], parts[keep]
        return cls(codes, wm, {int(i): les_idx[ids == i] for i in np.unique(ids)},
                   {int(i): parts[ids == i] for i in np.unique(ids)})


def _settle_lesion_signal(image: np.ndarray, facts: _GridFacts, family: str,
                          designs: list[les.LesionDesign]) -> None:
    """Rescale each lesion so its mean over normal white matter is the designed ratio.

    Blur mixes small lesions with their neighbours (partial volume); without this an "isointense"
    lesion next to CSF would read as hypointense and the recorded class would be wrong.
    """
    flat = image.reshape(-1)
    wm_mean = float(flat[facts.wm_flat].mean())
    sig_family = family if family in les.SIGNAL_FAMILIES else "random"
    by_index = {d.index: d for d in designs}
    for index, where in facts.lesion_flat.items():
        factors = by_index[index].factors[sig_family]
        target = float(np.mean(np.array([factors[int(p)] for p in (PART_SOLID, PART_RIM, PART_CORE)],
                                        dtype=np.float64)[np.searchsorted([PART_SOLID, PART_RIM, PART_CORE],
                                                                          facts.lesion_parts[index])]))
        current = float(flat[where].mean())
        if abs(wm_mean) < 1e-6 or current * wm_mean <= 0:
            continue
        flat[where] *= np.float32(target * wm_mean / current)


def _synthesize_image(rng: np.random.Generator, facts: _GridFacts, family: str, spec: CaseSpec,
                      shell_layer: np.ndarray, designs: list[les.LesionDesign],
                      real_t1: np.ndarray | None = None) -> np.ndarray:
    codes = facts.codes
    mean_lut, std_lut, means = _intensity_luts(rng, family, shell_layer, designs)
    image = mean_lut[codes]
    image += std_lut[codes] * pooled_normal(rng, codes.shape)
    if real_t1 is not None:  # healthy tissue from the real template T1, remapped to this scan's WM level
        low = codes & LOW_MASK
        tissue = (low >= CSF) & (low <= WM)
        gamma = float(rng.uniform(0.7, 1.4))
        image[tissue] = np.power(np.clip(real_t1[tissue], 0, None), gamma) * np.float32(means["wm"] / 0.86 ** gamma)
    image = cx.blur(image, rng, spec.blur_sigma_vox)
    # CT has no coil bias field (values are calibrated Hounsfield units)
    bias = cx.bias_field(rng, codes.shape, 0.0 if family == "CT" else spec.bias_log_std)
    if facts.lesion_flat and facts.wm_flat.size:
        # fill is relative to normal white matter *of this scan*: undo the bias difference between
        # the lesion and the white matter so the designed signal class holds in the image
        flat_bias = bias.reshape(-1)
        wm_bias = float(flat_bias[facts.wm_flat].mean())
        for where in facts.lesion_flat.values():
            flat_bias[where] *= wm_bias / float(flat_bias[where].mean())
    image *= bias
    span = abs(means["wm"] - means["csf"]) + abs(means["gm"] - means["csf"])
    image += np.float32(cx.noise_std(rng, span, spec.noise_rel)) * pooled_normal(rng, codes.shape)
    if facts.lesion_flat and facts.wm_flat.size:
        _settle_lesion_signal(image, facts, family, designs)
    if family != "CT" and family != "ADC":
        np.abs(image, out=image)  # magnitude images are non-negative
    return image


# ---------------------------------------------------------------- the case

def synthesize_case(seed: int, spec: CaseSpec | None = None) -> Case:
    """Synthesize one subject: every scan of `spec`, its label map, and the lesions' ground truth."""
    spec = spec or CaseSpec()
    anatomy = load_anatomy(spec.resolution_mm)
    subj_rng = _rng(seed, "subject")
    subject_linear = geo.sample_subject_linear(subj_rng, spec.scale_range, spec.shear_range)
    elastic = geo.sample_elastic(subj_rng, 5, spec.elastic_mm)
    shell_layer, skull_bins, head_last = _shell_layers(_rng(seed, "shells"), subj_rng.random() < spec.shells_prob)
    designs = _design_lesions(seed, spec, anatomy)

    sessions = sorted({s.session for s in spec.scans})
    date_rng = _rng(seed, "dates")
    day = dt.date(2015, 1, 1) + dt.timedelta(days=int(date_rng.integers(0, 3000)))
    dates: dict[int, str] = {}
    for s in sessions:
        dates[s] = day.isoformat()
        day += dt.timedelta(days=int(date_rng.integers(60, 720)))

    scans: dict[str, Volume] = {}
    labels: dict[str, Volume] = {}
    session_codes: dict[int, tuple] = {}
    for session in sessions:
        codes_t, painted = _paint_session(anatomy, designs, session)
        session_codes[session] = (codes_t, painted)
        warp = geo.sample_warp(_rng(seed, "pose", session), anatomy.brain_center_mm, subject_linear, elastic,
                               anatomy.brain_min_mm, anatomy.brain_max_mm, max_pitch_deg=spec.max_pitch_deg,
                               max_roll_yaw_deg=spec.max_roll_yaw_deg, max_shift_mm=spec.max_shift_mm)
        corners = np.array(np.meshgrid(*zip(anatomy.brain_min_mm, anatomy.brain_max_mm), indexing="ij"))
        corners = corners.reshape(3, -1).T
        scanner = warp.to_scanner_linear(corners)
        box_min, box_max = scanner.min(axis=0), scanner.max(axis=0)
        grid = geo.sample_grid(_rng(seed, "grid", session), box_min, box_max, inplane_mm=spec.inplane_mm,
                               thick_prob=spec.thick_prob, slice_mm=spec.slice_mm, margin_mm=spec.margin_mm,
                               crop_prob=spec.crop_prob, crop_max_frac=spec.crop_max_frac)
        ijk = geo.template_indices(grid, warp, anatomy.affine)
        fine_codes = geo.sample_nearest(codes_t, ijk)
        facts = _GridFacts.of(fine_codes)
        codes_grid = geo.thick_slices(fine_codes, grid, blur=False)
        perm, flips = geo.random_orientation(_rng(seed, "orientation", session)) if spec.reorient else \
            ((0, 1, 2), (False, False, False))
        code_arr, affine = geo.reorient(codes_grid, grid.affine, perm, flips)
        for scan in (s for s in spec.scans if s.session == session):
            family = scan.contrast or cx.family_of(scan.modality)
            real_t1 = None
            if family == "T1" and spec.template_t1_prob > 0 and _rng(seed, "real", scan.name).random() < \
                    spec.template_t1_prob:
                real_t1 = ndimage.map_coordinates(anatomy.t1, ijk, order=1, mode="constant", prefilter=False)
            image = _synthesize_image(_rng(seed, "image", scan.name), facts, family, spec, shell_layer, designs,
                                      real_t1)
            image = geo.thick_slices(image, grid, blur=True)
            if family not in ("CT", "ADC"):
                image *= np.float32(10 ** _rng(seed, "scale", scan.name).uniform(0, 3))
            image, _ = geo.reorient(image.astype(np.float32, copy=False), grid.affine, perm, flips)
            meta = VolumeMeta(modality=scan.modality.upper(), acquisition_date=dates[session],
                              series_description=f"synthetic {family}", source_name=scan.name)
            scans[scan.name] = Volume(image, affine.copy(), meta)
            labels[scan.name] = Volume(code_arr, affine.copy(), VolumeMeta(modality="labels", source_name=scan.name))

    case = Case(seed=seed, spec=spec, scans=scans, labels=labels, lesions=[], sessions=dates,
                skull_bins=skull_bins, head_last_bin=head_last)
    first_of = {s: case.scans_of_session(s)[0] for s in sessions}
    measured: dict[int, tuple[float, tuple]] = {}
    codes0, painted0 = session_codes[sessions[0]]
    for d in designs:
        side, region, centroid = _template_truth(anatomy, codes0, *painted0[d.index])
        truth = LesionTruth(index=d.index, tissue=d.tissue, side=side, region=region, centroid_template_mm=centroid,
                            heterogeneous=d.heterogeneous, has_edema=d.edema_mm > 0, enhancing=d.enhancing,
                            restricting=d.restricting, signal=dict(d.signal), growth_factor=d.growth_factor)
        for name in scans:
            key = id(labels[name].array)  # scans of a session share one label array
            if key not in measured:
                m = case.mask("lesion", name, lesion=d.index)
                idx = np.argwhere(m.array > 0)
                centroid = tuple(float(c) for c in m.voxel_to_world(idx.mean(axis=0))) if idx.size else \
                    (float("nan"),) * 3
                measured[key] = (volume_ml(m), centroid)
            truth.volume_ml[name], truth.centroid_mm[name] = measured[key]  # type: ignore[assignment]  # 3-tuple
        if len(sessions) > 1:
            v0, v1 = truth.volume_ml[first_of[sessions[0]]], truth.volume_ml[first_of[sessions[-1]]]
            truth.growth_percent = 100.0 * (v1 - v0) / v0 if v0 > 0 else None
        case.lesions.append(truth)
        measured.clear()
    return case
