"""`voxagent train --preset tiny|paper [--minutes N] [--steps N] [--resume] [--out DIR] [--seed S]`.

Joint training of the agent and the vision network (training.trainer). The run directory holds the
tokenizer, the latest checkpoint (atomic), `log.csv` and, at the end, the exported model
(`<out>/model`, the `models/<name>/` layout) ready for `voxagent eval --model <out>/model`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the agent and vision network jointly (teacher forcing)")
    p.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget (stops after the step in flight)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps to reach (counted from step 0)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    p.add_argument("--accum", type=int, default=None, help="tasks per optimizer step (gradient accumulation)")
    p.add_argument("--lm-tasks", type=int, default=None,
                   help="language-only tasks per optimizer step next to each joint task (tiny default 5)")
    p.add_argument("--phi-lambda", type=float, default=None,
                   help="weight of the phi-probe loss that keeps instructions apart (default 0.1; 0 = paper eq. 2)")
    p.add_argument("--bce-weight", type=float, default=None,
                   help="voxel cross-entropy next to soft Dice in the segmentation term (default 1; 0 = paper eq. 2)")
    p.add_argument("--voxel-ce", choices=("grid", "balanced"), default=None,
                   help="how the voxel cross-entropy averages: over the grid (default) or target and "
                        "background halves apart, so small targets are not outweighed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    p.add_argument("--checkpoint-minutes", type=float, default=None, help="minutes between checkpoints")
    p.add_argument("--cooldown", type=float, default=0.0,
                   help="fraction of this run's budget over which the learning rate falls linearly to 0 "
                        "(warmup-stable-decay; default 0 = constant)")
    p.add_argument("--joint-weights", default=None, metavar="FAMILY=ODDS,...",
                   help="odds of families for the vision-trained task of each step (others 1), "
                        "e.g. lesion_count=4,lesion_side=4; language-only tasks stay uniform")
    p.add_argument("--vision-channels", default=None, metavar="C0,C1,...",
                   help="vision channels per level for a new run (tiny: 8,16,16,16); a checkpoint fixes them")
    p.add_argument("--no-export", action="store_true", help="skip building the phi bank and <out>/model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.errors import CommandError

    if args.minutes is None and args.steps is None:
        raise CommandError("give --minutes or --steps (or both) so the run ends")
    if args.steps is not None and args.steps < 1:
        raise CommandError("--steps must be positive")
    if not 0.0 <= args.cooldown <= 1.0:
        raise CommandError("--cooldown is a fraction of the budget, in [0, 1]")
    from training.trainer import TrainConfig, parse_joint_weights, train

    try:
        joint_weights = parse_joint_weights(args.joint_weights) if args.joint_weights is not None else None
    except ValueError as exc:
        raise CommandError(f"--joint-weights: {exc}") from None
    channels = None
    if args.vision_channels is not None:
        from training.trainer import STATE_FILE

        if args.resume and (args.out / "checkpoint" / STATE_FILE).is_file():
            raise CommandError("--vision-channels cannot change a checkpoint's network; drop it with --resume")
        from vision.config import get_config

        try:
            channels = tuple(int(c) for c in args.vision_channels.split(","))
            get_config(args.preset, channels=channels)
        except ValueError as exc:
            raise CommandError(f"--vision-channels {args.vision_channels!r} (e.g. 16,32,32,32): {exc}") from None
    try:
        cfg = TrainConfig.for_preset(args.preset, seed=args.seed, lr=args.lr, accum=args.accum, threads=args.threads,
                                     checkpoint_minutes=args.checkpoint_minutes, lm_only_tasks=args.lm_tasks,
                                     phi_lambda=args.phi_lambda, bce_weight=args.bce_weight,
                                     joint_weights=joint_weights, voxel_ce=args.voxel_ce, vision_channels=channels)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    keep = tuple(name for name, value in (("lm_only_tasks", args.lm_tasks), ("phi_lambda", args.phi_lambda),
                                          ("bce_weight", args.bce_weight), ("voxel_ce", args.voxel_ce),
                                          ("joint_weights", joint_weights)) if value is not None)
    result = train(cfg, args.out, max_steps=args.steps, minutes=args.minutes, resume=args.resume,
                   export=not args.no_export, keep_on_resume=keep, cooldown=args.cooldown)
    if result.interrupted:
        print(f"interrupted at step {result.step}; checkpoint saved in {result.out / 'checkpoint'}; "
              "continue with --resume", file=sys.stderr)
        return 130
    print(f"trained to step {result.step} ({result.tasks_seen} tasks); run dir {result.out}"
          + (f"; model {result.model_dir}" if result.model_dir else ""))
    return 0
