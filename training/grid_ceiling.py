"""How much Dice the vision net's working grid leaves room for, per target.

The tiny preset works on a grid no finer than ``min_spacing`` (4 mm) and interpolates its logits back
to the input grid. A target a few millimetres thick (cortex, a small lesion) cannot be drawn exactly
through that grid, however well the network is trained. This module passes the *truth* itself through
the same round trip the network's output takes (area average onto the working grid, trilinear back,
threshold 0.5) and scores it against the truth: the figure a perfect generator at that grid would reach
with a smooth output. It is a reference, not a strict bound (sharper logits can fit a border a little
better), and it tells "the model is undertrained" apart from "the grid is too coarse".

`python -m training.grid_ceiling --cases 100 --seed 1 --spacings 4 3 2` prints the ceiling per target
on the held-out cases `voxagent eval` uses (same seeds and families) and on the real MNI T1, for
several working spacings: what a finer grid would buy before anyone trains it.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from vision.config import VisionConfig
from vision.native import plan_stream


def through_working_grid(mask: np.ndarray, spacing: tuple[float, float, float], config: VisionConfig) -> np.ndarray:
    """The truth as the network's output path would render it: averaged onto the working grid and back."""
    plan = plan_stream(tuple(mask.shape), tuple(float(s) for s in spacing), config)
    if not plan.reduced:
        return np.asarray(mask) > 0.5
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    x = F.interpolate(x, size=plan.working_shape, mode="area")
    x = F.interpolate(x, size=plan.input_shape, mode="trilinear", align_corners=False)
    return x[0, 0].numpy() > 0.5


def grid_ceiling_dice(mask: np.ndarray, spacing: tuple[float, float, float], config: VisionConfig) -> float:
    """Dice of the truth rendered through the working grid against the truth (1.0 when nothing is lost)."""
    from training.evaluate import dice

    truth = np.asarray(mask) > 0.5
    return dice(through_working_grid(truth, spacing, config), truth)


def held_out_ceilings(cases: int, seed: int, spacings: list[float]) -> dict[str, dict[str, list[float]]]:
    """Per working spacing, per target: the ceiling of each generate call of eval's held-out cases."""
    from tqdm import tqdm

    from training.evaluate import eval_seed, generate_truth, held_out_task
    from training.tasks import FAMILIES
    from vision.config import get_config

    configs = {s: get_config("tiny", min_spacing=s) for s in spacings}
    families = list(FAMILIES)
    out: dict[str, dict[str, list[float]]] = {f"{s:g}": {} for s in spacings}
    for i in tqdm(range(cases), desc="ceiling", unit="case"):
        sample, case = held_out_task(eval_seed(seed, i), families[i % len(families)])
        for scan, target in dict.fromkeys(sample.generate_calls):
            truth = generate_truth(case, scan, target)
            for s, cfg in configs.items():
                out[f"{s:g}"].setdefault(target, []).append(grid_ceiling_dice(truth.array, truth.spacing, cfg))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.grid_ceiling", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100, help="held-out cases, as `voxagent eval --cases`")
    ap.add_argument("--seed", type=int, default=1, help="evaluation seed, as `voxagent eval --seed`")
    ap.add_argument("--spacings", type=float, nargs="+", default=[4.0, 3.0, 2.0], help="working spacings (mm)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = ap.parse_args(argv)
    if args.cases < 1 or any(s <= 0 for s in args.spacings):
        ap.error("--cases and every spacing must be positive")
    from training.evaluate import mni_t1_and_truths
    from vision.config import get_config

    synthetic = held_out_ceilings(args.cases, args.seed, args.spacings)
    t1, truths = mni_t1_and_truths()
    mni = {f"{s:g}": {t: grid_ceiling_dice(m, t1.spacing, get_config("tiny", min_spacing=s)) for t, m in truths.items()}
           for s in args.spacings}
    summary = {s: {t: {"calls": len(v), "mean": float(np.mean(v)), "median": float(np.median(v))}
                   for t, v in sorted(per.items())} for s, per in synthetic.items()}
    if args.json:
        print(json.dumps({"cases": args.cases, "seed": args.seed, "synthetic": summary, "mni": mni}, indent=2))
        return 0
    cols = list(summary)
    print("| target | calls | " + " | ".join(f"{c} mm mean (median)" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for t in summary[cols[0]]:
        cells = [f"{summary[c][t]['mean']:.3f} ({summary[c][t]['median']:.3f})" for c in cols]
        print(f"| {t} | {summary[cols[0]][t]['calls']} | " + " | ".join(cells) + " |")
    for t in truths:
        print(f"| MNI T1 {t} | 1 | " + " | ".join(f"{mni[c][t]:.3f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
