"""Joint training of the agent LM and the vision network (VoxelPrompt 3.3, eq. 2).

loss = CE(eta tokens) + lambda * (soft Dice + bce_weight * voxel CE)(generated volumes) + phi_lambda *
phi-probe loss, lambda = 0.1 (bce_weight = phi_lambda = 0 is the paper's eq. 2), teacher forcing over
whole trajectories with execution of the ground-truth code (`training.trajectory`). One optimizer
(Adam) holds both networks. Tasks are drawn on the fly: step k of run seed s uses task seed
`train_task_seed(s, k)` (always < 10**9; evaluation uses seeds >= 10**9) and each family's training
templates (`TRAIN_TEMPLATES`; evaluation uses its held-out ones).

Run directory layout::

    <out>/tokenizer.model          trained once, before step 0
    <out>/checkpoint/              latest state: agent_*, vision_*, tokenizer.model, train_state.pt
    <out>/model/                   exported models/<name> layout (+ phi_bank.safetensors)
    <out>/log.csv                  one row per optimizer step

Checkpoints are written to a temporary directory and renamed into place, so an interruption never
leaves a half-written checkpoint; `--resume` restores weights, optimizer, step and RNG states.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from agent.checkpoint import load_agent, save_agent
from agent.config import AgentConfig
from agent.model import VoxAgentModel
from agent.phi_bank import DEFAULT_MODALITIES, DEFAULT_TARGETS, PhiBank, normalize_target
from agent.tokenizer import TINY_VOCAB, AgentTokenizer, train_tokenizer
from training.errors import TaskDefect
from training.phi_probe import PhiProbe
from training.trajectory import DICE_LAMBDA, TrajectoryError, run_trajectory
from vision.checkpoint import load_vision, save_vision
from vision.config import get_config as get_vision_config
from vision.losses import VOXEL_CE
from vision.model import VisionNet, build_vision_net

logger = logging.getLogger(__name__)

EVAL_SEED_START = 10**9  # task seeds >= this are never used for training
# Each family's templates[HELD_OUT_TEMPLATE_START:] are evaluation-only; training draws the first nine and
# the family's extras (training.tasks.templates_extra), evaluation draws the named "held_out" set.
TRAIN_TEMPLATES = "train"
HELD_OUT_TEMPLATES = "held_out"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "train_config.json"


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"
    lr: float = 1e-3
    warmup_steps: int = 5
    accum: int = 1
    lm_only_tasks: int = 5  # extra language-only tasks per optimizer step (CE only; cheap on CPU)
    clip: float = 1.0
    dice_lambda: float = DICE_LAMBDA
    # voxel cross-entropy next to soft Dice in the segmentation term (nnU-Net's Dice + CE); 0 = paper eq. 2.
    # Without it lesion generates stalled at soft Dice ~1 on a brain-sized blob (see vision/losses.py).
    bce_weight: float = 1.0
    # how that cross-entropy averages: "grid" (every voxel alike) or "balanced" (target and background
    # halves; vision.losses.balanced_voxel_bce_loss), so a lesion is not outweighed 1 : 3,000
    voxel_ce: str = "grid"
    phi_lambda: float = 0.1  # weight of the phi-probe loss (training/phi_probe.py); 0 = paper eq. 2 only
    seed: int = 0
    vision_min_spacing: float | None = 4.0  # working spacing of the tiny vision net (CPU budget)
    vision_channels: tuple[int, ...] | None = None  # channels per level; None = the preset's (a checkpoint fixes it)
    vocab_size: int = TINY_VOCAB
    corpus_tasks: int = 120  # tasks executed (oracle masks) to build the tokenizer corpus
    feedback: str = "truth"  # values read during training come from ground-truth masks
    checkpoint_minutes: float = 4.0
    threads: int = 2
    # relative odds of each family for the joint (vision-trained) task of a step; unnamed families 1.
    # A uniform draw gives the rare lesion targets ~25 % of the generator's steps; language-only tasks
    # keep the uniform mix whatever these say.
    joint_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # checked here, not at the first step: the step loop skips tasks that raise KeyError, so an
        # unknown name would skip every task of the run
        if self.voxel_ce not in VOXEL_CE:
            raise ValueError(f"voxel_ce {self.voxel_ce!r}: choose from {', '.join(VOXEL_CE)}")
        if self.vision_channels is not None:  # a JSON list from train_config.json, or a bad width: fail now
            object.__setattr__(self, "vision_channels", tuple(int(c) for c in self.vision_channels))
            get_vision_config(self.preset, channels=self.vision_channels)

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> "TrainConfig":
        if preset == "paper":
            base = cls(preset="paper", lr=1e-4, accum=8, lm_only_tasks=0, vision_min_spacing=None, vocab_size=32000,
                       corpus_tasks=2000, warmup_steps=500)
        elif preset == "tiny":
            base = cls()
        else:
            raise ValueError(f"unknown preset {preset!r} (tiny or paper)")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def train_task_seed(run_seed: int, index: int) -> int:
    """Task seed for the index-th task of a run: deterministic, always below EVAL_SEED_START."""
    return int(np.random.default_rng([int(run_seed), int(index), 7]).integers(0, EVAL_SEED_START))


RENAME_PROB = 0.3  # share of training tasks whose scans get neutral names (training/tasks/rename.py)


def joint_family(weights: dict[str, float], run_seed: int, index: int) -> str | None:
    """The family of the index-th task when it is a joint one, drawn by ``weights`` (None = uniform draw)."""
    if not weights:
        return None
    from training.tasks import FAMILIES

    names = list(FAMILIES)
    odds = np.array([float(weights.get(n, 1.0)) for n in names])
    rng = np.random.default_rng([int(run_seed), int(index), 13])
    return names[int(rng.choice(len(names), p=odds / odds.sum()))]


def parse_joint_weights(spec: str) -> dict[str, float]:
    """``"lesion_count=4,lesion_side=4"`` -> {family: odds}; unknown families and bad odds raise ValueError."""
    from training.tasks import FAMILIES

    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in FAMILIES:
            raise ValueError(f"{item!r}: expected FAMILY=ODDS with FAMILY one of {', '.join(FAMILIES)}")
        try:
            odds = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: odds must be a number") from None
        if not 0.0 <= odds < float("inf"):
            raise ValueError(f"{item!r}: odds must be finite and >= 0")
        weights[name] = odds
    if weights and sum(weights.get(n, 1.0) for n in FAMILIES) <= 0:
        raise ValueError("at least one family needs odds above 0")
    return weights


def sample_training_task(run_seed: int, index: int, family: str | None = None):
    from training.tasks import sample_task
    from training.tasks.rename import rename_scans

    seed = train_task_seed(run_seed, index)
    sample, case = sample_task(seed, family=family, templates=TRAIN_TEMPLATES)
    rng = np.random.default_rng([seed, 31])  # its own stream: the task itself is drawn as before
    if rng.random() < RENAME_PROB:
        sample, case = rename_scans(sample, case, rng)
    return sample, case


# ---------------------------------------------------------------- tokenizer corpus

def task_corpus(n_tasks: int, seed: int = 0) -> Iterator[str]:
    """Prompts + scan metadata, ground-truth code, read values and answers of executed training tasks."""
    from agent.sandbox import Sandbox
    from agent.state import initial_state_text, scan_infos_from_volumes
    from training.oracle import OracleVisionClient

    for i in range(n_tasks):
        try:
            sample, case = sample_training_task(seed + 100_003, i)
        except TaskDefect:  # a synthesis defect must not stop tokenizer training
            logger.exception("corpus task %d failed to synthesize", i)
            continue
        yield initial_state_text(sample.prompt, scan_infos_from_volumes(case.scans))
        sandbox = Sandbox(case.scans, client=OracleVisionClient(case))
        for step in sample.steps:
            yield step
            outcome = sandbox.execute_step(step)
            for fb in outcome.feedback:
                if fb.text:
                    yield fb.text + "\n"
        if sample.answer:
            yield sample.answer


def build_tokenizer(cfg: TrainConfig, path: Path) -> AgentTokenizer:
    if path.is_file():
        return AgentTokenizer.load(path)
    from agent.corpus import seed_corpus

    texts = list(task_corpus(cfg.corpus_tasks, cfg.seed)) + list(seed_corpus(300, cfg.seed))
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, out_path=path)
    logger.info("tokenizer trained on %d texts: %d pieces", len(texts), tokenizer.vocab_size)
    return tokenizer


# ---------------------------------------------------------------- state on disk

def _atomic_dir(final: Path, write) -> None:
    """Write into a sibling temp dir, then swap it into place (never a half-written directory)."""
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(out: Path, model: VoxAgentModel, tokenizer: AgentTokenizer, net: VisionNet,
                    optimizer: torch.optim.Optimizer, step: int, tasks_seen: int, cfg: TrainConfig,
                    probe: PhiProbe | None = None) -> Path:
    def write(tmp: Path) -> None:
        save_agent(model, tokenizer, tmp)
        save_vision(net, tmp)
        extra = {"phi_probe": probe.to_state()} if probe is not None else {}
        torch.save({"step": step, "tasks_seen": tasks_seen, "optimizer": optimizer.state_dict(),
                    "rng": _rng_state(), "config": asdict(cfg), **extra}, tmp / STATE_FILE)

    final = out / "checkpoint"
    _atomic_dir(final, write)
    logger.info("checkpoint at step %d -> %s", step, final)
    return final


def export_model(directory: Path, model: VoxAgentModel, tokenizer: AgentTokenizer, net: VisionNet,
                 bank: PhiBank) -> Path:
    """The `models/<name>/` layout: agent + tokenizer + vision + phi bank."""
    def write(tmp: Path) -> None:
        save_agent(model, tokenizer, tmp)
        save_vision(net, tmp)
        bank.save(tmp / "phi_bank.safetensors")

    _atomic_dir(directory, write)
    return directory


# ---------------------------------------------------------------- phi bank

CANONICAL_TARGETS = ("brain", "gray matter", "white matter", "cerebrospinal fluid", "left hemisphere",
                     "right hemisphere", "lesion", "edema", "enhancing tumor", "necrosis")
CANONICAL_MODALITIES = ("T1", "T1C", "T2", "FLAIR", "CT", "DWI", "ADC")
FULL_TARGET_MODALITIES = ("T1", "FLAIR", "T1C")


def _canonical_sample(target: str, scan: str, seed: int):
    from training.tasks import TaskSample
    from training.tasks.program import Program

    program = Program()
    program.encode([scan])
    var = program.generate(scan, target)
    name = target.replace(" ", "_")
    program.output(var, name)
    program.respond(f"Here is the segmentation of the {target}.")
    return TaskSample(family="segment", prompt=f"Segment the {target} on the {scan}.", steps=program.finish(),
                      answer=None, expected={}, generate_calls=list(program.generate_calls), outputs=[name],
                      seed=seed)


def build_phi_bank(model: VoxAgentModel, tokenizer: AgentTokenizer, net: VisionNet, seed: int = 0,
                   cases_per_modality: int = 1) -> PhiBank:
    """Average the phis the trained agent emits on canonical prompts: one per target, per modality.

    Teacher forced on canonical segmentation programs (no grad). Targets or modalities never
    reached fall back to the default (seeded) vectors, so the bank always covers the library.
    """
    from training.synth import CaseSpec, LesionSpec, ScanSpec, synthesize_case
    from training.trajectory import phi_summary

    collected = []
    model.eval()
    net.eval()
    with torch.no_grad():
        for mi, modality in enumerate(CANONICAL_MODALITIES):
            for k in range(cases_per_modality):
                scan = modality.lower()
                spec = CaseSpec(scans=(ScanSpec(scan, modality),),
                                lesions=LesionSpec(count=(1, 1), edema_prob=1.0, enhancing_prob=1.0,
                                                   heterogeneous_prob=1.0))
                case_seed = EVAL_SEED_START - 1 - 1000 * mi - k  # a fixed corner of the training range
                try:
                    case = synthesize_case(case_seed, spec)
                except TaskDefect:
                    logger.exception("phi-bank case for %s failed", modality)
                    continue
                # every modality gives its encode phi; generate phis are averaged over a few of them
                targets = CANONICAL_TARGETS if modality in FULL_TARGET_MODALITIES else CANONICAL_TARGETS[:1]
                for target in targets:
                    if not case.mask(target, scan).array.any():
                        continue
                    sample = _canonical_sample(target, scan, case_seed)
                    try:
                        collected += run_trajectory(model, tokenizer, net, sample, case).phis
                    except TrajectoryError:
                        logger.warning("canonical %s on %s failed", target, modality)
    model.train()
    net.train()
    means = phi_summary(collected)
    default = PhiBank.default()
    encode = {m: means.get(f"encode:{m}", default.encode_phi(m)) for m in DEFAULT_MODALITIES}
    generate = {t: means.get(f"generate:{normalize_target(t)}", default.generate_phi(t)) for t in DEFAULT_TARGETS}
    logger.info("phi bank: %d learned generate phis, %d learned encode phis",
                sum(f"generate:{normalize_target(t)}" in means for t in DEFAULT_TARGETS),
                sum(f"encode:{m}" in means for m in DEFAULT_MODALITIES))
    return PhiBank(encode, generate)


# ---------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    step: int
    tasks_seen: int
    out: Path
    model_dir: Path | None
    losses: list[float]
    interrupted: bool = False


LOG_COLUMNS = ["step", "tasks_seen", "loss", "ce", "dice_loss", "token_acc", "lr", "grad_norm",
               "seconds", "families", "phi_loss", "phi_probe_acc", "bce_loss"]


def _prepare_resumed_log(path: Path, step: int) -> None:
    """Give a resumed run's log the current header and drop the rows after the checkpoint's step.

    Columns are only ever appended, so older rows stay short. Rows after ``step`` describe steps a
    kill threw away; the resumed run logs them again, and keeping both would count them twice.
    """
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    header, rows = lines[0], lines[1:]
    if header.rstrip("\r\n").split(",") != LOG_COLUMNS:
        header = ",".join(LOG_COLUMNS) + "\r\n"
    def logged_after_checkpoint(row: str) -> bool:
        first = row.split(",", 1)[0]
        return first.isdigit() and int(first) > step

    kept = [row for row in rows if not logged_after_checkpoint(row)]
    if header != lines[0] or len(kept) != len(rows):
        path.write_text(header + "".join(kept))


def _lr_at(cfg: TrainConfig, step: int, scale: float = 1.0) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * scale


def cooldown_scale(progress: float, cooldown: float) -> float:
    """Learning-rate multiplier of a warmup-stable-decay schedule: 1, then linear to 0 over the last
    ``cooldown`` fraction of the budget.

    Runs here are budgeted in wall time, so the end is only known as a fraction of that budget; a
    constant rate that drops at the end (MiniCPM's WSD) needs no total step count up front, unlike
    cosine, and a run can stop or be resumed at any point of the stable phase.
    """
    if cooldown <= 0 or progress < 1.0 - cooldown:
        return 1.0
    return max(0.0, (1.0 - progress) / cooldown)


class _Budget:
    """This invocation's budget (steps, wall time or both): when it is spent, and how much of it, in [0, 1]."""

    def __init__(self, start_step: int, max_steps: int | None, minutes: float | None):
        self.start_step, self.max_steps = start_step, max_steps
        self.t0 = time.monotonic()
        self.seconds = 60.0 * minutes if minutes else None

    def progress(self, step: int) -> float:
        parts = [0.0]
        if self.max_steps is not None and self.max_steps > self.start_step:
            parts.append((step - self.start_step) / (self.max_steps - self.start_step))
        if self.seconds:
            parts.append((time.monotonic() - self.t0) / self.seconds)
        return min(1.0, max(parts))

    def done(self, step: int) -> bool:
        if self.max_steps is not None and step >= self.max_steps:
            return True
        return self.seconds is not None and time.monotonic() - self.t0 >= self.seconds


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (docker stop, a batch scheduler) stops training like Ctrl-C: checkpoint, then exit."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_networks(cfg: TrainConfig, tokenizer: AgentTokenizer) -> tuple[VoxAgentModel, VisionNet]:
    torch.manual_seed(cfg.seed)
    model = VoxAgentModel(AgentConfig.from_preset(cfg.preset, tokenizer))
    overrides = {} if cfg.vision_min_spacing is None else {"min_spacing": cfg.vision_min_spacing}
    if cfg.vision_channels is not None:
        overrides["channels"] = cfg.vision_channels
    net = build_vision_net(cfg.preset, **overrides)
    return model, net


def train(cfg: TrainConfig, out: Path, *, max_steps: int | None = None, minutes: float | None = None,
          resume: bool = False, export: bool = True, progress: bool = True,
          task_source=None, keep_on_resume: tuple[str, ...] = (), cooldown: float = 0.0) -> TrainResult:
    """Train until ``max_steps`` optimizer steps or ``minutes`` of wall time, whichever comes first.

    ``cooldown`` is the fraction of this invocation's budget over which the learning rate falls
    linearly to 0 (0 = constant rate). Ctrl-C or SIGTERM saves a checkpoint at the last finished
    step and returns with ``interrupted`` set (no export), so `--resume` loses nothing.

    ``task_source(index) -> (TaskSample, Case)`` replaces the on-the-fly task stream (tests use a
    fixed instance to check that the loss decreases). On resume the saved configuration wins, except
    for ``checkpoint_minutes``, ``threads`` and the fields named in ``keep_on_resume``.
    """
    from tqdm import tqdm

    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    if resume and (ckpt / STATE_FILE).is_file():
        model, tokenizer = load_agent(ckpt)
        net = load_vision(ckpt)
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
        # runs saved before bce_weight existed trained on soft Dice alone
        saved = TrainConfig(**{"bce_weight": 0.0, **state["config"]})
        cfg = replace(saved, **{k: getattr(cfg, k) for k in ("checkpoint_minutes", "threads", *keep_on_resume)})
        step, tasks_seen = int(state["step"]), int(state["tasks_seen"])
        logger.info("resuming from step %d", step)
    else:
        if resume:
            logger.warning("no checkpoint in %s; starting fresh", out)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        tokenizer = build_tokenizer(cfg, out / "tokenizer.model")
        model, net = build_networks(cfg, tokenizer)
        state, step, tasks_seen = None, 0, 0
    (out / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    model.train()
    net.train()
    params = [p for p in model.parameters()] + [p for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
    # the probe has its own optimizer so checkpoints from before it existed still resume
    probe = PhiProbe(model.cfg.phi_dim) if cfg.phi_lambda > 0 else None
    if probe is not None and state is not None and "phi_probe" in state:
        probe.load_from_state(state["phi_probe"])
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=cfg.lr) if probe is not None else None

    def source(index: int, joint: bool):
        if task_source is not None:
            return task_source(index)
        family = joint_family(cfg.joint_weights, cfg.seed, index) if joint else None
        return sample_training_task(cfg.seed, index, family)

    log_path = out / "log.csv"
    new_log = not log_path.exists() or not resume
    if not new_log:
        _prepare_resumed_log(log_path, step)
    log_file = log_path.open("w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(LOG_COLUMNS)
    budget = _Budget(step, max_steps, minutes)
    total = max_steps if max_steps is not None else None
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    last_ckpt = time.monotonic()
    losses: list[float] = []
    interrupted = False
    committed_tasks = tasks_seen  # tasks behind the last finished step: what a resume starts after
    try:
        with _sigterm_as_interrupt():
            while not budget.done(step):
                t0 = time.monotonic()
                lr = _lr_at(cfg, step, cooldown_scale(budget.progress(step), cooldown))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ce_sum = dice_sum = bce_sum = phi_sum = 0.0
                phi_hits = phi_seen = 0
                hits = tokens = done = 0
                families = []
                lm_done = 0
                while done < cfg.accum or lm_done < cfg.lm_only_tasks * cfg.accum:
                    joint = done < cfg.accum
                    index = tasks_seen
                    tasks_seen += 1
                    try:
                        sample, case = source(index, joint)
                        traj = run_trajectory(model, tokenizer, net, sample, case, feedback=cfg.feedback, joint=joint,
                                              voxel_ce=cfg.voxel_ce)
                    except TaskDefect as exc:  # only a bad task; a bug (typo, shape, option) stops the run
                        logger.warning("task %d skipped: %s", index, exc)
                        continue
                    phi_loss = traj.ce.new_zeros(())
                    if probe is not None and traj.mod_phis is not None and traj.mod_labels is not None:
                        phi_loss = probe.loss(traj.mod_phis, traj.mod_labels)
                        acc = probe.accuracy(traj.mod_phis, traj.mod_labels)
                        if acc == acc:  # not NaN
                            phi_hits += acc * len(traj.mod_labels)
                            phi_seen += len(traj.mod_labels)
                        phi_sum += float(phi_loss.detach())
                    if joint:
                        loss = traj.loss(cfg.dice_lambda, cfg.bce_weight) + cfg.phi_lambda * phi_loss
                        (loss / cfg.accum).backward()
                        ce_sum += float(traj.ce.detach())
                        dice_sum += float(traj.dice_loss.detach())
                        bce_sum += float(traj.bce_loss.detach())
                        done += 1
                    else:
                        ((traj.ce + cfg.phi_lambda * phi_loss) / cfg.accum).backward()
                        lm_done += 1
                    hits += traj.correct_tokens
                    tokens += traj.code_tokens
                    families.append(sample.family + ("" if joint else "(lm)"))
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip))
                optimizer.step()
                step += 1
                committed_tasks = tasks_seen
                optimizer.zero_grad(set_to_none=True)
                if probe_optimizer is not None:
                    probe_optimizer.step()
                    probe_optimizer.zero_grad(set_to_none=True)
                n_tasks = max(done + lm_done, 1)
                ce, dice, bce = ce_sum / cfg.accum, dice_sum / cfg.accum, bce_sum / cfg.accum
                total_loss = ce + cfg.dice_lambda * (dice + cfg.bce_weight * bce)
                losses.append(total_loss)
                writer.writerow([step, tasks_seen, f"{total_loss:.5f}", f"{ce:.5f}", f"{dice:.5f}",
                                 f"{hits / max(tokens, 1):.4f}", f"{lr:.2e}", f"{grad_norm:.3f}",
                                 f"{time.monotonic() - t0:.2f}", "+".join(families), f"{phi_sum / n_tasks:.4f}",
                                 f"{phi_hits / phi_seen:.3f}" if phi_seen else "", f"{bce:.5f}"])
                log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss:.3f}", ce=f"{ce:.3f}", dice=f"{dice:.3f}",
                                acc=f"{hits / max(tokens, 1):.2f}", phi=f"{phi_sum / n_tasks:.3f}")
                if time.monotonic() - last_ckpt > 60.0 * cfg.checkpoint_minutes:
                    save_checkpoint(out, model, tokenizer, net, optimizer, step, tasks_seen, cfg, probe)
                    last_ckpt = time.monotonic()
    except KeyboardInterrupt:
        interrupted = True
        tasks_seen = committed_tasks
        optimizer.zero_grad(set_to_none=True)
        if probe_optimizer is not None:
            probe_optimizer.zero_grad(set_to_none=True)
        logger.warning("interrupted: checkpoint at step %d; continue with --resume", step)
    finally:
        bar.close()
        log_file.close()
    save_checkpoint(out, model, tokenizer, net, optimizer, step, tasks_seen, cfg, probe)
    model_dir = None
    if export and not interrupted:
        bank = build_phi_bank(model, tokenizer, net, seed=cfg.seed)
        model_dir = export_model(out / "model", model, tokenizer, net, bank)
        logger.info("exported model to %s", model_dir)
    return TrainResult(step=step, tasks_seen=tasks_seen, out=out, model_dir=model_dir, losses=losses,
                       interrupted=interrupted)
