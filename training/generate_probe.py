"""Where a trained generator puts probability, per target, on teacher-forced held-out tasks.

`python -m training.generate_probe --model runs/x/checkpoint [--families lesion_count segment] [--seeds 8]`

Hard Dice says only that a mask is wrong. For a target the generator misses, these rows say how:
mean probability inside and outside the truth, the largest probability outside, and the share of
the grid above 0.5, and the Dice of the mask made of the top-ranked voxels in the truth's number
(the Dice a perfectly calibrated output of the same ranking would reach), and the best hard Dice over
a few fixed thresholds (what a per-target threshold alone could buy). A lesion output that ranks
lesion voxels first but sits below 0.5 everywhere (settled on "empty"), or above it far outside
(over-segmenting), needs a different fix than one that marks the wrong place.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.evaluate import dice

FIRST_SEED = 2_100_000_000  # outside the training task seeds (< 10^9) and training.lesion_contrast's
DEFAULT_FAMILIES = ("lesion_count", "lesion_side", "target_lesion", "segment")


@dataclass(frozen=True)
class GenerateStats:
    """One generate call of a teacher-forced task, on the RAS-conformed grid."""

    family: str
    seed: int
    target: str
    target_fraction: float  # share of the grid inside the truth
    p_inside: float  # mean probability inside the truth
    p_outside: float
    p_outside_max: float
    predicted_fraction: float  # share of the grid above 0.5
    dice: float  # hard Dice at 0.5
    dice_at_true_volume: float  # Dice of the top-k voxels, k = the truth's voxel count: ranking alone
    dice_best_threshold: float  # best hard Dice over PROBE_THRESHOLDS: what calibration alone could buy


PROBE_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 0.9999)


def dice_best_threshold(logits: torch.Tensor, truth: torch.Tensor) -> float:
    """Best Dice of ``logits > logit(t)`` over PROBE_THRESHOLDS; compared in logit space (no sigmoid rounding)."""
    p, t = logits.detach().float().cpu().numpy(), truth.detach().cpu().numpy()
    return max(dice(p > math.log(thr / (1.0 - thr)), t) for thr in PROBE_THRESHOLDS)


def probability_split(probs: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, float]:
    """(mean p inside the truth, mean p outside, largest p outside); NaN for an empty side."""
    p, t = probs.detach().flatten(), truth.detach().flatten() > 0.5
    inside, outside = p[t], p[~t]
    nan = float("nan")
    return (float(inside.mean()) if inside.numel() else nan, float(outside.mean()) if outside.numel() else nan,
            float(outside.max()) if outside.numel() else nan)


def dice_at_true_volume(logits: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of the ``k`` highest-ranked voxels, ``k`` = voxels in the truth.

    Ranks logits, not probabilities: float32 sigmoid rounds every logit above ~17 to exactly 1, and a
    large target's saturated voxels would otherwise tie and be cut by position.
    """
    p, t = logits.detach().float().flatten(), truth.detach().flatten() > 0.5
    k = int(t.sum())
    if k == 0:
        return float("nan")
    top = torch.topk(p, k).indices
    return float(t[top].sum()) / k  # 2|A & B| / (|A| + |B|) with |A| = |B| = k


def generate_stats(family: str, seed: int, target: str, logits: torch.Tensor, truth: torch.Tensor) -> GenerateStats:
    probs = torch.sigmoid(logits.detach().float())
    p_inside, p_outside, p_outside_max = probability_split(probs, truth)
    probs_np, mask = probs.cpu().numpy(), truth.detach().cpu().numpy()
    return GenerateStats(family, seed, target, float((mask > 0.5).mean()), p_inside, p_outside, p_outside_max,
                         float((probs_np > 0.5).mean()), dice(probs_np, mask), dice_at_true_volume(logits, truth),
                         dice_best_threshold(logits, truth))


def probe(model_dir: Path, families: Iterable[str] = DEFAULT_FAMILIES, seeds: int = 8, threads: int = 2,
          progress: bool = True) -> list[GenerateStats]:
    """Teacher-force each family's ground-truth program on `seeds` held-out cases; no gradients."""
    from agent.checkpoint import load_agent
    from training.errors import TaskDefect
    from training.tasks import sample_task
    from training.trajectory import run_trajectory
    from vision.checkpoint import load_vision

    torch.set_num_threads(max(1, threads))
    model, tokenizer = load_agent(model_dir)
    net = load_vision(model_dir)
    model.eval()
    net.eval()
    rows: list[GenerateStats] = []
    jobs = [(f, FIRST_SEED + i) for f in families for i in range(seeds)]
    with torch.no_grad():
        for family, seed in tqdm(jobs, desc="probe", unit="task", disable=not progress):
            try:
                sample, case = sample_task(seed, family)
                traj = run_trajectory(model, tokenizer, net, sample, case)
            except TaskDefect:
                continue  # a task whose ground truth cannot run (e.g. an empty target) says nothing here
            rows += [generate_stats(family, seed, g.target, g.logits, g.truth) for g in traj.generates
                     if float(g.truth.sum()) > 0]
    return rows


def summarize(rows: list[GenerateStats]) -> dict[str, dict[str, float]]:
    """Per target: call count and the mean of every statistic."""
    out: dict[str, dict[str, float]] = {}
    for target in sorted({r.target for r in rows}):
        mine = [asdict(r) for r in rows if r.target == target]
        keys = [k for k in mine[0] if k not in ("family", "seed", "target")]
        out[target] = {"calls": float(len(mine)), **{k: float(np.nanmean([m[k] for m in mine])) for k in keys}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.generate_probe", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint or model directory (agent + vision)")
    ap.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES))
    ap.add_argument("--seeds", type=int, default=8, help="held-out cases per family")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the per-call rows and summary here")
    args = ap.parse_args(argv)
    from training.tasks import FAMILIES

    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if not (args.model / "vision_config.json").is_file():
        ap.error(f"{args.model} holds no vision checkpoint (vision_config.json)")
    rows = probe(args.model, args.families, args.seeds, args.threads)
    summary = summarize(rows)
    print("| target | calls | share of grid | mean p inside | mean p outside | max p outside | share > 0.5 | Dice "
          "| Dice at true volume | best-threshold Dice |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for target, s in summary.items():
        print(f"| {target} | {int(s['calls'])} | {s['target_fraction']:.4f} | {s['p_inside']:.3f} | "
              f"{s['p_outside']:.4f} | {s['p_outside_max']:.2f} | {s['predicted_fraction']:.4f} | {s['dice']:.3f} | "
              f"{s['dice_at_true_volume']:.3f} | {s['dice_best_threshold']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
