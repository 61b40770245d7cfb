"""Single-task baselines (VoxelPrompt 5.2, 5.3): no-phi UNets per target and a lesion-side classifier.

* Segmentation: one `VisionNet` with ``baseline=True`` (phi mixing ignores phi) per target, trained
  with the joint model's segmentation loss (soft Dice + voxel cross-entropy) on synthesized training
  cases (seeds < 10**9): tissue cases for brain/GM/WM, lesion cases (empty ones skipped) for the lesion.
* Characterization: the baseline encoder's interpretable vectors -> Linear -> {left, right, bilateral}
  for the lesion side, trained with cross-entropy.

Both are scored on the held-out evaluation cases of `training.evaluate` (same seeds, same families),
so their numbers sit next to the joint model's in the report. Each segmentation baseline also
writes `trace_<target>.csv` (per step: soft Dice loss, CE, mean probability inside and outside the
target), the record that tells a stalled small-target run from a slow one.

    python -m training.baselines --minutes 6 --out runs/baselines [--eval-cases 20] [--targets lesion,lesion_side]
        [--channels 16,32,32,32]   # a wider segmentation UNet: capacity vs budget, side by side
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.generate_probe import probability_split
from training.trainer import train_task_seed
from vision.config import NEW_NETWORK_CEILING, VisionConfig, get_config
from vision.losses import soft_dice_loss, voxel_bce_loss
from vision.model import VisionNet, build_vision_net
from vision.preprocess import network_input
from voxel_ops import conform_ras

logger = logging.getLogger(__name__)

SEG_TARGETS = ("brain", "gray matter", "white matter", "lesion")
SIDES = ("left", "right", "bilateral")
SIDE_TASK = "lesion_side"  # the characterization baseline, named in --targets like a segmentation target
MIN_SPACING = 4.0  # the same working grid as the shipped tiny joint model
TRACE_FIELDS = ("step", "seconds", "dice_loss", "bce", "p_inside", "p_outside")


def _tensor(vol, config: VisionConfig) -> tuple[torch.Tensor, tuple[float, float, float]]:
    prepared = network_input(vol, config)
    return prepared.tensor, prepared.spacing


def _mask_tensor(vol) -> torch.Tensor:
    ras, _ = conform_ras(vol)
    return torch.from_numpy(np.ascontiguousarray(ras.array, dtype=np.float32))[None, None]


def _tissue_case(seed: int):
    from training.synth import synthesize_case
    from training.tasks.families import tissue_spec

    rng = np.random.default_rng([seed, 11])
    case = synthesize_case(seed, tissue_spec(rng))
    return case, next(iter(case.scans))


def _lesion_case(seed: int):
    from training.synth import synthesize_case
    from training.tasks.families import lesion_spec

    rng = np.random.default_rng([seed, 13])
    case = synthesize_case(seed, lesion_spec(rng))
    return case, next(iter(case.scans))


def _zero_phi() -> torch.Tensor:
    return torch.zeros(32)


def _baseline_net(intensity_ceiling: float, channels: tuple[int, ...] | None = None) -> VisionNet:
    widths = {} if channels is None else {"channels": tuple(channels)}
    return build_vision_net("tiny", min_spacing=MIN_SPACING, baseline=True, intensity_ceiling=intensity_ceiling,
                            **widths)


def train_segmentation(target: str, minutes: float, seed: int = 0, lr: float = 1e-3,
                       bce_weight: float | None = None,
                       intensity_ceiling: float = NEW_NETWORK_CEILING,
                       trace: list[dict[str, float]] | None = None,
                       channels: tuple[int, ...] | None = None) -> tuple[VisionNet, int]:
    """Train one no-phi UNet on `target` for `minutes`.

    `channels` widens (or narrows) the tiny preset's levels: whether a target is bounded by the
    network's capacity or by its training budget is read off two such runs side by side.

    `trace`, when given, gets one row per step: the two loss terms and the mean probability inside
    and outside the target. A flat output (inside ~ outside) is how a stalled small-target run looks
    while its loss still falls, so the rows say more than the loss alone.
    """
    from training.trainer import TrainConfig

    bce_weight = TrainConfig().bce_weight if bce_weight is None else bce_weight
    torch.manual_seed(seed)
    net = _baseline_net(intensity_ceiling, channels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    deadline, steps, drawn = time.monotonic() + 60 * minutes, 0, 0
    lesion = target == "lesion"
    draw_case = _lesion_case if lesion else _tissue_case
    bar = tqdm(desc=f"baseline {target}", unit="step", leave=False)
    while time.monotonic() < deadline:
        case, scan = draw_case(train_task_seed(seed + 500, drawn))
        drawn += 1
        if lesion and not case.lesions:
            continue
        x, sp = _tensor(case.scans[scan], net.config)
        truth = _mask_tensor(case.mask(target, scan))
        enc = net.encode([x], [sp], [_zero_phi()])
        logits = net.generate(enc, 0, _zero_phi())
        dice_term, bce_term = soft_dice_loss(logits, truth), voxel_bce_loss(logits, truth)
        loss = dice_term + bce_weight * bce_term
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        bar.update(1)
        if trace is not None:
            p_inside, p_outside, _ = probability_split(torch.sigmoid(logits.detach()), truth)
            trace.append({"step": steps, "seconds": round(60 * minutes - (deadline - time.monotonic()), 2),
                          "dice_loss": float(dice_term.detach()), "bce": float(bce_term.detach()),
                          "p_inside": p_inside, "p_outside": p_outside})
    bar.close()
    return net, steps


class SideClassifier(nn.Module):
    def __init__(self, intensity_ceiling: float = NEW_NETWORK_CEILING) -> None:
        super().__init__()
        self.net = _baseline_net(intensity_ceiling)
        self.head = nn.Linear(self.net.config.encoding_dim, len(SIDES))

    def forward(self, x: torch.Tensor, spacing) -> torch.Tensor:
        return self.head(self.net.encode([x], [spacing], [_zero_phi()]).vectors[0])


def train_side_classifier(minutes: float, seed: int = 0, lr: float = 1e-3,
                          intensity_ceiling: float = NEW_NETWORK_CEILING) -> tuple[SideClassifier, int]:
    torch.manual_seed(seed)
    model = SideClassifier(intensity_ceiling)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    deadline, steps = time.monotonic() + 60 * minutes, 0
    while time.monotonic() < deadline:
        case, scan = _lesion_case(train_task_seed(seed + 700, steps))
        if not case.lesions:
            steps += 1
            continue
        x, sp = _tensor(case.scans[scan], model.net.config)
        label = torch.tensor(SIDES.index(case.lesions[0].side))
        loss = nn.functional.cross_entropy(model(x, sp)[None], label[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return model, steps


@torch.no_grad()
def evaluate_baselines(nets: dict[str, VisionNet], classifier: SideClassifier | None, cases: int,
                       seed: int = 0) -> dict[str, Any]:
    """Dice per target on the held-out eval cases' ground-truth generate calls; side accuracy."""
    from training.evaluate import dice, eval_seed, held_out_task
    from training.tasks import FAMILIES

    families = list(FAMILIES)
    per_target: dict[str, list[float]] = {t: [] for t in nets}
    side_hits: list[bool] = []
    for i in range(cases):
        fam = families[i % len(families)]
        sample, case = held_out_task(eval_seed(seed, i), fam)
        for scan, target in sample.generate_calls:
            if target in nets:
                net = nets[target].eval()
                x, sp = _tensor(case.scans[scan], net.config)
                probs = torch.sigmoid(net.generate(net.encode([x], [sp], [_zero_phi()]), 0, _zero_phi()))
                truth = _mask_tensor(case.mask(target, scan))[0, 0].numpy()
                per_target[target].append(dice(probs[0, 0].numpy(), truth))
        if fam == "lesion_side" and classifier is not None:
            scan = next(iter(case.scans))
            x, sp = _tensor(case.scans[scan], classifier.net.config)
            pred = SIDES[int(classifier.eval()(x, sp).argmax())]
            side_hits.append(pred == sample.expected["side"])
    return {"dice": {t: (float(np.mean(v)) if v else None) for t, v in per_target.items()},
            "counts": {t: len(v) for t, v in per_target.items()},
            "lesion_side_accuracy": float(np.mean(side_hits)) if side_hits else None,
            "lesion_side_cases": len(side_hits)}


