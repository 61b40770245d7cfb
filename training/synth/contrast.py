"""Intensities: per-label priors per contrast family, and the acquisition corruptions.

Priors are (mean range, relative std range) per tissue class, loosely following clinical
appearance: T1 (CSF dark < GM < WM), T2 (WM < GM < CSF bright), FLAIR (CSF dark, GM > WM),
CT in Hounsfield units (CSF ~5, WM ~28, GM ~38, skull ~1000), DWI (b1000: CSF dark),
ADC in 1e-6 mm^2/s (tissue ~750, CSF ~3000). "random" draws every label uniformly (SynthSeg's
contrast randomization). MR scans get an arbitrary global scale; CT stays in HU.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.synth.fields import upsample_linear

# family -> class -> (low, high) mean; classes: csf, gm, wm, dura, skull, scalp, air
PRIORS: dict[str, dict[str, tuple[float, float]]] = {
    "T1": {"csf": (0.05, 0.3), "gm": (0.4, 0.6), "wm": (0.65, 0.9), "dura": (0.05, 0.4),
           "skull": (0.02, 0.25), "scalp": (0.4, 1.0), "air": (0.0, 0.03)},
    "T1C": {"csf": (0.05, 0.3), "gm": (0.4, 0.6), "wm": (0.65, 0.9), "dura": (0.4, 0.9),
            "skull": (0.02, 0.25), "scalp": (0.4, 1.0), "air": (0.0, 0.03)},
    "T2": {"csf": (0.75, 1.0), "gm": (0.4, 0.6), "wm": (0.2, 0.38), "dura": (0.5, 1.0),
           "skull": (0.02, 0.2), "scalp": (0.3, 0.9), "air": (0.0, 0.03)},
    "FLAIR": {"csf": (0.03, 0.2), "gm": (0.5, 0.7), "wm": (0.3, 0.47), "dura": (0.1, 0.5),
              "skull": (0.02, 0.2), "scalp": (0.3, 0.9), "air": (0.0, 0.03)},
    "DWI": {"csf": (0.03, 0.15), "gm": (0.4, 0.6), "wm": (0.32, 0.5), "dura": (0.05, 0.3),
            "skull": (0.01, 0.1), "scalp": (0.05, 0.4), "air": (0.0, 0.03)},
    "ADC": {"csf": (2600, 3300), "gm": (750, 900), "wm": (620, 760), "dura": (1000, 2500),
            "skull": (0, 300), "scalp": (200, 1500), "air": (0, 30)},
    "CT": {"csf": (0, 12), "gm": (34, 44), "wm": (24, 31), "dura": (10, 40),
           "skull": (700, 1500), "scalp": (-120, 40), "air": (-1000, -980)},
}
MR_FAMILIES = ("T1", "T1C", "T2", "FLAIR", "DWI")
FAMILIES = tuple(PRIORS) + ("random",)


def family_of(modality: str) -> str:
    m = modality.upper()
    return m if m in PRIORS else "random"


def sample_class_means(rng: np.random.Generator, family: str) -> dict[str, float]:
    if family == "random":
        means = {k: float(rng.uniform(0, 1)) for k in ("csf", "gm", "wm", "dura", "skull", "scalp")}
        means["air"] = float(rng.uniform(0, 0.05))
        # keep GM and WM distinguishable: a contrast with no GM/WM difference teaches nothing
        if abs(means["gm"] - means["wm"]) < 0.1:
            means["wm"] = float(np.clip(means["gm"] + np.sign(rng.standard_normal()) * rng.uniform(0.1, 0.4), 0.02, 1))
        return means
    return {k: float(rng.uniform(*rng_range)) for k, rng_range in PRIORS[family].items()}


def texture_std(rng: np.random.Generator, family: str, means: dict[str, float]) -> dict[str, float]:
    """Within-label variation, relative to the brain's dynamic range."""
    span = max(abs(means["wm"] - means["csf"]), abs(means["gm"] - means["csf"]), 1e-3)
    rel = rng.uniform(0.01, 0.06)
    return {k: rel * span for k in means}


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], max_log_std: float) -> np.ndarray:
    """exp of a smooth random field, drawn on a 4^3 grid and upsampled."""
    if max_log_std <= 0:
        return np.ones(shape, dtype=np.float32)
    coarse = (rng.standard_normal((4, 4, 4)) * rng.uniform(0, max_log_std)).astype(np.float32)
    field = upsample_linear(coarse, shape)
    np.exp(field, out=field)
    return field


def blur(image: np.ndarray, rng: np.random.Generator, max_sigma_vox: float) -> np.ndarray:
    if max_sigma_vox <= 0:
        return image
    sigma = rng.uniform(0.0, max_sigma_vox, 3)
    if np.all(sigma < 0.2):
        return image
    return ndimage.gaussian_filter(image, sigma=sigma, mode="nearest", truncate=3.0)


def noise_std(rng: np.random.Generator, span: float, max_rel: float) -> float:
    return float(rng.uniform(0.0, max_rel) * span)
