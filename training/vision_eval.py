"""Vision-only evaluation on held-out subjects: per-target Dice per subject and acquisition.

Every scan is synthesized from a held-out label map (``training.synth.synthseg.VALIDATION_SUBJECTS``),
written with a random header orientation, and run through the serving path (``VisionEngine``:
RAS conforming, normalization, encode once, one generate per target with the phi bank's vector),
so the figures are what a user of ``generate`` gets. Conditions:

* ``t1_1mm``: realistic T1 contrast (SynthSeg's T1 priors), 1 mm isotropic, skull on.
* ``random_5mm``: a random contrast, 5 mm slices along a random axis.

Next to each Dice stands the target's *grid ceiling*: the truth itself averaged onto the network's
working grid and back (``training.grid_ceiling``), the Dice a perfect generator at that grid reaches.

Each truth is checked by an independent count: the truth's volume in mL from the synthesized
label array (voxel count x voxel volume from the affine) is reported next to the predicted one.

    python -m training.vision_eval --model checkpoints/vision_v2 --report runs/vision_eval
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.phi_bank import PhiBank
from training.evaluate import dice
from training.synth.synthseg import DEFAULT_ROOT, LabelMaps, Priors, SynthSegGenerator, split_subjects
from vision.targets import ANATOMY_TARGETS, SYNTHSEG_STRUCTURES, target_mask
from voxel_ops import Volume, VolumeMeta

logger = logging.getLogger(__name__)

CONDITIONS: dict[str, dict] = {
    "t1_1mm": dict(contrast="T1", thick=False, skull_strip=False),
    "random_5mm": dict(contrast="random", thick=True, slice_mm=5, skull_strip=False),
}
MODALITY = {"T1": "T1", "random": "unknown"}
HEADLINE = ("brain", "cerebral white matter", "cerebral cortex", "lateral ventricles", "hippocampus", "thalamus")
GOALS = {"t1_1mm": {"brain": 0.95, "cerebral white matter": 0.90, "cerebral cortex": 0.85,
                    "lateral ventricles": 0.88, "hippocampus": 0.80, "thalamus": 0.85, "mean_32": 0.80},
         "random_5mm": {"mean_32": 0.75}}


@dataclass
class ScanResult:
    subject: str
    condition: str
    spacing: tuple[float, ...]
    dice: dict[str, float]
    truth_ml: dict[str, float]
    pred_ml: dict[str, float]
    ceiling: dict[str, float]  # Dice of the truth itself passed through the network's working grid


def random_orientation(rng: np.random.Generator, array: np.ndarray, spacing: Sequence[float]
                       ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[bool, ...]]:
    """The RAS array stored with randomly permuted and flipped axes, and the affine that says so."""
    perm = tuple(int(a) for a in rng.permutation(3))
    flips = tuple(bool(f) for f in rng.random(3) < 0.5)
    out = np.transpose(array, perm)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for new_axis, old_axis in enumerate(perm):
        n = out.shape[new_axis]
        step = float(spacing[old_axis])
        if flips[new_axis]:
            affine[old_axis, new_axis] = -step
            affine[old_axis, 3] = step * (n - 1)
        else:
            affine[old_axis, new_axis] = step
    for axis, f in enumerate(flips):
        if f:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out), affine, perm, flips


def grid_ceilings(labels: np.ndarray, spacing: Sequence[float], config, targets: Sequence[str]) -> dict[str, float]:
    """Per target: Dice a perfect generator reaches through ``config``'s working grid (training.grid_ceiling)."""
    from training.grid_ceiling import grid_ceiling_dice

    sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    return {t: grid_ceiling_dice(target_mask(labels, t), sp, config) for t in targets}


def evaluate_scan(engine, bank: PhiBank, image: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                  modality: str, targets: Sequence[str]) -> tuple[dict, dict, dict]:
    vol = Volume(image, affine, VolumeMeta(modality=modality))
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    dices, truth_ml, pred_ml = {}, {}, {}
    if engine.config.out_channels > 1:  # the multi-label baseline: one arg-max map, targets by label set
        from training.vision_baseline import predict_labels
        from vision.preprocess import network_input
        from voxel_ops import unconform

        inp = network_input(vol, engine.config)
        ras = predict_labels(engine.net, inp.tensor, inp.spacing)
        predicted = unconform(Volume(ras, inp.transform.ras_affine), inp.transform).array
        for target in targets:
            pred, truth = target_mask(predicted, target), target_mask(labels, target)
            dices[target] = dice(pred, truth)
            truth_ml[target] = float(truth.sum()) * voxel_ml
            pred_ml[target] = float(pred.sum()) * voxel_ml
        return dices, truth_ml, pred_ml
    handle = engine.encode([vol], [bank.encode_phi(modality)], job_id="vision-eval")
    try:
        for target in targets:
            probs = engine.generate(handle, 0, bank.generate_phi(target)).array
            pred = probs > 0.5
            truth = target_mask(labels, target)
            dices[target] = dice(pred, truth)
            truth_ml[target] = float(truth.sum()) * voxel_ml
            pred_ml[target] = float(pred.sum()) * voxel_ml
    finally:
        engine.release("vision-eval")
    return dices, truth_ml, pred_ml


