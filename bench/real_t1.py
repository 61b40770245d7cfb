"""The vision network on a real T1 it never saw (../shared/data/t1_crop.nii.gz, no labels).

Three checks a user would make first:
1. Brain mask against a classical brain extraction: FSL BET's algorithm as ported by the PyPI package
   ``brainextractor`` (benchmark-only dependency, ``pip install '.[bench]'``), Dice and both volumes.
2. Volumes of the main structures, next to adult norms (brain 1,000-1,500 mL, cerebral WM 350-550 mL,
   cortex 400-600 mL, lateral ventricles 7-50 mL, hippocampus 6-9 mL): a mask volume outside them is
   a visible failure even without labels.
3. Consistency: gray matter and white matter lie inside the brain mask (fraction of their voxels).

Overlays are written as PNG next to the JSON (``bench/results/real_t1_*.png``, not committed: the scan
is third-party data). Run through the serving ``VisionEngine`` with the model's phi bank::

    .venv/bin/python -m bench.real_t1 --model checkpoints/vision_v2
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, report

DEFAULT_T1 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "t1_crop.nii.gz"
NORMS_ML = {"brain": (1000, 1500), "cerebral white matter": (350, 550), "cerebral cortex": (400, 600),
            "lateral ventricles": (7, 50), "hippocampus": (6, 9), "thalamus": (11, 17)}


def bet_mask(path: Path, cache: Path) -> np.ndarray:
    """BET (brainextractor) mask of the scan, cached beside the results (it takes about a minute)."""
    import nibabel as nib

    if cache.is_file():
        return np.asarray(nib.load(str(cache)).dataobj) > 0
    from brainextractor import BrainExtractor

    img = nib.load(str(path))
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its progress
        bet = BrainExtractor(img)
        bet.run()
        bet.save_mask(str(cache))
    return np.asarray(nib.load(str(cache)).dataobj) > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum() + b.sum()))


def overlay(t1: np.ndarray, masks: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(masks)
    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3 * len(names)))
    centre = [s // 2 for s in t1.shape]
    for row, name in enumerate(names):
        for col in range(3):
            ax = axes[row, col] if len(names) > 1 else axes[col]
            img = np.take(t1, centre[col], axis=col)
            m = np.take(masks[name], centre[col], axis=col)
            ax.imshow(np.rot90(img), cmap="gray")
            ax.contour(np.rot90(m.astype(float)), levels=[0.5], colors="r", linewidths=0.8)
            ax.set_axis_off()
        (axes[row, 0] if len(names) > 1 else axes[0]).set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_t1", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/vision_v2", help="model or run directory")
    parser.add_argument("--t1", default=str(DEFAULT_T1))
    parser.add_argument("--name", default="real_t1", help="results name (bench/results/<name>.json)")
    args = parser.parse_args(argv)
    t1_path = Path(args.t1)
    if not t1_path.is_file():
        print(f"error: no T1 at {t1_path} (see README 'Training data')", file=sys.stderr)
        return 2
    from agent.phi_bank import PhiBank
    from vision.engine import VisionEngine
    from voxel_ops import load_volume

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    vol = load_volume(t1_path)
    voxel_ml = vol.voxel_volume_mm3 / 1000.0
    engine = VisionEngine.load(args.model, batch_window_ms=0.0)
    bank = PhiBank.for_model_dir(args.model)
    t0 = time.perf_counter()
    handle = engine.encode([vol], [bank.encode_phi("T1")], job_id="real-t1")
    masks = {t: engine.generate(handle, 0, bank.generate_phi(t)).array > 0.5
             for t in ("brain", "gray matter", "white matter", *NORMS_ML)}
    seconds = time.perf_counter() - t0
    engine.close()
    t_bet = time.perf_counter()
    bet = bet_mask(t1_path, RESULTS_DIR / "real_t1_bet_mask.nii.gz")
    bet_seconds = time.perf_counter() - t_bet
    results: dict[str, float | int | str] = {
        "model": str(args.model),
        "dice_brain_vs_bet": round(dice(masks["brain"], bet), 4),
        "bet_brain_ml": round(float(bet.sum()) * voxel_ml, 1),
        "bet_seconds": round(bet_seconds, 1),
        "network_seconds_encode_and_generate_all": round(seconds, 2),
    }
    for target, (lo, hi) in NORMS_ML.items():
        ml = float(masks[target].sum()) * voxel_ml
        results[f"ml_{target.replace(' ', '_')}"] = round(ml, 1)
        results[f"plausible_{target.replace(' ', '_')}"] = "yes" if lo <= ml <= hi else f"no ({lo}-{hi})"
    brain = masks["brain"]
    for t in ("gray matter", "white matter"):
        inside = float(np.logical_and(masks[t], brain).sum()) / max(1, int(masks[t].sum()))
        results[f"share_of_{t.replace(' ', '_')}_inside_brain"] = round(inside, 4)
    overlay(np.asarray(vol.array, dtype=np.float32), {"brain (model)": brain, "brain (BET)": bet,
                                                      "white matter": masks["white matter"],
                                                      "gray matter": masks["gray matter"]},
            RESULTS_DIR / f"{args.name}_overlay.png")
    report(args.name, results, goals={"dice_brain_vs_bet": ">= 0.92"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
