"""Lesion synthesis (VoxelPrompt A.3) in template space: shapes, parts, and per-sequence signal.

A lesion is placed by picking a centre inside the chosen tissue and a boundary radius; inside that
sphere a few random ellipsoids are united, then randomly dilated or eroded and warped by a smooth
random field, and finally clipped to brain parenchyma. Heterogeneous lesions split into a necrotic
core (eroded interior) and a rim; edema is a ring grown into white matter around the lesion.
Growth between sessions re-renders the same shape with every length scaled by factor^(1/3).

Signal is designed relative to normal white matter of the same scan: each lesion gets a class per
sequence family (hyper/hypo/iso) and fill factors whose volume-weighted mean stays inside the class
band (hyper >= 1.35, hypo <= 0.7, iso within 3%), so the recorded class is unambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from training.errors import SynthesisError
from training.synth.fields import upsample_linear
from training.synth.geometry import rotation_matrix
from training.synth.labels import (
    CSF,
    GM,
    LOW_MASK,
    PART_CORE,
    PART_EDEMA,
    PART_RIM,
    PART_SOLID,
    RIGHT_BIT,
    WM,
    lesion_code,
)

HYPER, HYPO, ISO = "hyperintense", "hypointense", "isointense"
FACTOR_BANDS = {HYPER: (1.4, 2.2), HYPO: (0.35, 0.68), ISO: (0.975, 1.025)}
CLASS_PRIORS: dict[str, dict[str, float]] = {
    "T1": {HYPO: 0.6, ISO: 0.3, HYPER: 0.1},
    "T2": {HYPER: 0.8, ISO: 0.12, HYPO: 0.08},
    "FLAIR": {HYPER: 0.75, ISO: 0.15, HYPO: 0.1},
    "CT": {HYPO: 0.5, HYPER: 0.35, ISO: 0.15},
    "random": {HYPER: 1 / 3, HYPO: 1 / 3, ISO: 1 / 3},
}
EDEMA_BANDS = {"T1": (0.8, 0.92), "T1C": (0.8, 0.92), "T2": (1.3, 1.7), "FLAIR": (1.3, 1.7),
               "CT": (0.75, 0.9), "DWI": (0.95, 1.1), "ADC": (1.15, 1.4), "random": (0.7, 1.4)}
SIGNAL_FAMILIES = ("T1", "T1C", "T2", "FLAIR", "CT", "DWI", "ADC", "random")


@dataclass(frozen=True)
class Ellipsoid:
    offset_mm: np.ndarray  # centre relative to the lesion centre
    radii_mm: np.ndarray
    rotation: np.ndarray  # (3, 3)


@dataclass
class LesionDesign:
    """Everything random about one lesion, so sessions can re-render it at another size."""

    index: int
    center_vox: np.ndarray  # template voxel index of the centre
    radius_mm: float
    ellipsoids: list[Ellipsoid]
    morph: int  # +n dilate, -n erode (voxels)
    deform: np.ndarray  # (3, 4, 4, 4) displacement in voxels on a coarse local grid
    tissue: str  # "wm" or "gm_wm"
    heterogeneous: bool
    edema_mm: float  # 0: no edema
    enhancing: bool
    restricting: bool
    growth_factor: float  # volume ratio session 2 / session 1 (1.0 = stable)
    signal: dict[str, str] = field(default_factory=dict)  # family -> class
    factors: dict[str, dict[int, float]] = field(default_factory=dict)  # family -> part -> factor


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _factor(rng: np.random.Generator, cls: str) -> float:
    return float(rng.uniform(*FACTOR_BANDS[cls]))


def design_signal(rng: np.random.Generator, design: LesionDesign, part_weights: dict[int, float],
                  visible_on: tuple[str, ...] = (), forced: dict[str, str] | None = None) -> None:
    """Choose per-family class and part factors; weighted mean of factors stays in the class band.

    Families in `visible_on` never get an isointense lesion (tasks that must find the lesion there);
    `forced` fixes the class of some families (tasks that need lesions told apart by their signal).
    """
    parts = [PART_SOLID, PART_RIM, PART_CORE]  # every part gets a factor (a shrunk lesion may lose its core)
    for fam in ("T1", "T2", "FLAIR", "CT", "random"):
        priors = dict(CLASS_PRIORS[fam])
        if fam in visible_on:
            priors.pop(ISO)
        cls = forced[fam] if forced and fam in forced else _choice(rng, priors)
        if fam == "T1" and design.enhancing and cls == HYPER:
            cls = ISO  # an enhancing lesion must not already be bright before contrast
        design.signal[fam] = cls
        base = _factor(rng, cls)
        lo, hi = FACTOR_BANDS[cls]
        design.factors[fam] = {p: float(np.clip(base * rng.uniform(0.85, 1.15), lo, hi)) if cls != ISO else base
                               for p in parts}
    # diffusion pair: restriction = bright on DWI and dark on ADC
    if design.restricting:
        dwi, adc = HYPER, HYPO
    else:
        dwi = _choice(rng, {ISO: 0.6, HYPER: 0.4})  # bright without restriction = T2 shine-through
        adc = _choice(rng, {ISO: 0.5, HYPER: 0.5})
    for fam, cls in (("DWI", dwi), ("ADC", adc)):
        design.signal[fam] = cls
        design.factors[fam] = {p: _factor(rng, cls) if cls != ISO else 1.0 for p in parts}
    # post-contrast: enhancing parts light up, everything else as before contrast
    t1 = design.factors["T1"]
    post = dict(t1)
    if design.enhancing:
        enh_parts = [PART_RIM] if PART_RIM in part_weights else [PART_SOLID]
        for p in (PART_RIM, PART_SOLID):
            post[p] = float(rng.uniform(1.8, 3.0))
        total = sum(part_weights.values())
        mean = sum(post[p] * w for p, w in part_weights.items()) / total
        # lift the enhancing part so that the lesion as a whole is clearly bright
        if mean < 1.5 and sum(part_weights[p] for p in enh_parts) > 0:
            w_enh = sum(part_weights[p] for p in enh_parts)
            need = (1.5 * total - sum(post[p] * w for p, w in part_weights.items() if p not in enh_parts)) / w_enh
            for p in (PART_RIM, PART_SOLID):
                post[p] = max(post[p], float(need))
        design.signal["T1C"] = HYPER
    else:
        design.signal["T1C"] = design.signal["T1"]
    design.factors["T1C"] = post
    for fam, band in EDEMA_BANDS.items():
        design.factors.setdefault(fam, {})[PART_EDEMA] = float(rng.uniform(*band))


_TISSUE_CACHE: dict[tuple[int, bytes, str], tuple[np.ndarray, np.ndarray]] = {}


def _tissue_voxels(codes: np.ndarray, affine_key: bytes, tissue: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and world positions of the lesion substrate (cached per template grid)."""
    key = (id(codes), affine_key, tissue)
    if key not in _TISSUE_CACHE:
        low = codes.ravel() & LOW_MASK
        flat = np.flatnonzero(low == WM) if tissue == "wm" else np.flatnonzero((low == WM) | (low == GM))
        affine = np.frombuffer(affine_key).reshape(4, 4)
        ijk = np.stack(np.unravel_index(flat, codes.shape), axis=1)
        _TISSUE_CACHE[key] = (flat, (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32))
    return _TISSUE_CACHE[key]