def run(model_dir: str | Path, data_root: str | Path = DEFAULT_ROOT, conditions: Sequence[str] = tuple(CONDITIONS),
        subjects: Sequence[str] | None = None, targets: Sequence[str] = ANATOMY_TARGETS, seed: int = 0,
        with_ceiling: bool = True) -> list[ScanResult]:
    from tqdm import tqdm

    from vision.engine import VisionEngine

    engine = VisionEngine.load(model_dir, batch_window_ms=0.0)
    bank = PhiBank.for_model_dir(model_dir)
    subjects = list(subjects or split_subjects(data_root)[1])
    gen = SynthSegGenerator(LabelMaps(data_root, subjects), Priors(data_root))
    results = []
    jobs = [(i, c) for i in range(len(subjects)) for c in conditions]
    try:
        for i, cond in tqdm(jobs, desc="vision eval", disable=not sys.stderr.isatty()):
            rng = np.random.default_rng([seed, i, list(CONDITIONS).index(cond)])
            spec = dict(CONDITIONS[cond])
            sample = gen.sample(rng, patch_mm=None, subject=i, **spec)
            # two generators with one seed: the labels get exactly the image's axis order and flips
            orient_seed = [seed, i, list(CONDITIONS).index(cond), 1]
            image, affine, _, _ = random_orientation(np.random.default_rng(orient_seed), sample.image.numpy(),
                                                     sample.spacing)
            labels, _, _, _ = random_orientation(np.random.default_rng(orient_seed), sample.labels.numpy(),
                                                 sample.spacing)
            d, t, p = evaluate_scan(engine, bank, image, labels, affine, MODALITY[sample.contrast], targets)
            spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
            ceiling = grid_ceilings(labels, spacing, engine.config, targets) if with_ceiling else {}
            results.append(ScanResult(subjects[i], cond, sample.spacing, d, t, p, ceiling))
            logger.info("%s %s: mean-32 Dice %.3f", subjects[i], cond, summary_mean(d))
    finally:
        engine.close()
    return results


def summary_mean(d: dict[str, float]) -> float:
    vals = [d[s] for s in SYNTHSEG_STRUCTURES if s in d]
    return float(np.mean(vals)) if vals else float("nan")


def report(results: Sequence[ScanResult]) -> dict:
    """Per condition: per-target mean Dice over subjects, the 32-structure mean, and the goals."""
    out: dict = {"conditions": {}, "scans": [r.__dict__ for r in results]}
    for cond in dict.fromkeys(r.condition for r in results):
        rows = [r for r in results if r.condition == cond]
        targets = list(rows[0].dice)
        per_target = {t: float(np.mean([r.dice[t] for r in rows])) for t in targets}
        out["conditions"][cond] = {
            "subjects": [r.subject for r in rows],
            "dice": per_target,
            "mean_32": float(np.mean([summary_mean(r.dice) for r in rows])),
            "truth_ml": {t: float(np.mean([r.truth_ml[t] for r in rows])) for t in targets},
            "pred_ml": {t: float(np.mean([r.pred_ml[t] for r in rows])) for t in targets},
            "grid_ceiling": {t: float(np.mean([r.ceiling[t] for r in rows])) for t in targets
                             if all(t in r.ceiling for r in rows)},
            "goals": GOALS.get(cond, {}),
        }
    return out


def markdown(rep: dict) -> str:
    lines = []
    for cond, c in rep["conditions"].items():
        lines += [f"### {cond} ({', '.join(c['subjects'])})", "",
                  f"Mean Dice over the 32 SynthSeg structures: **{c['mean_32']:.3f}**"
                  + (f" (goal >= {c['goals']['mean_32']})" if "mean_32" in c["goals"] else ""), "",
                  "| target | Dice | grid ceiling | goal | truth mL | predicted mL |", "|---|---|---|---|---|---|"]
        order = [t for t in HEADLINE if t in c["dice"]] + [t for t in c["dice"] if t not in HEADLINE]
        for t in order:
            goal = c["goals"].get(t)
            ceil = c["grid_ceiling"].get(t)
            lines.append(f"| {t} | {c['dice'][t]:.3f} | {'' if ceil is None else f'{ceil:.3f}'} | "
                         f"{'' if goal is None else goal} | "
                         f"{c['truth_ml'][t]:.1f} | {c['pred_ml'][t]:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.vision_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="directory with vision.safetensors and phi_bank.safetensors")
    parser.add_argument("--data", default=str(DEFAULT_ROOT), help="SynthSeg label-map folder")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--targets", nargs="+", default=None, help="targets to score (default: every anatomy target)")
    parser.add_argument("--report", help="directory for vision_eval.json and vision_eval.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vision.targets import UnknownTargetError, canonical_target

    try:
        targets = [canonical_target(t) for t in args.targets] if args.targets else list(ANATOMY_TARGETS)
        if not (Path(args.model) / "vision.safetensors").is_file():
            raise FileNotFoundError(f"no vision.safetensors in {args.model}")
    except (UnknownTargetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    rep = report(run(args.model, args.data, args.conditions, targets=targets, seed=args.seed))
    rep["seconds"] = round(time.monotonic() - started, 1)
    rep["model"] = str(args.model)
    md = markdown(rep)
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vision_eval.json").write_text(json.dumps(rep, indent=2))
        (out / "vision_eval.md").write_text(md)
    sys.stdout.write(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