def joint_rows(baselines: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """Rows of joint-vs-baseline for the evaluation report."""
    rows = []
    budget = baselines.get("budget", "")
    for target, value in baselines["eval"]["dice"].items():
        if value is not None:
            rows.append({"task": f"Dice {target}", "joint": report["dice_all_targets"].get(target, 0.0),
                         "baseline": value, "budget": budget})
    side = baselines["eval"].get("lesion_side_accuracy")
    if side is not None:
        fam = report["by_family"].get("lesion_side", {})
        rows.append({"task": "lesion side accuracy", "joint": fam.get("task_success", 0.0), "baseline": side,
                     "budget": budget})
    return {"rows": rows, **baselines}


def _write_trace(path: Path, rows: list[dict[str, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRACE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="budget per baseline")
    parser.add_argument("--targets", default=",".join((*SEG_TARGETS, SIDE_TASK)),
                        help=f"comma-separated subset of {', '.join((*SEG_TARGETS, SIDE_TASK))}")
    parser.add_argument("--eval-cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--eval-seed", type=int, default=None,
                        help="held-out case seed, as `voxagent eval --seed` (default: --seed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/baselines"))
    parser.add_argument("--intensity-ceiling", type=float, default=NEW_NETWORK_CEILING,
                        help="input normalization ceiling; match the joint model compared against "
                             "(its vision_config.json; 1.0 when the key is missing)")
    parser.add_argument("--channels", default=None, metavar="C0,C1,...",
                        help="channels per level of the segmentation baselines (tiny: 8,16,16,16)")
    args = parser.parse_args(argv)
    if args.intensity_ceiling < 1.0:
        parser.error("--intensity-ceiling must be >= 1")
    channels = None
    if args.channels is not None:
        try:
            channels = tuple(int(c) for c in args.channels.split(","))
            get_config("tiny", min_spacing=MIN_SPACING, baseline=True, channels=channels)
        except ValueError as exc:
            parser.error(f"--channels {args.channels!r}: {exc}")
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - {*SEG_TARGETS, SIDE_TASK})
    if unknown or not targets:
        parser.error(f"unknown or no --targets {unknown}; choose from {', '.join((*SEG_TARGETS, SIDE_TASK))}")
    nets, steps, classifier, traces = {}, {}, None, {}
    for target in [t for t in targets if t != SIDE_TASK]:
        traces[target] = []
        nets[target], steps[target] = train_segmentation(target, args.minutes, args.seed,
                                                         intensity_ceiling=args.intensity_ceiling,
                                                         trace=traces[target], channels=channels)
        logger.info("baseline %s: %d steps", target, steps[target])
    if SIDE_TASK in targets:
        classifier, steps[SIDE_TASK] = train_side_classifier(args.minutes, args.seed,
                                                             intensity_ceiling=args.intensity_ceiling)
    eval_seed = args.seed if args.eval_seed is None else args.eval_seed
    result = {"budget": f"{args.minutes:g} min each on this CPU", "steps": steps, "eval_seed": eval_seed,
              "intensity_ceiling": args.intensity_ceiling, "channels": list(channels or get_config("tiny").channels),
              "eval": evaluate_baselines(nets, classifier, args.eval_cases, eval_seed)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baselines.json").write_text(json.dumps(result, indent=2) + "\n")
    for target, rows in traces.items():
        _write_trace(args.out / f"trace_{target.replace(' ', '_')}.csv", rows)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