def sample_design(rng: np.random.Generator, index: int, codes: np.ndarray, vox_mm: float,
                  affine: np.ndarray, *, tissue: str, side: str | None, radius_mm: tuple[float, float],
                  heterogeneous: bool, edema: bool, enhancing: bool, restricting: bool,
                  growth_factor: float, taken: np.ndarray | None = None) -> LesionDesign:
    """Pick a centre in `tissue` on the requested side (or straddling the midline for "bilateral")."""
    flat, world = _tissue_voxels(codes, affine.tobytes(), tissue)
    radius = float(rng.uniform(*radius_mm))
    x, y, z = world[:, 0], world[:, 1], world[:, 2]
    margin = radius + 8.0
    ok = ~((y < -35) & (z < -15))  # supratentorial only (coarse regions are lobes)
    if side == "left":
        ok &= x < -margin
    elif side == "right":
        ok &= x > margin
    elif side == "bilateral":
        ok &= np.abs(x) < 3.0
    if taken is not None:
        ok &= ~taken.ravel()[flat]
    candidates = flat[ok]
    if candidates.size == 0:
        raise SynthesisError(f"no room for a lesion in {tissue} on side {side}")
    center = np.array(np.unravel_index(int(rng.choice(candidates)), codes.shape))
    n_ell = int(rng.integers(1, 5))
    ellipsoids = []
    for i in range(n_ell):
        off = np.zeros(3) if i == 0 else rng.uniform(-0.45, 0.45, 3) * radius
        radii = rng.uniform(0.35, 0.75, 3) * radius if i else rng.uniform(0.55, 0.85, 3) * radius
        q = rng.standard_normal(3) * np.pi
        ellipsoids.append(Ellipsoid(off, radii, rotation_matrix(q)))
    morph = int(rng.integers(-1, 2)) if radius / vox_mm > 3 else int(rng.integers(0, 2))
    deform = (rng.standard_normal((3, 4, 4, 4)) * rng.uniform(0, 0.12) * radius / vox_mm).astype(np.float32)
    return LesionDesign(index=index, center_vox=center, radius_mm=radius, ellipsoids=ellipsoids, morph=morph,
                        deform=deform, tissue=tissue, heterogeneous=heterogeneous,
                        edema_mm=float(rng.uniform(3.0, 8.0)) if edema else 0.0, enhancing=enhancing,
                        restricting=restricting, growth_factor=float(growth_factor))


