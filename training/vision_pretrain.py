"""Stage 1: pretrain the vision network on its own, phi taken from a learned bank per target.

Shaped like nnU-Net's trainer: one class, :class:`VisionPretrainer`, whose small methods are the
override points (``choose_targets``, ``loss``, ``learning_rate``; patches follow ``patch_for_step``), and named variants
(:data:`VARIANTS`) or a JSON run file instead of an ever longer list of flags. A run lives in one
directory and is stopped and resumed many times::

    python -m training.vision_pretrain --run runs/vision_v2 --hours 2            # new run or resume
    python -m training.vision_pretrain --run runs/vision_v2 --config training/configs/vision_v2.json

Checkpoints are written every ``checkpoint_minutes`` and on SIGTERM / Ctrl-C (the last finished
step), so nothing but the step in flight is lost. Synthesis runs in a worker process that overlaps
the network's step. Errors are not swallowed: a bad option or a broken sample stops the run.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from agent.phi_bank import PHI_DIM, PhiBank
from training.synth.mni_synthseg import MNI_SUPERVISED
from training.synth.synthseg import (
    DEFAULT_ROOT,
    LabelMaps,
    Priors,
    SynthSegGenerator,
    SynthSettings,
    split_subjects,
)
from vision.checkpoint import load_vision, save_vision
from vision.config import NEW_NETWORK_CEILING, VisionConfig
from vision.model import VisionNet
from vision.targets import ANATOMY_TARGETS, LESION_TARGETS, LUT_SIZE, TARGETS

logger = logging.getLogger(__name__)

# Encode phi per contrast family; "random" contrasts are what an unknown modality looks like.
MODALITY_OF_CONTRAST = {"T1": "T1", "T2": "T2", "FLAIR": "FLAIR", "PD": "PD", "CT": "CT", "DWI": "DWI",
                        "random": "unknown"}
MODALITIES = tuple(dict.fromkeys(MODALITY_OF_CONTRAST.values()))
BANK_TARGETS = tuple(TARGETS)  # every target has a row; lesion rows train once lesions are synthesized
STATE_NAME = "trainer_state.safetensors"
# a target is dead when its logit stayed below this (probability 0.01) on REVIVE_MIN_DRAWS draws
DEAD_LOGIT = math.log(0.01 / 0.99)
REVIVE_MIN_DRAWS = 15
META_NAME = "trainer_state.json"
LOG_NAME = "log.csv"
TARGETS_LOG_NAME = "targets.csv"  # per step and target: hard Dice at 0.5 on the working grid
LOG_FIELDS = ("step", "hours", "samples", "loss", "dice", "ce", "patch_mm", "lr", "sec_per_step")


def _tupled(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a run needs; saved beside its checkpoint and cited by the model card."""

    name: str = "vision_v2"
    trainer: str = "VisionPretrainer"  # the class that runs it (TRAINERS): a variant may override steps
    vision: dict = field(default_factory=lambda: dict(
        name="v2", channels=(16, 32, 64, 64, 64), attn_dim=16, encoding_dim=256, min_spacing=2.0,
        intensity_ceiling=NEW_NETWORK_CEILING))
    data_root: str | None = None  # None: $VOXAGENT_SYNTHSEG_DIR, else ../shared/data/synthseg
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 200
    # (from_step, patch edge in mm at 1 mm synthesis): small patches early, larger later
    patch_schedule: tuple[tuple[int, int], ...] = ((0, 96), (6000, 128), (30000, 160))
    # share of samples that are whole heads with a random field of view instead of patches, so that
    # the group norms see at inference-time fields of view (whole volumes) during training too
    whole_volume_share: float = 0.0
    # share of samples that are small patches (small_patch_mm) centred on the deep structures, with
    # small_patch_targets targets each: a 64 mm patch costs ~1/8 of a 128 mm one, so the small
    # structures, which need thousands of draws each, get many more per hour
    small_patch_share: float = 0.0
    small_patch_mm: int = 64
    small_patch_targets: int = 12
    # share of samples drawn from the MNI152 template's label map (training.synth.mni_synthseg) instead
    # of a subject's: same augmentation, but only the targets the template defines are drawn on them
    mni_share: float = 0.0
    # "working": logits on the network's working grid against area-averaged (soft) targets, the path
    # training.grid_ceiling scores; "input": logits interpolated to the input grid first (8x the voxels)
    loss_grid: str = "working"
    target_sampling: str = "uniform"  # or "difficulty": odds 0.2 + (1 - running Dice) per target
    targets_per_step: int = 4
    present_target_share: float = 0.85  # share of a step's targets drawn among those in the patch
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    # False: a target with no voxels in the sample is scored by cross-entropy only. Its soft Dice,
    # 1 / (sum p + 1), pulls hardest on the last few false-positive voxels, which drives small
    # structures (drawn absent whenever a patch misses them) to an output of 0 everywhere
    dice_on_absent: bool = True
    # every this many steps, targets whose output stayed below probability 0.01 everywhere on every
    # draw that held them restart from the smallest living target containing them (0: never); see
    # VisionPretrainer.revive_dead_targets
    revive_every: int = 0
    checkpoint_minutes: float = 5.0
    log_every: int = 20
    threads: int = 2
    autocast_bf16: bool = True  # ~25 % faster steps on CPUs with AVX512-BF16 (measured 0.46 -> 0.35 s)
    seed: int = 0
    synth: dict = field(default_factory=dict)  # SynthSettings overrides

    def __post_init__(self) -> None:
        # JSON gives lists where code writes tuples: normalize so equal runs compare equal
        object.__setattr__(self, "vision", _tupled(self.vision))
        object.__setattr__(self, "synth", _tupled(self.synth))
        object.__setattr__(self, "patch_schedule", tuple(tuple(int(x) for x in p) for p in self.patch_schedule))
        VisionConfig.from_dict(dict(self.vision))  # a bad vision key fails here, not at step 1
        SynthSettings(**self.synth)
        if self.trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {self.trainer!r}; known: {sorted(TRAINERS)}")
        if self.target_sampling not in ("uniform", "difficulty"):
            raise ValueError(f"target_sampling must be 'uniform' or 'difficulty', got {self.target_sampling!r}")
        if self.loss_grid not in ("working", "input"):
            raise ValueError(f"loss_grid must be 'working' or 'input', got {self.loss_grid!r}")
        if not 0.0 <= self.mni_share <= 1.0:
            raise ValueError(f"mni_share must be in [0, 1], got {self.mni_share!r}")
        if self.targets_per_step < 1 or self.small_patch_targets < 1:
            raise ValueError("targets_per_step and small_patch_targets must be >= 1")
        if not 0.0 <= self.small_patch_share <= 1.0 or self.small_patch_mm < 16:
            raise ValueError(f"small_patch_share must be in [0, 1] and small_patch_mm >= 16, got "
                             f"{self.small_patch_share!r} and {self.small_patch_mm!r}")
        if self.revive_every < 0:
            raise ValueError(f"revive_every must be >= 0 (0: never), got {self.revive_every!r}")
        if not self.patch_schedule or self.patch_schedule[0][0] != 0:
            raise ValueError("patch_schedule must start at step 0")

    @classmethod
    def from_json(cls, path: str | Path) -> PretrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in {path}; known: {sorted(known)}")
        if "patch_schedule" in data:
            data["patch_schedule"] = tuple(tuple(p) for p in data["patch_schedule"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# Trainer classes by name ("module:Class"), imported when a run asks for one.
TRAINERS = {"VisionPretrainer": "training.vision_pretrain:VisionPretrainer",
            "MultiLabelPretrainer": "training.vision_baseline:MultiLabelPretrainer"}


def trainer_class(name: str) -> type:
    import importlib

    module, cls = TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


# Keys a resumed run may change (schedules and bookkeeping); any other change needs a new run.
RESUMABLE_KEYS = frozenset({
    "data_root", "whole_volume_share", "small_patch_share", "small_patch_mm", "small_patch_targets", "mni_share",
    "loss_grid", "target_sampling", "lr", "warmup_steps",
    "patch_schedule", "targets_per_step", "present_target_share", "dice_weight", "ce_weight", "dice_on_absent",
    "revive_every", "checkpoint_minutes", "log_every", "threads", "synth", "autocast_bf16"})

VARIANTS: dict[str, PretrainConfig] = {
    "default": PretrainConfig(),
    # seconds per step on a laptop: for tests and for checking a change end to end
    "smoke": PretrainConfig(name="smoke", vision=dict(name="smoke", channels=(4, 8, 8), attn_dim=4,
                                                      encoding_dim=16, min_spacing=4.0,
                                                      intensity_ceiling=NEW_NETWORK_CEILING),
                            patch_schedule=((0, 32),), targets_per_step=2, log_every=1, warmup_steps=2),
    # the single-task baseline (training.vision_baseline): one net, one logit per label class, no phi
    "multilabel_baseline": PretrainConfig(
        name="multilabel_baseline", trainer="MultiLabelPretrainer",
        vision=dict(name="v2-multilabel", channels=(16, 32, 64, 64, 64), attn_dim=16, encoding_dim=256,
                    min_spacing=2.0, intensity_ceiling=NEW_NETWORK_CEILING, baseline=True,
                    out_channels=37),  # background + 32 structures + 4 lesion parts
        synth={"lesion_probability": 0.3}, whole_volume_share=0.05),
}


class PhiTable(torch.nn.Module):
    """The learned phi bank: one vector per target (generate) and per modality (encode)."""

    def __init__(self) -> None:
        super().__init__()
        self.targets = torch.nn.Parameter(torch.randn(len(BANK_TARGETS), PHI_DIM) * 0.5)
        self.modalities = torch.nn.Parameter(torch.randn(len(MODALITIES), PHI_DIM) * 0.5)

    def to_bank(self) -> PhiBank:
        t = self.targets.detach().cpu().numpy()
        m = self.modalities.detach().cpu().numpy()
        return PhiBank({mod: m[i] for i, mod in enumerate(MODALITIES)},
                       {name: t[i] for i, name in enumerate(BANK_TARGETS)})


def _normalize(image: torch.Tensor, ceiling: float) -> torch.Tensor:
    """vision.preprocess's normalization (0.5/99.5 percentiles -> 0/1, clip at ceiling) on a tensor."""
    from voxel_ops import Volume, normalize_intensity

    vol = Volume(image.numpy(), np.eye(4))
    return torch.from_numpy(normalize_intensity(vol, ceiling=ceiling).array)


class SynthStream(torch.utils.data.IterableDataset):
    """Endless training samples, made in a DataLoader worker (one thread) while the net trains."""

    def __init__(self, config: PretrainConfig, subjects: Sequence[str], start_step: int) -> None:
        self.config = config
        self.subjects = list(subjects)
        self.start_step = start_step

    def __iter__(self) -> Iterator[dict]:
        torch.set_num_threads(1)
        if torch.utils.data.get_worker_info() is not None:
            # a stop signal for the process group is the trainer's to handle (it saves, then ends us)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        cfg = self.config
        root = data_root(cfg)
        gen = SynthSegGenerator(LabelMaps(root, self.subjects), Priors(root),
                                SynthSettings(**cfg.synth))
        ceiling = VisionConfig.from_dict(dict(cfg.vision)).intensity_ceiling
        mni_gen = None
        if cfg.mni_share > 0:
            from training.synth.mni_synthseg import MNILabelMaps

            mni_gen = SynthSegGenerator(MNILabelMaps(), gen.priors, gen.settings)
        worker = torch.utils.data.get_worker_info()
        # one stream per worker; a single worker keeps the stream it always had
        seed = [cfg.seed, self.start_step] + ([worker.id] if worker is not None and worker.num_workers > 1 else [])
        rng = np.random.default_rng(seed)
        step = self.start_step
        while True:
            patch = patch_for_step(cfg, step)
            whole = rng.random() < cfg.whole_volume_share
            # no draw at all when a share is 0, so such a run's stream is the one it was before the option
            mni = mni_gen is not None and rng.random() < cfg.mni_share
            small = not whole and not mni and cfg.small_patch_share > 0 and rng.random() < cfg.small_patch_share
            if small:
                s = gen.sample(rng, patch_mm=cfg.small_patch_mm, deep=True)
            else:
                s = (mni_gen if mni and mni_gen is not None else gen).sample(rng, patch_mm=None if whole else patch)
            present = np.unique(s.labels.numpy())
            yield dict(image=_normalize(s.image, ceiling), labels=s.labels, spacing=s.spacing,
                       contrast=s.contrast, present=present,
                       patch_mm=0 if whole else cfg.small_patch_mm if small else patch,
                       small=small, supervised=MNI_SUPERVISED if mni else None)
            step += 1


def data_root(config: PretrainConfig) -> Path:
    """Where the label maps are: the config's path, $VOXAGENT_SYNTHSEG_DIR, or the shared default."""
    import os

    return Path(config.data_root or os.environ.get("VOXAGENT_SYNTHSEG_DIR") or DEFAULT_ROOT)


def patch_for_step(config: PretrainConfig, step: int) -> int:
    size = config.patch_schedule[0][1]
    for start, edge in config.patch_schedule:
        if step >= start:
            size = edge
    return size


class VisionPretrainer:
    """One run: network + phi table + optimizer + data stream + checkpoints + log."""

    def __init__(self, run_dir: str | Path, config: PretrainConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        saved = self.run_dir / "config.json"
        if saved.is_file():
            on_disk = PretrainConfig.from_json(saved)
            changed = set() if config is None else {f.name for f in dataclasses.fields(PretrainConfig)
                                                    if getattr(config, f.name) != getattr(on_disk, f.name)}
            if changed:
                fixed = changed - RESUMABLE_KEYS
                if fixed:
                    raise ValueError(f"{saved} differs in {sorted(fixed)}, which a resumed run cannot change; "
                                     f"start a new --run directory (resumable: {sorted(RESUMABLE_KEYS)})")
                with (self.run_dir / "config_history.jsonl").open("a") as fh:
                    fh.write(json.dumps({"changed": sorted(changed), "old": {k: getattr(on_disk, k) for k in changed},
                                         "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
                logger.warning("resumed run changes %s", sorted(changed))
            else:
                config = on_disk
        self.config = config or VARIANTS["default"]
        saved.write_text(self.config.to_json())
        torch.manual_seed(self.config.seed)
        # on the device before the optimizer loads its state, which then follows the parameters there
        self.net = VisionNet(VisionConfig.from_dict(dict(self.config.vision))).to(self.device)
        self.phi = PhiTable().to(self.device)
        self.optimizer = torch.optim.AdamW(list(self.net.parameters()) + list(self.phi.parameters()),
                                           lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.step = 0
        self.samples = 0
        self.hours = 0.0
        self.rng = np.random.default_rng([self.config.seed, 1])
        self._luts = torch.from_numpy(np.stack([TARGETS[n].lut() for n in BANK_TARGETS])).to(self.device)
        self._stop = False
        self.fp32_retries = 0
        self.last_targets: list[tuple[str, float, int]] = []
        self.running_dice: dict[str, float] = {}
        # since the last dead-target check: draws that held the target, highest logit on any of them
        self.present_draws: dict[str, int] = {}
        self.peak_logit: dict[str, float] = {}
        self.revivals: dict[str, int] = {}
        if (self.run_dir / META_NAME).is_file():
            self.load()

    # -- override points ---------------------------------------------------------------------
    def choose_targets(self, present: np.ndarray, k: int | None = None,
                       supervised: Sequence[str] | None = None) -> list[int]:
        """Indices into BANK_TARGETS: mostly targets with voxels in the sample, some absent ones.

        When the sample holds a lesion, one of the step's targets is a lesion target half of the time
        (there are 4 lesion targets among ~60, and lesions are what users ask about most).
        ``supervised`` (a sample's own list, e.g. an MNI sample's ``MNI_SUPERVISED``) restricts the draw
        to the targets whose truth the sample defines; None: every target.
        """
        k = k or self.config.targets_per_step
        lesions_on = SynthSettings(**self.config.synth).lesion_probability > 0
        allowed = [BANK_TARGETS.index(n) for n in ANATOMY_TARGETS + (LESION_TARGETS if lesions_on else ())
                   if supervised is None or n in supervised]
        if not allowed:
            raise ValueError(f"a sample supervises none of the trainer's targets: {supervised}")
        k = min(k, len(allowed))
        present = np.asarray(present, dtype=np.int64)
        lut = self._luts[:, np.clip(present, 0, LUT_SIZE - 1)].any(1).cpu().numpy()
        here = [i for i in allowed if lut[i]]
        lesion_here = [i for i in here if BANK_TARGETS[i] in LESION_TARGETS]
        chosen: list[int] = []
        if lesion_here and self.rng.random() < 0.5:
            chosen.append(int(self.rng.choice(lesion_here)))
        while len(chosen) < k:
            pool = here if (here and self.rng.random() < self.config.present_target_share) else allowed
            pool = [i for i in pool if i not in chosen] or [i for i in allowed if i not in chosen]
            chosen.append(int(self.rng.choice(pool, p=self.target_weights(pool))))
        return chosen

    def target_weights(self, pool: Sequence[int]) -> np.ndarray | None:
        """Draw odds within ``pool``: uniform, or (``target_sampling="difficulty"``) 0.2 + (1 - running
        Dice) per target, so that the targets still drawn badly (small deep structures) come up more
        often than the ones already learned (brain, hemispheres)."""
        if self.config.target_sampling == "uniform":
            return None
        w = np.array([0.2 + 1.0 - self.running_dice.get(BANK_TARGETS[i], 0.0) for i in pool])
        return w / w.sum()

    def update_running_dice(self) -> None:
        """Exponential running mean (weight 0.05) of each drawn target's hard training Dice."""
        for name, d, _ in self.last_targets:
            old = self.running_dice.get(name)
            self.running_dice[name] = d if old is None else 0.95 * old + 0.05 * d

    def note_peaks(self, chosen: Sequence[int], peaks: Sequence[float], truth_voxels: Sequence[int]) -> None:
        """Remember, per target drawn on a sample that holds it, its highest logit since the last check."""
        for i, peak, n in zip(chosen, peaks, truth_voxels):
            if n > 0:
                name = BANK_TARGETS[i]
                self.present_draws[name] = self.present_draws.get(name, 0) + 1
                self.peak_logit[name] = max(self.peak_logit.get(name, -math.inf), float(peak))

    def dead_targets(self, min_draws: int = REVIVE_MIN_DRAWS) -> list[str]:
        """Targets drawn at least ``min_draws`` times on samples that hold them since the last check
        whose output never reached probability 0.01 anywhere.

        Seen in vision_v2 at step 19,775: 16 of 60 targets (right hippocampus, both amygdalae, all
        lesion targets, ...) gave probability 0.000 everywhere on every scan. Their phi had pushed the
        generator's last blocks into SiLU's flat negative range, where the loss has no gradient, so
        no amount of training brings them back.
        """
        return [n for n, k in self.present_draws.items()
                if k >= min_draws and self.peak_logit[n] < DEAD_LOGIT]

    def revival_source(self, name: str, dead: Sequence[str]) -> str | None:
        """The living target a dead one restarts from: its other side, else the smallest living
        target whose labels contain its labels (fewest labels first), else None. Living: its output
        passed probability 0.01 on a sample that held it since the last check (a target not yet
        drawn often enough to be called dead is no source either)."""
        alive = [n for n in BANK_TARGETS if n not in dead and n != name
                 and self.peak_logit.get(n, -math.inf) >= DEAD_LOGIT]
        side = TARGETS[name].side
        if side:
            other = name.replace(side, "right" if side == "left" else "left", 1)
            if other in alive:
                return other
        labels = TARGETS[name].labels
        containing = [n for n in alive if labels <= TARGETS[n].labels]
        return min(containing, key=lambda n: (len(TARGETS[n].labels), n)) if containing else None

    def revive_dead_targets(self) -> dict[str, str]:
        """Restart each dead target's phi from its ``revival_source`` plus a little noise, with fresh
        optimizer moments for that row. The output starts as the source's mask (alive, so the loss
        has gradient again) and training shrinks it to the target. Returns {dead: source}."""
        dead = self.dead_targets()
        done: dict[str, str] = {}
        with torch.no_grad():
            rows = self.phi.targets
            state = self.optimizer.state.get(rows, {})
            for name in dead:
                source = self.revival_source(name, dead)
                if source is None:
                    logger.warning("target %r is dead and has no living container to restart from", name)
                    continue
                i, j = BANK_TARGETS.index(name), BANK_TARGETS.index(source)
                noise = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(self.step + i))
                rows[i] = rows[j] + 0.05 * rows[j].abs().mean() * noise.to(rows.device)
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][i] = 0.0
                self.revivals[name] = self.revivals.get(name, 0) + 1
                self.running_dice.pop(name, None)
                done[name] = source
        if done:
            logger.warning("step %d: restarted %d dead targets from living ones: %s", self.step, len(done),
                           ", ".join(f"{k} <- {v}" for k, v in sorted(done.items())))
        self.present_draws.clear()
        self.peak_logit.clear()
        return done

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Soft Dice (per target, then averaged; present targets only unless ``dice_on_absent``) + voxel
        cross-entropy, nnU-Net's default pair."""
        probs = torch.sigmoid(logits)
        dims = tuple(range(1, logits.ndim))
        inter = (probs * masks).sum(dims)
        denom = probs.sum(dims) + masks.sum(dims)
        dice = (2 * inter + 1.0) / (denom + 1.0)
        if not self.config.dice_on_absent:
            present = masks.sum(dims) > 0
            dice = dice[present] if bool(present.any()) else dice.new_ones(1)
        ce = F.binary_cross_entropy_with_logits(logits, masks)
        total = self.config.dice_weight * (1 - dice.mean()) + self.config.ce_weight * ce
        return total, {"dice": float(dice.mean().detach()), "ce": float(ce.detach())}

    def learning_rate(self) -> float:
        """Linear warm-up, then constant; resumable runs of unknown length have no cosine end."""
        cfg = self.config
        return cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup_steps))

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, sample: dict) -> dict[str, float]:
        """One optimizer step; a bf16 step whose loss or gradients are not finite is redone in fp32.

        On CPU, oneDNN's bf16 kernels now and then return non-finite values for small or odd shapes
        (seen on the smoke net's 4-channel levels); AMP's grad scaler would skip such a step, here it is
        recomputed at full precision, and counted (``fp32_retries``). A step that is non-finite in fp32
        too is a real divergence and stops the run.
        """
        self.net.train()
        labels = sample["labels"].to(self.device, torch.int64)
        # a whole head costs ~12 patches at the working grid: one target for it, not targets_per_step
        k = 1 if sample["patch_mm"] == 0 else self.config.small_patch_targets if sample.get("small") else None
        chosen = self.choose_targets(sample["present"], k, sample.get("supervised"))
        masks = torch.stack([self._luts[i][labels] for i in chosen]).float()[:, None]
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        parts = self._forward_backward(sample, chosen, masks, self.config.autocast_bf16)
        if parts is None and self.config.autocast_bf16:
            self.fp32_retries += 1
            logger.warning("non-finite bf16 step %d: recomputed in fp32 (%d so far)", self.step, self.fp32_retries)
            parts = self._forward_backward(sample, chosen, masks, False)
        if parts is None:
            raise FloatingPointError(f"non-finite loss or gradients at step {self.step} (fp32)")
        self.optimizer.step()
        self.update_running_dice()
        self.step += 1
        if self.config.revive_every and self.step % self.config.revive_every == 0:
            self.revive_dead_targets()
        self.samples += 1
        return parts

    def _forward_backward(self, sample: dict, chosen: list[int], masks: torch.Tensor,
                          bf16: bool) -> dict[str, float] | None:
        """Loss and gradients for one sample; None (gradients cleared) when anything is non-finite."""
        image = sample["image"][None, None].to(self.device)
        mod = MODALITIES.index(MODALITY_OF_CONTRAST[sample["contrast"]])
        working = self.config.loss_grid == "working"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            enc = self.net.encode([image], [sample["spacing"]], [self.phi.modalities[mod]])
            k = len(chosen)
            skips = [s.expand(k, *s.shape[1:]) for s in enc.streams[0].skips]
            plan = enc.streams[0].plan
            logits = self.net.decode([skips], [plan], [self.phi.targets[chosen]], at_input_grid=not working)[0]
        if working and plan.reduced:
            masks = F.interpolate(masks, size=plan.working_shape, mode="area")
        logits = logits.float()
        loss, parts = self.loss(logits, masks)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(self.net.parameters()) + list(self.phi.parameters()), 5.0)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        with torch.no_grad():  # hard Dice per target at 0.5, for the per-target log (targets.csv)
            pred, truth = logits > 0, masks > 0.5
            dims = tuple(range(1, logits.ndim))
            both = (pred & truth).sum(dims).float()
            sizes = pred.sum(dims).float() + truth.sum(dims).float()
            hard = torch.where(sizes > 0, 2 * both / sizes.clamp_min(1), torch.ones_like(sizes))
            self.last_targets = [(BANK_TARGETS[i], float(d), int(truth[j].sum())) for j, (i, d) in
                                 enumerate(zip(chosen, hard.tolist()))]
            self.note_peaks(chosen, logits.amax(dims).tolist(), truth.sum(dims).tolist())
        return {"loss": float(loss.detach()), **parts}

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        """Weights (fp32), phi bank, and a compact optimizer state (fp16 moments) for resuming."""
        tmp = self.run_dir / "tmp"
        save_vision(self.net, tmp)
        self.phi.to_bank().save(tmp / "phi_bank.safetensors")
        state: dict[str, torch.Tensor] = {"phi/targets": self.phi.targets.detach().cpu().clone(),
                                          "phi/modalities": self.phi.modalities.detach().cpu().clone()}
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                state[f"opt/{pid}/{key}"] = st[key].to("cpu", torch.float16 if key == "exp_avg" else torch.bfloat16)
            state[f"opt/{pid}/step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
        save_file(state, str(tmp / STATE_NAME))
        meta = dict(step=self.step, samples=self.samples, hours=self.hours, fp32_retries=self.fp32_retries,
                    running_dice=self.running_dice, revivals=self.revivals,
                    present_draws=self.present_draws, peak_logit=self.peak_logit,
                    rng=self.rng.bit_generator.state, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():  # per-file rename: a kill mid-save leaves the previous files whole
            f.replace(self.run_dir / f.name)
        tmp.rmdir()
        logger.info("checkpoint at step %d (%.2f h) in %s", self.step, self.hours, self.run_dir)

    def load(self) -> None:
        self.net.load_state_dict(load_vision(self.run_dir).state_dict())
        state = load_file(str(self.run_dir / STATE_NAME))
        with torch.no_grad():
            self.phi.targets.copy_(state["phi/targets"])
            self.phi.modalities.copy_(state["phi/modalities"])
        opt = self.optimizer.state_dict()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for pid in range(len(params)):
            if f"opt/{pid}/exp_avg" in state:
                opt["state"][pid] = {"step": state[f"opt/{pid}/step"][0].clone(),
                                     "exp_avg": state[f"opt/{pid}/exp_avg"].float(),
                                     "exp_avg_sq": state[f"opt/{pid}/exp_avg_sq"].float()}
        self.optimizer.load_state_dict(opt)
        meta = json.loads((self.run_dir / META_NAME).read_text())
        self.step, self.samples, self.hours = int(meta["step"]), int(meta["samples"]), float(meta["hours"])
        self.fp32_retries = int(meta.get("fp32_retries", 0))
        self.running_dice = {k: float(v) for k, v in meta.get("running_dice", {}).items()}
        self.revivals = {k: int(v) for k, v in meta.get("revivals", {}).items()}
        self.present_draws = {k: int(v) for k, v in meta.get("present_draws", {}).items()}
        self.peak_logit = {k: float(v) for k, v in meta.get("peak_logit", {}).items()}
        self.rng.bit_generator.state = meta["rng"]
        logger.info("resumed %s at step %d (%.2f h trained)", self.run_dir, self.step, self.hours)

    # -- the loop ----------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping after this step", signum)
        self._stop = True

    def fit(self, hours: float | None = None, max_steps: int | None = None, workers: int = 1) -> None:
        """Train until ``hours`` of wall time (this call) or ``max_steps`` (total) pass, or a signal."""
        torch.set_num_threads(self.config.threads)
        train_subjects, _ = split_subjects(data_root(self.config))
        stream = SynthStream(self.config, train_subjects, self.step)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                             prefetch_factor=2 if workers else None,
                                             persistent_workers=False)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        log_path = self.run_dir / LOG_NAME
        new_log = not log_path.is_file()
        targets_path = self.run_dir / TARGETS_LOG_NAME
        new_targets_log = not targets_path.is_file()
        start = last_ckpt = time.monotonic()
        run_hours_at_start = self.hours
        window: list[dict[str, float]] = []
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=self.step, desc=self.config.name, unit="step",
                   disable=not sys.stderr.isatty())
        try:
            with log_path.open("a", newline="") as fh, targets_path.open("a", newline="") as tfh:
                writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
                if new_log:
                    writer.writeheader()
                target_writer = csv.writer(tfh)
                if new_targets_log:
                    target_writer.writerow(["step", "target", "dice", "truth_voxels"])
                t_step = time.monotonic()
                for sample in loader:
                    parts = self.train_step(sample)
                    window.append(parts)
                    for name, d, voxels in self.last_targets:
                        target_writer.writerow([self.step, name, round(d, 4), voxels])
                    now = time.monotonic()
                    self.hours = run_hours_at_start + (now - start) / 3600
                    bar.update(1)
                    if self.step % self.config.log_every == 0:
                        row = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "dice", "ce")}
                        writer.writerow(dict(step=self.step, hours=round(self.hours, 4), samples=self.samples,
                                             patch_mm=sample["patch_mm"], lr=self.learning_rate(),
                                             sec_per_step=round((now - t_step) / len(window), 3),
                                             **{k: round(v, 4) for k, v in row.items()}))
                        fh.flush()
                        tfh.flush()
                        bar.set_postfix(loss=f"{row['loss']:.3f}", dice=f"{row['dice']:.3f}")
                        window, t_step = [], now
                    if (now - last_ckpt) / 60 >= self.config.checkpoint_minutes:
                        self.save()
                        last_ckpt = now
                    if self._stop or (hours is not None and (now - start) / 3600 >= hours) or \
                            (max_steps is not None and self.step >= max_steps):
                        break
        finally:
            bar.close()
            self.save()
            for s, h in previous.items():
                signal.signal(s, h)


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a run's network and phi bank into a model directory (what the engine loads)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    net = load_vision(run_dir)
    save_vision(net, out_dir)
    PhiBank.load(run_dir / "phi_bank.safetensors").save(out_dir / "phi_bank.safetensors")
    return out_dir


