"""Synthesized cases with known truth for prompt requests: held-out SynthSeg anatomy, named scans.

A request names its scans (``t1``, ``flair_a`` ...) and the answer it expects; the case gives every
name a whole-head scan of one held-out subject (``VALIDATION_SUBJECTS``, never trained on), with the
contrast its name suggests, and keeps the segmentation labels on each scan's grid so that any target
of `vision.targets` has an exact truth. Lesions are painted (``synthseg_lesions``) only when the
request is about one, with a *designed* signal per scan, so that signal, enhancement and diffusion
restriction have a truth that does not come from measuring the image. Longitudinal requests get one
scan per session; the later session's lesion is grown by dilation inside parenchyma to a drawn
factor, and the truth change is counted from the two label maps.

The geometry is kept plain on purpose (no random deformation, RAS axes, 1 or 2 mm voxels, the
mid-sagittal plane at world x = 0, which is where ``hemisphere()`` puts the midline): the figure is
about language and programs, and the vision network's own robustness has its evaluation
(``voxagent eval --vision``).
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import voxel_ops as vo
from training.prompt_eval.targets import ExpectedTarget, Expr
from training.synth.lesions import CLASS_PRIORS, EDEMA_BANDS, FACTOR_BANDS, HYPER, HYPO, ISO
from training.synth.synthseg import WHOLE_MARGIN_MM, LabelMaps, Priors, SynthSegGenerator, blur
from training.synth.synthseg_lesions import FLUID, PARENCHYMA_MAX, LesionSettings, paint_lesions
from vision.targets import (
    LESION_CORE,
    LESION_EDEMA,
    LESION_LABELS,
    LESION_RIM,
    LESION_SOLID,
    RIGHT_LESION,
    RIGHT_LESION_LABELS,
    TARGETS,
    segmentation_labels,
)
from voxel_ops import Volume, VolumeMeta

LESION_KINDS = frozenset({"lesion_count", "lesion_side", "lesion_signal", "lesion_region", "enhancement",
                          "diffusion_restriction"})
# intensity ordering of each modality in SynthSegGenerator.class_intensities (ADC: fluid bright, like T2)
_CONTRAST_OF = {"T1": "T1", "T1C": "T1", "T2": "T2", "FLAIR": "FLAIR", "PD": "PD", "CT": "CT", "DWI": "DWI",
                "ADC": "T2"}
_PARTS = (LESION_SOLID, LESION_RIM, LESION_CORE, LESION_EDEMA)


def guess_modality(name: str) -> str:
    """The modality a scan's name suggests (what a user would pass with ``--modality``); T1 otherwise,
    the commonest structural scan and what names like ``scan`` or ``image`` usually hold."""
    n = name.lower()
    if "flair" in n:
        return "FLAIR"
    if "adc" in n:
        return "ADC"
    if re.search(r"dwi|diff|trace|b1000", n):
        return "DWI"
    if re.search(r"post|t1c|t1ce|gad|gd|contrast", n):
        return "T1C"
    if "t2" in n:
        return "T2"
    if re.search(r"(^|_)pd", n):
        return "PD"
    if re.search(r"(^|_)ct($|_)", n):
        return "CT"
    return "T1"


def request_seed(request_id: str, seed: int = 0) -> int:
    """Per-request seed: the same request id gives the same case in every run."""
    return (zlib.crc32(request_id.encode("utf-8")) + 1_000_003 * int(seed)) & 0xFFFFFFFF


@dataclass
class EvalCase:
    """Scans by the request's names, their segmentation labels on the same grids, and designed facts."""

    scans: dict[str, Volume]
    labels: dict[str, np.ndarray]
    modalities: dict[str, str]
    subject: str
    seed: int
    voxel_mm: float
    facts: dict[str, Any] = field(default_factory=dict)

    def scan_for(self, name: str | None) -> str:
        """The case scan a program's scan name refers to (the first one for names it does not have)."""
        return name if name in self.scans else next(iter(self.scans))

    def truth_mask(self, expr: Expr, scan: str | None = None) -> Volume:
        name = self.scan_for(scan)
        return self.scans[name].with_array(expr.mask(self.labels[name]).astype(np.uint8))

    def truth_volume_ml(self, expr: Expr, scan: str | None = None) -> float:
        name = self.scan_for(scan)
        return float(np.count_nonzero(expr.mask(self.labels[name]))) * self.scans[name].voxel_volume_mm3 / 1000.0

    def summary(self) -> dict[str, Any]:
        return {"subject": self.subject, "seed": self.seed, "voxel_mm": self.voxel_mm,
                "modalities": self.modalities, "shape": list(next(iter(self.scans.values())).shape),
                **{k: v for k, v in self.facts.items()}}


