"""`voxagent eval [--cases N] [--seed S] [--model DIR] [--json] [--report DIR]`: held-out evaluation.

`voxagent eval --vision [--model DIR] [--data DIR] [--report DIR]` scores the vision network alone
(stage 1) on held-out SynthSeg subjects: per-target Dice per subject and acquisition (JSON + md).

`voxagent eval --prompts FILE [--model DIR] [--out PATH] [--limit N] [--data DIR] [--seed S]` runs a file of
freely worded requests (JSONL: id, scans, prompt, expect {kind, target}) on synthesized cases with known
truth (held-out SynthSeg subjects) and judges kind, target, number and status (training.prompt_eval);
writes PATH.json and PATH.md (default bench/results/prompt_eval).

`voxagent eval --compare DIR [DIR ...]` evaluates nothing: it prints the saved reports (eval.json) of
earlier runs side by side, the table the model card quotes.

Runs the real agent runtime, sandbox and vision engine of a checkpoint on held-out synthesized tasks
(seeds >= 10**9, held-out prompt templates) and on the real MNI152 T1; prints the figures as flat
JSON keys in [0, 1] with --json, and writes eval.json + eval.md into --report.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on held-out synthesized cases and the MNI T1")
    p.add_argument("--cases", type=int, default=20, help="held-out synthesized tasks (family i mod 20)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (cases use task seeds >= 10**9)")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint directory (default: VOXAGENT_MODELS_DIR or the shipped model)")
    p.add_argument("--json", action="store_true", help="print the flat figures as JSON")
    p.add_argument("--report", type=Path, default=None, help="directory for eval.json and eval.md")
    p.add_argument("--no-mni", action="store_true", help="skip the MNI152 T1 figures (reported as 0)")
    p.add_argument("--baselines", type=Path, default=None,
                   help="baselines.json from `python -m training.baselines` to put next to the joint figures")
    p.add_argument("--vision", action="store_true",
                   help="vision network alone on held-out SynthSeg subjects (training.vision_eval)")
    p.add_argument("--data", type=Path, default=None,
                   help="SynthSeg label-map folder: held-out subjects for --vision and --prompts (default "
                        "../shared/data/synthseg), and for the held-out tasks (v2 targets) when given")
    p.add_argument("--prompts", type=Path, default=None, metavar="FILE",
                   help="JSONL of requests with expected kind and target: run and judge them (training.prompt_eval)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="with --prompts: report stem, writes PATH.json and PATH.md (default bench/results/prompt_eval)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="with --prompts: only the first N requests")
    p.add_argument("--voxel-mm", type=float, default=1.0, choices=(1.0, 2.0),
                   help="with --prompts: voxel size of the synthesized cases")
    p.add_argument("--oracle-masks", action="store_true",
                   help="answer each generate with the truth mask of the phi's nearest bank "
                        "target, to judge the language apart from the vision network")
    p.add_argument("--compare", type=Path, nargs="+", default=None, metavar="DIR",
                   help="print the saved reports in these --report directories side by side and exit")
    p.set_defaults(func=run)


def compare(dirs: list[Path]) -> int:
    from cli.errors import CommandError
    from training.report import comparison

    reports = {}
    for d in dirs:
        path = d / "eval.json" if d.is_dir() else d
        if not path.is_file():
            raise CommandError(f"no eval.json in {d} (write one with --report)")
        try:
            report = json.loads(path.read_text())
        except ValueError as exc:
            raise CommandError(f"{path} is not JSON: {exc}") from None
        if not (isinstance(report, dict) and isinstance(report.get("figures"), dict)
                and isinstance(report.get("counts"), dict) and "cases" in report["counts"]):
            raise CommandError(f"{path} is not a voxagent eval report (no figures / counts)")
        reports[d.name if d.is_dir() else d.parent.name] = report
    if len(reports) < len(dirs):
        raise CommandError("two reports share a directory name; pass distinct directories")
    print(comparison(reports), end="")
    return 0


def prompts(args: argparse.Namespace) -> int:
    """`--prompts FILE`: run and judge the requests; print the per-kind table, write JSON + md."""
    from cli.errors import CommandError, default_models_dir

    if not args.prompts.is_file():
        raise CommandError(f"no such prompts file: {args.prompts}")
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be positive")
    model = args.model or default_models_dir()
    if not (model / "agent.safetensors").is_file() or not (model / "vision.safetensors").is_file():
        raise CommandError(f"{model} is not a checkpoint directory (agent.safetensors + vision.safetensors)")
    from training.prompt_eval import DEFAULT_OUT, evaluate_prompts, load_requests, markdown, write_report

    try:
        load_requests(args.prompts)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        report = evaluate_prompts(args.prompts, model, data_root=args.data, limit=args.limit, seed=args.seed,
                                  voxel_mm=args.voxel_mm, progress=not args.json, oracle_masks=args.oracle_masks)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    json_path, md_path = write_report(report, args.out or DEFAULT_OUT)
    if args.json:
        print(json.dumps(report["summary"], indent=2))
    else:
        print(markdown(report), end="")
        print(f"\nwrote {json_path} and {md_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from cli.errors import CommandError, default_models_dir

    if args.compare:
        return compare(args.compare)
    if args.prompts is not None:
        return prompts(args)
    if args.vision:
        from training import vision_eval

        argv = ["--model", str(args.model or "checkpoints/vision_v2"), "--seed", str(args.seed)]
        if args.data:
            argv += ["--data", str(args.data)]
        if args.report:
            argv += ["--report", str(args.report)]
        return vision_eval.main(argv)
    if args.cases < 1:
        raise CommandError("--cases must be positive")
    args.model = args.model or default_models_dir()
    if not (args.model / "agent.safetensors").is_file() or not (args.model / "vision.safetensors").is_file():
        raise CommandError(f"{args.model} is not a checkpoint directory (agent.safetensors + vision.safetensors)")
    from training.evaluate import evaluate
    from training.report import markdown, write_report

    figures, report = evaluate(args.model, cases=args.cases, seed=args.seed, mni=not args.no_mni,
                               progress=not args.json, data_root=args.data, oracle_masks=args.oracle_masks)
    if args.baselines is not None:
        if not args.baselines.is_file():
            raise CommandError(f"no baselines file at {args.baselines}")
        from training.baselines import joint_rows

        report["baselines"] = joint_rows(json.loads(args.baselines.read_text()), report)
    if args.report is not None:
        write_report(report, args.report)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(markdown(report))
    return 0
