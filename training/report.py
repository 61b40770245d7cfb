"""Evaluation reports on disk: `eval.json` (everything) and `eval.md` (the tables for the model card)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GOALS = {"code_exact_match": (">=", 0.95), "task_success": (">=", 0.90), "dice_brain": (">=", 0.90),
         "dice_gm": (">=", 0.80), "dice_wm": (">=", 0.80), "dice_lesion": (">=", 0.75),
         "mni_dice_brain": (">=", 0.90), "mni_dice_gm": (">=", 0.80), "mni_dice_wm": (">=", 0.80),
         "characterization_accuracy": (">=", 0.89), "volume_error_median": ("<=", 0.05)}

DICE_KEYS = {"brain": "dice_brain", "gray matter": "dice_gm", "white matter": "dice_wm", "lesion": "dice_lesion"}


def meets(key: str, value: float) -> bool:
    op, goal = GOALS[key]
    return value >= goal if op == ">=" else value <= goal


def markdown(report: dict[str, Any]) -> str:
    fig = report["figures"]
    lines = ["# voxagent evaluation", "", f"model: `{report.get('model_dir')}`; held-out cases: "
             f"{report['counts']['cases']} (seed {report.get('seed')}) on {report.get('anatomy', 'MNI152')}, "
             f"masks from the {report.get('masks', 'network')}", "",
             "| figure | value | goal | met |", "|---|---|---|---|"]
    for key, (op, goal) in GOALS.items():
        lines.append(f"| {key} | {fig[key]:.3f} | {op} {goal} | {'yes' if meets(key, fig[key]) else 'no'} |")
    base = report.get("baselines")
    if base:
        lines += ["", "## Joint model vs single-task baselines (same synthetic held-out cases)", "",
                  "| task | joint | baseline | baseline budget |", "|---|---|---|---|"]
        for row in base.get("rows", []):
            lines.append(f"| {row['task']} | {row['joint']:.3f} | {row['baseline']:.3f} | {row['budget']} |")
    sep = report.get("phi_separation") or {}
    if sep:
        lines += ["", "## Instruction (phi) separation", "",
                  f"Cosine between the agent's generate phis for {len(sep['targets'])} trained targets: "
                  f"mean {sep['mean_cosine']:.3f}, max {sep['max_cosine']:.3f} "
                  f"({sep['closest_pair'][0]} vs {sep['closest_pair'][1]}). Near 1 = one instruction for every "
                  "target: the generator cannot tell what to segment."]
    mni = report.get("mni") or {}
    if mni:
        lines += ["", "## Real MNI152 T1", "", "The agent's answer to the prompt, and the expert program "
                  "(`encode` + `generate`, phis from the model's phi bank) run through the same network: vision "
                  "alone on real anatomy.", "",
                  "| target | prompt | agent Dice | expert-program Dice | agent's code |", "|---|---|---|---|---|"]
        for target, m in mni.items():
            code = " / ".join(c.replace("\n", "; ") for c in m.get("code", []))[:160].replace("|", "\\|")
            lines.append(f"| {target} | {m.get('prompt', '')} | {m['agent']:.3f} | {m['program']:.3f} | `{code}` |")
    lines += ["", "## By family", "", "| family | cases | code exact match | task success |", "|---|---|---|---|"]
    for fam, f in sorted(report["by_family"].items()):
        lines.append(f"| {fam} | {f['cases']} | {f['code_exact_match']:.2f} | {f['task_success']:.2f} |")
    ceiling = report.get("dice_grid_ceiling") or {}
    lines += ["", "## Dice, every generated target", "",
              "Grid ceiling: the truth itself averaged onto the network's working grid and interpolated back "
              "(`training.grid_ceiling`), i.e. what a perfect generator at that grid would score.", "",
              "| target | Dice | grid ceiling | generate calls |", "|---|---|---|---|"]
    for t, d in sorted(report["dice_all_targets"].items()):
        cap = f"{ceiling[t]:.3f}" if t in ceiling else "-"
        lines.append(f"| {t} | {d:.3f} | {cap} | {report['counts'].get('dice_' + t, 0)} |")
    return "\n".join(lines) + "\n"


def comparison(reports: dict[str, dict[str, Any]]) -> str:
    """Side-by-side markdown of several saved reports: every figure, every target's Dice, phi separation.

    Checkpoints are compared on the same held-out cases only when their reports share a seed and a case
    count; the header states both so that a table mixing them is visibly a mix.
    """
    names = list(reports)
    head = [f"{n} (seed {r.get('seed')}, {r['counts']['cases']} cases)" for n, r in reports.items()]
    lines = ["| figure | goal | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(names)]

    def row(label: str, goal: str, values: list[float | None]) -> None:
        cells = ["-" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")

    for key, (op, goal) in GOALS.items():  # an MNI figure of a run made with --no-mni is absent, not 0
        row(key, f"{op} {goal}", [None if key.startswith("mni_") and not r.get("mni") else r["figures"].get(key)
                                  for r in reports.values()])
    targets = sorted({t for r in reports.values() for t in r.get("dice_all_targets", {})})
    for t in targets:
        if t not in DICE_KEYS:  # those four are rows of GOALS already
            row(f"Dice {t}", "", [r.get("dice_all_targets", {}).get(t) for r in reports.values()])
        ceilings = [r.get("dice_grid_ceiling", {}).get(t) for r in reports.values()]
        if any(c is not None for c in ceilings):
            row(f"grid ceiling {t}", "", ceilings)
    row("phi mean cosine", "", [(r.get("phi_separation") or {}).get("mean_cosine") for r in reports.values()])
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "eval.json"
    md = directory / "eval.md"
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md.write_text(markdown(report))
    return js, md