def target_summary(run_dir: str | Path, last_steps: int = 2000) -> list[tuple[str, float, int]]:
    """(target, mean training hard Dice, draws) over the run's last ``last_steps`` steps, worst first."""
    rows = list(csv.DictReader((Path(run_dir) / TARGETS_LOG_NAME).open()))
    if not rows:
        return []
    end = max(int(r["step"]) for r in rows)
    recent: dict[str, list[float]] = {}
    for r in rows:
        if int(r["step"]) > end - last_steps:
            recent.setdefault(r["target"], []).append(float(r["dice"]))
    return sorted(((t, float(np.mean(v)), len(v)) for t, v in recent.items()), key=lambda x: x[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.vision_pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory (created, or resumed when it has a checkpoint)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="JSON run file (PretrainConfig fields)")
    group.add_argument("--variant", choices=sorted(VARIANTS), help="a named variant")
    parser.add_argument("--hours", type=float, help="wall-clock budget of this call")
    parser.add_argument("--max-steps", type=int, help="stop when the run reaches this many steps")
    parser.add_argument("--workers", type=int, default=1, help="synthesis worker processes (0: in the loop)")
    parser.add_argument("--device", default="cpu", help="torch device of the network (cpu, cuda, cuda:1)")
    parser.add_argument("--summary", action="store_true",
                        help="print each target's training Dice over the last 2,000 steps and exit")
    args = parser.parse_args(argv)
    if args.summary:
        if not (Path(args.run) / TARGETS_LOG_NAME).is_file():
            print(f"error: no {TARGETS_LOG_NAME} in {args.run}", file=sys.stderr)
            return 2
        for target, d, n in target_summary(args.run):
            sys.stdout.write(f"{d:.3f}  {n:5d}  {target}\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = PretrainConfig.from_json(args.config) if args.config else (
            VARIANTS[args.variant] if args.variant else None)
        saved = Path(args.run) / "config.json"
        name = (config or (PretrainConfig.from_json(saved) if saved.is_file() else VARIANTS["default"])).trainer
        trainer = trainer_class(name)(args.run, config, device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not math.isfinite(args.hours or 0.0):
        print("error: --hours must be finite", file=sys.stderr)
        return 2
    trainer.fit(hours=args.hours, max_steps=args.max_steps, workers=args.workers)
    return 0


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: trainer classes (TRAINERS) import
    # training.vision_pretrain, and two copies of PretrainConfig never compare equal
    from training.vision_pretrain import main as _main

    raise SystemExit(_main())
