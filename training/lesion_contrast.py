"""How much lesion contrast survives intensity normalization, per ceiling.

`python -m training.lesion_contrast [--cases 40] [--ceilings 1 1.5 2 3] [--json out.json]`

Lesions drawn brighter than the brightest tissue land in the top half-percent of the histogram, so a
normalization that clips there flattens them. This measures, on synthesized lesion scans, the
lesion-to-rim contrast (|mean lesion - mean rim| / SD rim, rim = brain voxels within 3 voxels of the
lesion) and the share of lesion voxels clipped at the ceiling, for each candidate ceiling; the
choice of `vision.config.NEW_NETWORK_CEILING` rests on it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from voxel_ops import Volume, normalize_intensity

FIRST_SEED = 2_000_000_000  # outside the training task seeds (< 10^9)
RIM_VOXELS = 3


def lesion_rim(lesion: np.ndarray, brain: np.ndarray) -> np.ndarray | None:
    """Brain voxels within RIM_VOXELS of the lesion; None when lesion or rim is too small to measure."""
    rim = ndimage.binary_dilation(lesion, iterations=RIM_VOXELS) & ~lesion & brain
    return None if lesion.sum() < 5 or rim.sum() < 5 else rim


def scan_contrast(scan: Volume, lesion: np.ndarray, rim: np.ndarray, ceiling: float) -> tuple[float, float]:
    """(contrast in rim SDs, share of lesion voxels at the ceiling)."""
    image = normalize_intensity(scan, ceiling=ceiling).array
    contrast = abs(float(image[lesion].mean()) - float(image[rim].mean())) / (float(image[rim].std()) + 1e-6)
    clipped = float((image[lesion] >= np.float32(ceiling) * np.float32(0.999)).mean())
    return contrast, clipped


def measure(cases: int, ceilings: list[float]) -> dict[str, dict[str, float]]:
    from training.baselines import _lesion_case

    per: dict[float, list[tuple[float, float]]] = {c: [] for c in ceilings}
    for seed in tqdm(range(FIRST_SEED, FIRST_SEED + cases), desc="lesion cases", unit="case"):
        case, _ = _lesion_case(seed)
        for name, scan in case.scans.items():
            lesion = case.mask("lesion", name).array.astype(bool)
            rim = lesion_rim(lesion, case.mask("brain", name).array.astype(bool))
            if rim is None:
                continue
            for ceiling in ceilings:
                per[ceiling].append(scan_contrast(scan, lesion, rim, ceiling))
    out = {}
    for ceiling, rows in per.items():
        contrast, clipped = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        out[f"{ceiling:g}"] = {
            "scans": len(rows),
            "contrast_median": float(np.median(contrast)),
            "clipped_share_mean": float(clipped.mean()),
            "scans_mostly_clipped": int((clipped > 0.5).sum()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--ceilings", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.cases < 1 or any(c < 1.0 for c in args.ceilings):
        parser.error("--cases must be >= 1 and every ceiling >= 1")
    figures = measure(args.cases, args.ceilings)
    lines = ["| ceiling | scans | lesion contrast (median, rim SDs) | lesion voxels clipped | scans > 50 % clipped |",
             "|---|---|---|---|---|"]
    for ceiling, f in figures.items():
        lines.append(f"| {ceiling} | {f['scans']} | {f['contrast_median']:.2f} | {f['clipped_share_mean']:.3f} "
                     f"| {f['scans_mostly_clipped']} |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