def render(design: LesionDesign, codes: np.ndarray, vox_mm: float, scale: float = 1.0
           ) -> tuple[tuple[slice, slice, slice], dict[int, np.ndarray]]:
    """Part masks of one lesion in a local box of the template grid (box slices, part -> bool array)."""
    extent_vox = int(np.ceil((design.radius_mm * 1.6 * scale + design.edema_mm + 4 * vox_mm) / vox_mm))
    lo = np.maximum(design.center_vox - extent_vox, 0)
    hi = np.minimum(design.center_vox + extent_vox + 1, codes.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    rel_mm = (grid - design.center_vox).astype(np.float32) * vox_mm
    # smooth deformation of the whole shape
    if design.deform.size:
        disp = np.stack([upsample_linear(design.deform[c], shape) for c in range(3)], axis=-1)
        rel_mm = rel_mm + disp * vox_mm * scale
    mask = np.zeros(shape, dtype=bool)
    for ell in design.ellipsoids:
        local = (rel_mm - ell.offset_mm * scale) @ ell.rotation
        mask |= np.sum((local / (ell.radii_mm * scale)) ** 2, axis=-1) <= 1.0
    if design.morph > 0:
        mask = ndimage.binary_dilation(mask, iterations=design.morph)
    elif design.morph < 0:
        eroded = ndimage.binary_erosion(mask, iterations=-design.morph)
        mask = eroded if eroded.sum() >= 4 else mask
    low = codes[box] & LOW_MASK
    parenchyma = (low == WM) | (low == GM) if design.tissue == "gm_wm" else (low == WM) | (
        ndimage.binary_dilation(low == WM, iterations=1) & (low == GM))
    mask &= parenchyma
    labels, n = ndimage.label(mask)
    if n > 1:  # one lesion = one connected piece, so lesion counts are well defined
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (int(np.argmax(sizes)) + 1)
    parts: dict[int, np.ndarray] = {}
    if design.heterogeneous:
        core_iter = max(1, int(round(design.radius_mm * scale * 0.35 / vox_mm)))
        core = ndimage.binary_erosion(mask, iterations=core_iter)
        if core.sum() >= 2 and (mask & ~core).sum() >= 2:
            parts[PART_CORE] = core
            parts[PART_RIM] = mask & ~core
        else:
            parts[PART_SOLID] = mask
    else:
        parts[PART_SOLID] = mask
    if design.edema_mm > 0:
        grow = max(1, int(round(design.edema_mm / vox_mm)))
        ring = ndimage.binary_dilation(mask, iterations=grow) & ~mask & ((low == WM) | (low == GM))
        if ring.any():
            parts[PART_EDEMA] = ring
    return box, parts  # type: ignore[return-value]  # box: a 3-tuple of slices


def paint(codes: np.ndarray, design: LesionDesign, box: tuple[slice, slice, slice],
          parts: dict[int, np.ndarray]) -> None:
    """Write lesion part codes into the code map, keeping the hemisphere bit; never over other lesions."""
    sub = codes[box]
    free = (sub & LOW_MASK) < 64
    for part, mask in parts.items():
        where = mask & free
        sub[where] = (sub[where] & RIGHT_BIT) | lesion_code(design.index, part)


def coarse_region(centroid_template_mm: np.ndarray) -> str:
    """Lobe-like coarse region from template (MNI) coordinates; a documented approximation."""
    x, y, z = centroid_template_mm
    if y < -70:
        return "occipital"
    if z < -5 and abs(x) > 25:
        return "temporal"
    if y < -25:
        return "parietal"
    return "frontal"


__all__ = ["HYPER", "HYPO", "ISO", "LesionDesign", "coarse_region", "design_signal", "paint", "render",
           "sample_design", "CSF"]