def _midline_index(labels: np.ndarray) -> float:
    """Array x (RAS: x grows to the right) of the plane that best separates the left structures from
    the right ones: fewest left voxels right of it plus right voxels left of it."""
    left = np.isin(labels, list(TARGETS["left hemisphere"].labels))
    right = np.isin(labels, list(TARGETS["right hemisphere"].labels))
    hl, hr = left.sum(axis=(1, 2)).astype(np.int64), right.sum(axis=(1, 2)).astype(np.int64)
    if hl.sum() == 0 or hr.sum() == 0:
        return (labels.shape[0] - 1) / 2
    # plane between index m-1 and m: cost = left voxels at x >= m + right voxels at x < m
    cost = [int(hl[m:].sum() + hr[:m].sum()) for m in range(labels.shape[0] + 1)]
    best = int(np.argmin(cost))
    return best - 0.5


def _affine(shape: Sequence[int], step: float, mid_x: float) -> np.ndarray:
    aff = np.diag([step, step, step, 1.0])
    aff[:3, 3] = [-mid_x * step, -(shape[1] - 1) / 2 * step, -(shape[2] - 1) / 2 * step]
    return aff


def _choice(rng: np.random.Generator, priors: dict[str, float], drop: Sequence[str] = ()) -> str:
    keys = [k for k in priors if k not in drop]
    p = np.array([priors[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _signal_design(rng: np.random.Generator, modalities: dict[str, str], enhancing: bool, restricting: bool
                   ) -> dict[str, str]:
    """Signal class of the lesion on each scan. Visible everywhere (never isointense on the scan it
    must be found on), except the pre-contrast T1 of an enhancement pair and the diffusion pair."""
    has_post = "T1C" in modalities.values()
    pre_class = _choice(rng, CLASS_PRIORS["T1"], drop=(HYPER,)) if has_post else None
    by_modality: dict[str, str] = {}  # one class per modality: two sessions of a sequence look alike
    for mod in dict.fromkeys(modalities.values()):
        if mod == "T1C":
            by_modality[mod] = HYPER if enhancing else (pre_class or HYPO)
        elif mod == "T1" and pre_class is not None:
            by_modality[mod] = pre_class
        elif mod == "DWI":
            by_modality[mod] = HYPER if restricting else _choice(rng, {ISO: 0.6, HYPER: 0.4})
        elif mod == "ADC":
            by_modality[mod] = HYPO if restricting else _choice(rng, {ISO: 0.5, HYPER: 0.5})
        else:
            family = _CONTRAST_OF[mod] if _CONTRAST_OF[mod] in CLASS_PRIORS else "random"
            by_modality[mod] = _choice(rng, CLASS_PRIORS[family], drop=(ISO,))
    out = {name: by_modality[mod] for name, mod in modalities.items()}
    return out


class CaseFactory:
    """Builds an :class:`EvalCase` per request from held-out label maps (load them once)."""

    def __init__(self, maps: LabelMaps, priors: Priors, voxel_mm: float = 1.0) -> None:
        if voxel_mm not in (1.0, 2.0):
            raise ValueError("voxel_mm must be 1 or 2")
        self.maps = maps
        self.priors = priors
        self.generator = SynthSegGenerator(maps, priors)
        self.voxel_mm = float(voxel_mm)

    # -- anatomy and lesions (generation labels, 1 mm) ---------------------------------------------
    def _head(self, index: int) -> torch.Tensor:
        source = self.maps.maps[index]
        lo, hi = self.maps.brain_boxes[index]
        lo = np.maximum(lo - WHOLE_MARGIN_MM, 0).astype(int)
        hi = np.minimum(hi + WHOLE_MARGIN_MM, np.array(source.shape) - 1).astype(int) + 1
        return source[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].to(torch.int64).clone()

    @staticmethod
    def _lesion_plan(kind: str, expected: ExpectedTarget, rng: np.random.Generator) -> dict[str, Any] | None:
        """How many lesions and of what make-up the request needs (None: none)."""
        text = expected.text()
        if not (expected.is_lesion or kind in LESION_KINDS or (kind == "longitudinal_change" and not expected.truth)):
            return None
        parts = any(w in text for w in ("edema", "enhancing", "necrosis"))
        if kind == "lesion_count":
            count = int(rng.integers(1, 4))
        elif "largest_component" in text or re.search(r"\b(left|right) hemisphere\b", text):
            count = 2
        elif kind in ("lesion_side", "lesion_region", "longitudinal_change", "enhancement", "diffusion_restriction"):
            count = 1
        else:
            count = int(rng.integers(1, 3))
        side = "right" if "right hemisphere" in text else "left" if "left hemisphere" in text else None
        return {"count": count, "heterogeneous": parts, "edema": parts, "side": side,
                "radius_mm": (8.0, 20.0) if parts else (4.0, 14.0)}

    def _paint(self, rng: np.random.Generator, labels: torch.Tensor, plan: dict[str, Any]) -> torch.Tensor:
        """Paint ``plan['count']`` lesions (one call each, so the count is the plan's); retried with new
        draws until a sided plan has a lesion on that side and a multi-lesion plan has separate ones."""
        settings = LesionSettings(probability=1.0, max_lesions=1, radius_mm=plan["radius_mm"],
                                  heterogeneous_prob=1.0 if plan["heterogeneous"] else 0.0,
                                  edema_prob=1.0 if plan["edema"] else 0.0)
        best = labels
        for _ in range(12):
            out = labels.clone()
            painted = []
            for _ in range(plan["count"]):
                painted += paint_lesions(rng, out, settings)
            seg = out.numpy()
            lesion = np.isin(seg, list(TARGETS["lesion"].labels))
            n = ndimage.label(lesion, structure=np.ones((3, 3, 3)))[1]
            sides = {p.right for p in painted}
            ok = len(painted) == plan["count"] and n == plan["count"]
            if plan["side"] is not None:
                ok = ok and (plan["side"] == "right") in sides and (plan["count"] < 2 or len(sides) == 2)
            best = out
            if ok:
                break
        return best

    @staticmethod
    def _grow(rng: np.random.Generator, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The later session: every lesion dilated (1 voxel at a time, inside parenchyma) until its
        voxel count reaches a drawn factor; returns (labels, drawn factor)."""
        factor = float(rng.uniform(1.3, 1.8))
        seg = labels.numpy().copy()
        tissue = (seg > 0) & (seg < PARENCHYMA_MAX) & ~np.isin(seg, FLUID)
        lesion = np.isin(seg, LESION_LABELS)
        target = factor * lesion.sum()
        grown = lesion
        for _ in range(30):
            if grown.sum() >= target:
                break
            nxt = ndimage.binary_dilation(grown) & (tissue | grown)
            if nxt.sum() == grown.sum():
                break
            grown = nxt
        new = grown & ~lesion
        # the new voxels take the code of the nearest lesion voxel (keeps each lesion's side)
        idx = ndimage.distance_transform_edt(~lesion, return_distances=False, return_indices=True)
        seg[new] = seg[tuple(i[new] for i in idx)]
        return torch.from_numpy(seg), factor

    # -- images --------------------------------------------------------------------------------------
    def _image(self, rng: np.random.Generator, labels: torch.Tensor, modality: str, signal: str | None
               ) -> torch.Tensor:
        """Per-class Gaussian intensities of the modality's ordering, designed lesion signal relative to
        white matter, a mild bias field, blur and noise (SynthSeg's pipeline without deformation)."""
        gen, priors = self.generator, self.priors
        means, stds = gen.class_intensities(rng, _CONTRAST_OF[modality])
        cls = torch.from_numpy(priors.class_lut)[labels]
        noise = torch.from_numpy(rng.standard_normal(labels.shape).astype(np.float32))
        image = (torch.from_numpy(means)[cls] + torch.from_numpy(stds)[cls] * noise).clamp_min(0)
        if signal is not None:
            wm = int(priors.class_lut[2])
            wm_mean, wm_std = float(means[wm]), float(stds[wm]) + 1.0
            base = float(rng.uniform(*FACTOR_BANDS[signal]))
            lo, hi = FACTOR_BANDS[signal]
            core_class = HYPO if _CONTRAST_OF[modality] in ("T1", "CT") else HYPER
            family = modality if modality in EDEMA_BANDS else "random"
            factors = {LESION_SOLID: base, LESION_RIM: float(np.clip(base * rng.uniform(1.0, 1.3), lo, hi)),
                       LESION_CORE: float(rng.uniform(*FACTOR_BANDS[core_class])),
                       LESION_EDEMA: float(rng.uniform(*EDEMA_BANDS[family]))}
            lesion_noise = torch.from_numpy(rng.standard_normal(labels.shape).astype(np.float32))
            for part in _PARTS:
                m = (labels == part) | (labels == part + RIGHT_LESION)
                if bool(m.any()):
                    image[m] = (wm_mean * factors[part] + wm_std * lesion_noise[m]).clamp_min(0)
        small = torch.from_numpy(rng.standard_normal((1, 1, 4, 4, 4)).astype(np.float32) * 0.15)
        bias = F.interpolate(small, size=tuple(labels.shape), mode="trilinear", align_corners=True)[0, 0]
        image = blur(image * torch.exp(bias), [0.5, 0.5, 0.5])
        span = float(image.max() - image.min()) or 1.0
        image = image + torch.from_numpy(rng.standard_normal(labels.shape).astype(np.float32)) * 0.01 * span
        return image.clamp_min(0)

    def _grid(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(image, segmentation labels) on the case's voxel grid (2 mm: anti-aliased, then every 2nd voxel)."""
        seg = segmentation_labels(labels.numpy())
        if self.voxel_mm == 2.0:
            image = blur(image, [0.85, 0.85, 0.85])[::2, ::2, ::2]
            seg = seg[::2, ::2, ::2]
        return image.numpy().astype(np.float32), np.ascontiguousarray(seg)

    # -- a case ----------------------------------------------------------------------------------------
    def build(self, request_id: str, scans: Sequence[str], kind: str, expected: ExpectedTarget, seed: int = 0
              ) -> EvalCase:
        """The case of one request (deterministic in ``request_id`` and ``seed``)."""
        case_seed = request_seed(request_id, seed)
        rng = np.random.default_rng(case_seed)
        index = int(rng.integers(len(self.maps)))
        head = self._head(index)
        modalities = {name: guess_modality(name) for name in scans}
        longitudinal = kind == "longitudinal_change" and len(scans) >= 2
        plan = self._lesion_plan(kind, expected, rng)
        facts: dict[str, Any] = {}
        sessions = [head]
        if plan is not None:
            sessions = [self._paint(rng, head, plan)]
            facts["lesions"] = plan["count"]
        if longitudinal:
            if plan is not None:
                later, factor = self._grow(rng, sessions[0])
                sessions.append(later)
                facts["growth_factor_drawn"] = round(factor, 3)
            else:
                sessions.append(sessions[0])
        enhancing = bool(rng.random() < 0.5) if kind == "enhancement" else False
        restricting = bool(rng.random() < 0.5) if kind == "diffusion_restriction" else False
        signal = _signal_design(rng, modalities, enhancing, restricting) if plan is not None else {}
        if kind == "enhancement":
            facts["enhancing"] = enhancing
        if kind == "diffusion_restriction":
            facts["restricting"] = restricting
        if signal:
            facts["signal"] = signal
        out_scans: dict[str, Volume] = {}
        out_labels: dict[str, np.ndarray] = {}
        mid_x: float | None = None
        for i, name in enumerate(scans):
            labels = sessions[min(i, len(sessions) - 1)] if longitudinal else sessions[0]
            image, seg = self._grid(self._image(rng, labels, modalities[name], signal.get(name)), labels)
            if mid_x is None:
                mid_x = _midline_index(seg)
            date = None
            if longitudinal:
                year = re.search(r"(19|20)\d\d", name)
                date = f"{year.group(0)}-03-01" if year else f"{2021 + i}-03-01"
            meta = VolumeMeta(modality=modalities[name], acquisition_date=date, source_name=name)
            out_scans[name] = Volume(image, _affine(seg.shape, self.voxel_mm, mid_x), meta)
            out_labels[name] = seg
        if plan is not None:
            sides = set()
            first = out_labels[scans[0]]
            for code in LESION_LABELS:
                if (first == code).any():
                    sides.add("right" if code in RIGHT_LESION_LABELS else "left")
            facts["lesion_sides"] = sorted(sides)
        return EvalCase(out_scans, out_labels, modalities, self.maps.names[index], case_seed, self.voxel_mm, facts)


def lesion_side(case: EvalCase, expr: Expr, scan: str | None = None) -> str:
    """Side of a (lesion) target from its labels' side codes, not from geometry: "left", "right" or
    "bilateral"; the geometric answer (``voxel_ops.hemisphere``) when the target has no lesion code."""
    name = case.scan_for(scan)
    mask = expr.mask(case.labels[name])
    codes = case.labels[name][mask]
    right = np.isin(codes, RIGHT_LESION_LABELS).any()
    left = np.isin(codes, [c for c in LESION_LABELS if c not in RIGHT_LESION_LABELS]).any()
    if right or left:
        return "bilateral" if right and left else "right" if right else "left"
    return str(vo.hemisphere(case.truth_mask(expr, name)))


__all__ = ["CaseFactory", "EvalCase", "LESION_KINDS", "guess_modality", "lesion_side", "request_seed"]
