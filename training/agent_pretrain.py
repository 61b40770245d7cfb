"""Stage 2: train the agent on its own, against a frozen vision network and its phi bank.

The joint trainer (`training.trainer`) spends ~4.6 s per step, nearly all of it in the vision
network, so the agent never got the steps it needs to learn language. Here the vision network is
frozen (a snapshot of a `training.vision_pretrain` run): episodes are executed once in a worker
(`training.agent_episodes`), pooled and reused, and a step is a batched teacher-forced forward of
the language model only. The loss is

    CE(code tokens) + phi_lambda * (1 - cos(phi, phi_bank[label]) + ||phi - phi_bank[label]||^2 / 32)

at every ``<MOD>``, so the agent's phis are the ones the vision network was trained to follow.

Shaped like nnU-Net's trainer: one class, :class:`AgentPretrainer`, with small override points
(``loss``, ``learning_rate``, ``draw_batch``), named variants (:data:`VARIANTS`) or a JSON run file.
Training stops when held-out code exact match (`evaluate_exact_match`) has not risen for
``patience`` evaluations, not after a fixed time. A run directory is stopped and resumed freely::

    python -m training.agent_pretrain --run runs/agent_v2 --vision checkpoints/vision_v2 --hours 1
    python -m training.agent_pretrain --run runs/agent_v2 --export models/voxagent-v2
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import random
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agent.checkpoint import load_agent, save_agent
from agent.config import AgentConfig
from agent.model import VoxAgentModel
from agent.phi_bank import PhiBank
from agent.state import IGNORE_INDEX, build_training_sequence, collate_sequences
from agent.tokenizer import TINY_VOCAB, AgentTokenizer, train_tokenizer
from training.agent_episodes import Episode, EpisodeWorker, run_episode
from training.prompt_augment import PromptNoise

logger = logging.getLogger(__name__)

VISION_SNAPSHOT = "vision"  # the frozen vision network + phi bank the run trains against
AGENT_DIR = "agent"
STATE_FILE = "train_state.pt"
POOL_FILE = "episodes.pt"  # not committed: rebuilt by the worker after a fresh clone
HELD_OUT_FILE = "held_out.pt"  # executed held-out episodes (not committed either)
PACKED_STATE_FILE = "train_state.json"  # step counters of a run packed for git (`pack`)
LOG_FILE = "log.csv"
EVAL_FILE = "eval.jsonl"
LOG_FIELDS = ("step", "hours", "lr", "loss", "ce", "phi_loss", "phi_cos", "token_acc", "pool", "s_per_step")


@dataclass(frozen=True)
class AgentPretrainConfig:
    preset: str = "tiny"
    seed: int = 0
    batch: int = 16
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 200
    weight_decay: float = 0.01
    clip: float = 1.0
    phi_lambda: float = 1.0
    phi_activation: str = "identity"  # the v2 bank's vectors leave SiLU's range (agent.config)
    vocab_size: int = TINY_VOCAB
    corpus_episodes: int = 300  # executed episodes the tokenizer is trained on (they seed the pool too)
    pool_size: int = 20_000  # episodes kept for reuse; new ones replace random old ones
    # fresh episodes waited for per step once the pool holds min_pool; 0 = take whatever the worker
    # has ready and never wait (the pool's reuse then grows with the step rate)
    fresh_per_step: int = 0
    min_pool: int = 64
    eval_every: int = 1000
    eval_tasks: int = 60
    patience: int = 5  # evaluations without a new best exact match before the run stops
    decay_steps: int = 40_000  # cosine from lr to min_lr over this many steps, then min_lr
    checkpoint_minutes: float = 5.0
    threads: int = 2
    worker_threads: int = 1
    max_tokens: int = 1536  # longer episodes are dropped (they do not fit the decode budget either)
    # real anatomy for the anatomy families: SynthSeg label maps (None: $VOXAGENT_SYNTHSEG_DIR or
    # ../shared/data/synthseg); label_cases False keeps every task on the MNI template (old 19 targets)
    data_root: str | None = None
    label_cases: bool = True
    # tasks written per synthesized case (other templates, wordings, targets): prompts are cheap, cases not
    variants_per_case: int = 4
    # a frozen all-MiniLM-L6-v2 vector of the prompt next to its tokens (agent.prompt_encoder)
    sentence_encoder: bool = False
    # share of drawn episodes whose prompt gets word dropout/insertion/swaps (training.prompt_augment)
    prompt_noise: float = 0.0
    # keep drawing fresh episodes from the worker once the pool is full (False: the worker is never
    # started after that, which frees its core; prompt_noise then supplies the variety)
    refresh_pool: bool = True
    # the sentence encoder's per-token states added to the prompt pieces (agent.prompt_states)
    prompt_states: bool = False

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> "AgentPretrainConfig":
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


VARIANTS: dict[str, AgentPretrainConfig] = {
    "default": AgentPretrainConfig(),
    "no_phi": AgentPretrainConfig(phi_lambda=0.0),  # ablation: CE only (the agent's phis go unsupervised)
    # the prompt also through a frozen pretrained sentence encoder (issue 20's comparison)
    "sentence": AgentPretrainConfig(sentence_encoder=True),
    # ... and its contextual state of every prompt word, at that word's pieces
    "sentence_tokens": AgentPretrainConfig(sentence_encoder=True, prompt_states=True),
    "smoke": AgentPretrainConfig(batch=2, corpus_episodes=4, min_pool=2, eval_every=3, eval_tasks=2, patience=2,
                                 warmup_steps=1, vocab_size=400, checkpoint_minutes=0.0),
}
# keys a resumed run may change (recorded in the run's config history); others would change the run's meaning
RESUMABLE_KEYS = frozenset({"batch", "lr", "min_lr", "eval_every", "eval_tasks", "patience", "decay_steps",
                            "checkpoint_minutes", "threads", "worker_threads", "pool_size", "fresh_per_step",
                            "clip", "weight_decay", "variants_per_case", "prompt_noise", "refresh_pool"})


def phi_targets(bank: PhiBank, labels: Sequence[str]) -> torch.Tensor:
    """The bank's phi for each ``<MOD>`` label ("generate:<target>" / "encode:<modality>")."""
    rows = []
    for label in labels:
        kind, _, name = label.partition(":")
        rows.append(bank.generate_phi(name) if kind == "generate" else bank.encode_phi(name))
    return torch.from_numpy(np.stack(rows)).float()


def phi_loss(phis: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - cosine) + mean squared error: direction and scale both matter to the vision network."""
    cos = F.cosine_similarity(phis, targets, dim=-1)
    return (1.0 - cos).mean() + F.mse_loss(phis, targets), cos.mean().detach()


@dataclass
class StepStats:
    loss: float
    ce: float
    phi_loss: float
    phi_cos: float
    token_acc: float


class AgentPretrainer:
    """One run: agent + tokenizer + frozen vision snapshot + episode pool + optimizer + checkpoints."""

    def __init__(self, run_dir: str | Path, config: AgentPretrainConfig | None = None,
                 vision_dir: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = self._settle_config(config)
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        self.vision_dir = self._snapshot_vision(vision_dir)
        self.bank = PhiBank.load(self.vision_dir / "phi_bank.safetensors")
        self.data_root = self._data_root()
        self.rng = random.Random(cfg.seed)
        self.step = 0
        self.hours = 0.0
        self.best = -1.0
        self.evals_since_best = 0
        self.pool: list[Episode] = []
        self.next_episode = 0
        self._stop = False
        self._load_pool()
        agent_dir = self.run_dir / AGENT_DIR
        if (agent_dir / "agent.safetensors").is_file():
            self.model, self.tokenizer = load_agent(agent_dir)
            self.model.train()
        else:
            self.tokenizer = self._build_tokenizer()
            from agent.prompt_encoder import SENTENCE_DIM

            acfg = AgentConfig.from_preset(cfg.preset, self.tokenizer, phi_activation=cfg.phi_activation,
                                           prompt_vector_dim=SENTENCE_DIM if cfg.sentence_encoder else 0,
                                           prompt_state_dim=SENTENCE_DIM if cfg.prompt_states else 0)
            torch.manual_seed(cfg.seed)
            self.model = VoxAgentModel(acfg)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.98))
        self._load_state()

    # ---------------------------------------------------------------- setup
    def _settle_config(self, config: AgentPretrainConfig | None) -> AgentPretrainConfig:
        saved = self.run_dir / "config.json"
        if not saved.is_file():
            config = config or AgentPretrainConfig()
            config.to_json(saved)
            return config
        on_disk = AgentPretrainConfig.from_json(saved)
        if config is None or config == on_disk:
            return on_disk
        changed = {f.name for f in dataclasses.fields(AgentPretrainConfig)
                   if getattr(config, f.name) != getattr(on_disk, f.name)}
        fixed = changed - RESUMABLE_KEYS
        if fixed:
            raise ValueError(f"{saved} differs in {sorted(fixed)}, which a resumed run cannot change; "
                             f"start a new run directory or change only {sorted(RESUMABLE_KEYS)}")
        with (self.run_dir / "config_history.jsonl").open("a") as fh:
            fh.write(json.dumps({k: [getattr(on_disk, k), getattr(config, k)] for k in sorted(changed)}) + "\n")
        config.to_json(saved)
        return config

    def _snapshot_vision(self, vision_dir: str | Path | None) -> Path:
        """Copy the vision network and bank into the run once: the agent trains against that snapshot."""
        snap = self.run_dir / VISION_SNAPSHOT
        if (snap / "phi_bank.safetensors").is_file():
            if vision_dir is not None and Path(vision_dir).resolve() != snap.resolve():
                logger.info("run already trains against its own vision snapshot %s; ignoring %s", snap, vision_dir)
            return snap
        if vision_dir is None:
            raise ValueError("a new run needs --vision DIR (a vision_pretrain run or a models/<name> directory)")
        src = Path(vision_dir)
        missing = [f for f in ("vision.safetensors", "vision_config.json", "phi_bank.safetensors")
                   if not (src / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{src} lacks {missing}: pass a vision_pretrain run or a model directory")
        snap.mkdir(parents=True, exist_ok=True)
        for f in ("vision.safetensors", "vision_config.json", "phi_bank.safetensors"):
            shutil.copy2(src / f, snap / f)
        logger.info("vision snapshot of %s in %s", src, snap)
        return snap

    def _data_root(self) -> Path | None:
        import os

        from training.synth.synthseg import DEFAULT_ROOT

        if not self.config.label_cases:
            return None
        root = Path(self.config.data_root or os.environ.get("VOXAGENT_SYNTHSEG_DIR") or DEFAULT_ROOT)
        if not (root / "label_maps").is_dir():
            raise FileNotFoundError(f"no SynthSeg label maps under {root}: set data_root (or $VOXAGENT_SYNTHSEG_DIR) "
                                    "to the folder described in README.md, or label_cases=false for MNI-only tasks")
        return root

    def _worker(self) -> EpisodeWorker:
        if not hasattr(self, "_episode_worker"):
            self._episode_worker = EpisodeWorker(self.config.seed, self.next_episode, self.vision_dir,
                                                 self.vision_dir / "phi_bank.safetensors",
                                                 threads=self.config.worker_threads,
                                                 data_root=self.data_root,
                                                 variants=self.config.variants_per_case)
        return self._episode_worker

    def _build_tokenizer(self) -> AgentTokenizer:
        from agent.corpus import seed_corpus

        cfg = self.config
        logger.info("executing %d episodes for the tokenizer corpus", cfg.corpus_episodes)
        while len(self.pool) < cfg.corpus_episodes:
            self._add(self._worker().take(at_least=1))
        texts = [t for e in self.pool for t in e.texts()] + list(seed_corpus(300, cfg.seed))
        tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)
        logger.info("tokenizer trained on %d texts: %d pieces", len(texts), tokenizer.vocab_size)
        return tokenizer

    # ---------------------------------------------------------------- episode pool
    def _add(self, episodes: Sequence[Episode]) -> None:
        for e in episodes:
            if len(self.pool) < self.config.pool_size:
                self.pool.append(e)
            else:
                self.pool[self.rng.randrange(len(self.pool))] = e
        if hasattr(self, "_episode_worker"):
            self.next_episode = self._episode_worker.next_index

    def _load_pool(self) -> None:
        path = self.run_dir / POOL_FILE
        if path.is_file():
            data = torch.load(path, weights_only=False)
            self.pool, self.next_episode = data["pool"], int(data["next_episode"])
            logger.info("loaded %d pooled episodes (next index %d)", len(self.pool), self.next_episode)

    # ---------------------------------------------------------------- override points
    def learning_rate(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.decay_steps))
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))

    def draw_batch(self) -> list[Episode]:
        """Fresh episodes first (the worker's output since the last step), the rest from the pool."""
        cfg = self.config
        need = cfg.fresh_per_step if len(self.pool) >= cfg.min_pool else cfg.min_pool - len(self.pool)
        fresh: list[Episode] = []
        if need or cfg.refresh_pool or len(self.pool) < cfg.pool_size:
            fresh = self._worker().take(at_least=need, at_most=max(need, 8), stop=lambda: self._stop)
            self._add(fresh)
            if self._stop:
                return fresh
        # candidates sorted by length, one random window of them: rows of a batch have similar lengths,
        # so right-padding wastes little (episodes run 60-270 tokens)
        n_rest = max(0, cfg.batch - len(fresh))
        candidates = sorted((self.pool[self.rng.randrange(len(self.pool))] for _ in range(4 * n_rest)),
                            key=self._length)
        start = self.rng.randrange(max(1, len(candidates) - n_rest + 1))
        return (fresh + candidates[start:start + n_rest])[: cfg.batch]

    @staticmethod
    def _length(episode: Episode) -> int:
        """A cheap proxy for an episode's token count (characters of its texts)."""
        return len(episode.prompt) + sum(len(s.code) + sum(len(f.text or "") for f in s.feedback)
                                         for s in episode.steps)

    def loss(self, ce: torch.Tensor, phis: torch.Tensor | None, targets: torch.Tensor | None
             ) -> tuple[torch.Tensor, float, float]:
        if phis is None or targets is None or self.config.phi_lambda == 0:
            return ce, 0.0, float("nan")
        p_loss, cos = phi_loss(phis, targets)
        return ce + self.config.phi_lambda * p_loss, float(p_loss.detach()), float(cos)

    # ---------------------------------------------------------------- one step
    def _sequences(self, episodes: Sequence[Episode]):
        """Training sequences, their phi labels and the episodes kept (those within max_tokens), in order."""
        dim = self.model.cfg.hidden_size
        seqs, labels, kept = [], [], []
        for e in episodes:
            seq = build_training_sequence(self.tokenizer, e.prompt, e.scans, e.steps, dim)
            if len(seq) > self.config.max_tokens:
                continue
            seqs.append(seq)
            kept.append(e)
            ok = e.mod_labels is not None and len(e.mod_labels) == int(seq.mod_positions.numel())
            labels.append(e.mod_labels if ok else None)
        return seqs, labels, kept

    def perturb(self, episodes: Sequence[Episode]) -> list[Episode]:
        """Override point: the episodes as this step trains on them (word noise on some prompts)."""
        if not self.config.prompt_noise:
            return list(episodes)
        noise = PromptNoise(share=self.config.prompt_noise)
        out = []
        for e in episodes:
            prompt = noise.apply(e.prompt, [s.name for s in e.scans], self.rng)
            out.append(e if prompt == e.prompt else dataclasses.replace(e, prompt=prompt, prompt_vector=None))
        return out

    def train_step(self, episodes: Sequence[Episode]) -> StepStats:
        episodes = self.perturb(episodes)
        seqs, labels, kept = self._sequences(episodes)
        if not seqs:
            raise ValueError("every episode of the batch was longer than max_tokens")
        batch = collate_sequences(seqs, self.tokenizer.pad_id)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.model.train()
        prompts = prompt_vectors(self.model, kept)
        states = prompt_state_batch(self.model, self.tokenizer, kept)
        # the LM head only where a code token is predicted (~half the positions): a third of the step's FLOPs
        embeds = self.model.embed(batch.input_ids, batch.enc_vectors, prompts, prompt_states=states)
        hidden = self.model.llama.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                        use_cache=False).last_hidden_state
        gold = batch.labels[:, 1:]
        known = gold != IGNORE_INDEX
        logits = self.model.llama.lm_head(hidden[:, :-1][known])
        ce = F.cross_entropy(logits.float(), gold[known])
        rows, cols, mod_labels = [], [], []
        for r, (seq, lab) in enumerate(zip(seqs, labels)):
            if lab is None:
                continue
            rows += [r] * len(lab)
            cols += seq.mod_positions.tolist()
            mod_labels += lab
        phis = targets = None
        if mod_labels:
            phis = self.model.phi_head(hidden[rows, cols])
            targets = phi_targets(self.bank, mod_labels)
        loss, p_loss, cos = self.loss(ce, phis, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        with torch.no_grad():
            acc = float((logits.argmax(-1) == gold[known]).float().mean())
        self.step += 1
        return StepStats(float(loss.detach()), float(ce.detach()), p_loss, cos, acc)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any]:
        if getattr(self, "_held_out", None) is None or len(self._held_out) != self.config.eval_tasks:
            self._held_out = self._load_held_out()
        result = evaluate_exact_match(self.model, self.tokenizer, self.bank, self.config.eval_tasks,
                                      episodes=self._held_out)
        result["step"] = self.step
        with (self.run_dir / EVAL_FILE).open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        return result

    def _load_held_out(self) -> list[Episode]:
        """The run's held-out episodes, executed once and kept in the run directory."""
        from training.agent_episodes import label_source

        path = self.run_dir / HELD_OUT_FILE
        if path.is_file():
            cached = torch.load(path, weights_only=False)
            if len(cached) == self.config.eval_tasks:
                return cached
        episodes = held_out_episodes(self.config.eval_tasks, self.bank, self._eval_net(),
                                     source=label_source(self.data_root, validation=True))
        torch.save(episodes, path)
        return episodes

    def _eval_net(self):
        if not hasattr(self, "_frozen_net"):
            from training.agent_episodes import load_frozen_vision

            self._frozen_net = load_frozen_vision(self.vision_dir)
        return self._frozen_net

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> None:
        tmp = self.run_dir / (AGENT_DIR + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_agent(self.model, self.tokenizer, tmp)
        final = self.run_dir / AGENT_DIR
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        state = {"step": self.step, "hours": self.hours, "best": self.best, "evals_since_best": self.evals_since_best,
                 "optimizer": self.optimizer.state_dict(), "rng": self.rng.getstate(),
                 "torch_rng": torch.get_rng_state()}
        torch.save(state, self.run_dir / (STATE_FILE + ".tmp"))
        (self.run_dir / (STATE_FILE + ".tmp")).replace(self.run_dir / STATE_FILE)
        torch.save({"pool": self.pool, "next_episode": self.next_episode}, self.run_dir / (POOL_FILE + ".tmp"))
        (self.run_dir / (POOL_FILE + ".tmp")).replace(self.run_dir / POOL_FILE)
        logger.info("checkpoint at step %d (%.2f h) in %s", self.step, self.hours, self.run_dir)

    def _load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        packed = self.run_dir / PACKED_STATE_FILE
        if not path.is_file() and packed.is_file():  # a run packed for git: counters only, a fresh optimizer
            meta = json.loads(packed.read_text())
            self.step, self.hours = int(meta["step"]), float(meta["hours"])
            self.best, self.evals_since_best = float(meta["best"]), int(meta["evals_since_best"])
            logger.info("resumed packed run %s at step %d (%.2f h); optimizer state starts afresh",
                        self.run_dir, self.step, self.hours)
            return
        if not path.is_file():
            return
        state = torch.load(path, weights_only=False)
        self.step, self.hours = int(state["step"]), float(state["hours"])
        self.best, self.evals_since_best = float(state["best"]), int(state["evals_since_best"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed %s at step %d (%.2f h)", self.run_dir, self.step, self.hours)

    def _best_dir(self) -> Path:
        return self.run_dir / "best"

    # ---------------------------------------------------------------- the loop
    def fit(self, hours: float | None = None, max_steps: int | None = None, progress: bool = True) -> None:
        from tqdm import tqdm

        cfg = self.config
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        t_start = time.monotonic()
        last_ckpt = t_start
        hours_at_start = self.hours
        log_path = self.run_dir / LOG_FILE
        new_log = not log_path.is_file()
        bar = tqdm(total=max_steps, initial=0, disable=not progress, desc="agent", unit="step")
        try:
            with log_path.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
                if new_log:
                    writer.writeheader()
                done = 0
                while not self._stop:
                    if hours is not None and time.monotonic() - t_start >= hours * 3600:
                        break
                    if max_steps is not None and done >= max_steps:
                        break
                    t0 = time.monotonic()
                    batch = self.draw_batch()
                    if self._stop:  # a signal while waiting for episodes: save, do not step on a short pool
                        break
                    stats = self.train_step(batch)
                    done += 1
                    self.hours = hours_at_start + (time.monotonic() - t_start) / 3600
                    writer.writerow(dict(step=self.step, hours=round(self.hours, 4),
                                         lr=f"{self.learning_rate(self.step):.3g}", loss=round(stats.loss, 4),
                                         ce=round(stats.ce, 4), phi_loss=round(stats.phi_loss, 4),
                                         phi_cos=round(stats.phi_cos, 4), token_acc=round(stats.token_acc, 4),
                                         pool=len(self.pool), s_per_step=round(time.monotonic() - t0, 3)))
                    bar.update(1)
                    bar.set_postfix(ce=f"{stats.ce:.3f}", cos=f"{stats.phi_cos:.3f}", acc=f"{stats.token_acc:.3f}")
                    if self.step % cfg.eval_every == 0:
                        fh.flush()
                        if self._after_eval(self.evaluate()):
                            break
                    if time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60:
                        fh.flush()
                        self.save()
                        last_ckpt = time.monotonic()
        finally:
            bar.close()
            self.save()
            if hasattr(self, "_episode_worker"):
                self._episode_worker.close()

    def _after_eval(self, result: dict[str, Any]) -> bool:
        """Keep the best weights; True when exact match has stopped rising (the run is done)."""
        score = result["program_exact"]
        logger.info("step %d: held-out program exact %.3f, step exact %.3f, phi cos %s",
                    self.step, score, result["step_exact"], result["phi_cos"])
        if score > self.best:
            self.best, self.evals_since_best = score, 0
            save_agent(self.model, self.tokenizer, self._best_dir())
            (self._best_dir() / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
            return False
        self.evals_since_best += 1
        if self.evals_since_best >= self.config.patience:
            logger.info("held-out exact match has not risen for %d evaluations: stopping", self.evals_since_best)
            return True
        return False

    def _on_signal(self, signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping after this step", signum)
        self._stop = True


# ---------------------------------------------------------------- held-out exact match

def prompt_vectors(model: VoxAgentModel, episodes: Sequence[Episode]) -> torch.Tensor | None:
    """(B, 384) sentence-encoder vectors of the episodes' prompts, cached on the episodes; None when
    the model has no sentence-encoder front end."""
    if not model.cfg.prompt_vector_dim:
        return None
    from agent.prompt_encoder import shared_encoder

    todo = [e for e in episodes if e.prompt_vector is None]
    if todo:
        for e, vec in zip(todo, shared_encoder().encode([e.prompt for e in todo])):
            e.prompt_vector = vec
    return torch.from_numpy(np.stack([e.prompt_vector for e in episodes]))


def prompt_state_batch(model: VoxAgentModel, tokenizer: AgentTokenizer, episodes: Sequence[Episode]
                       ) -> torch.Tensor | None:
    """(B, T0, 384) per-token sentence-encoder states of the episodes' initial states (zero-padded),
    or None when the model reads none. Not cached: prompts change under prompt_noise, and 20,000
    episodes of states would take gigabytes."""
    if not model.cfg.prompt_state_dim:
        return None
    from agent.prompt_encoder import shared_encoder
    from agent.prompt_states import prompt_states

    encoded = shared_encoder().token_states([e.prompt.strip() for e in episodes])
    rows = [prompt_states(tokenizer, e.prompt, e.scans, enc) for e, enc in zip(episodes, encoded)]
    out = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[1]), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


EVAL_SEED_START = 10**9


def held_out_episodes(n: int, bank: PhiBank, net=None, seed: int = 0, source=None) -> list[Episode]:
    """Executed episodes from held-out templates and evaluation seeds (never drawn in training)."""
    from training.errors import TaskDefect
    from training.tasks import FAMILIES, sample_task
    from training.trainer import HELD_OUT_TEMPLATES

    families = list(FAMILIES)
    out: list[Episode] = []
    i = 0
    while len(out) < n and i < 4 * n + 10:
        family = families[i % len(families)]
        templates = FAMILIES[family].template_indices(HELD_OUT_TEMPLATES)
        task_seed = EVAL_SEED_START + 1000 * seed + i
        i += 1
        try:
            sample, case = sample_task(task_seed, family=family, templates=templates or None, labels=source)
            out.append(run_episode(sample, case, bank, net))
        except TaskDefect as exc:
            logger.warning("held-out task %d skipped: %s", task_seed, exc)
    return out


@torch.no_grad()
def decode_step(model: VoxAgentModel, tokenizer: AgentTokenizer, prefix: list[int], enc: torch.Tensor | None,
                max_tokens: int = 256, prompt_vector: torch.Tensor | None = None,
                prompt_states: torch.Tensor | None = None) -> tuple[str, list[torch.Tensor]]:
    """Greedy code of one step after ``prefix`` (a fresh cache each time: evaluation, not serving)."""
    session = model.start_session(min(model.cfg.max_positions, len(prefix) + max_tokens + 2))
    hidden = session.feed(prefix, enc if enc is not None and len(enc) else None, prompt_vector, prompt_states)
    logits = model.next_token_logits(hidden[-1])
    tokens: list[int] = []
    phis: list[torch.Tensor] = []
    stops = {tokenizer.step_id, tokenizer.eos_id}
    for _ in range(max_tokens):
        nxt = int(torch.argmax(logits))
        if nxt in stops:
            break
        tokens.append(nxt)
        hidden = session.feed([nxt])
        if nxt == tokenizer.mod_id:
            phis.append(model.phi_head(hidden[-1]).clone())
        logits = model.next_token_logits(hidden[-1])
    return tokenizer.decode(tokens), phis


@torch.no_grad()
def evaluate_exact_match(model: VoxAgentModel, tokenizer: AgentTokenizer, bank: PhiBank, n: int, net=None,
                         episodes: Sequence[Episode] | None = None, batch: int = 16) -> dict[str, Any]:
    """Held-out templates, each step scored as greedy decoding after the ground-truth steps before it.

    Greedy decoding reproduces a step token for token exactly when, at every code position of the
    teacher-forced sequence, the argmax is the ground-truth token (including the closing ``<STEP>``):
    so one batched forward scores every step, instead of decoding wrong steps to the token limit.
    (A different tokenization of the same text counts as a miss: the figure errs low.)

    program_exact: every step of the program is reproduced; step_exact: per step; phi_cos: mean
    cosine of the phis at the ground truth's ``<MOD>`` positions to the bank's.
    """
    model.eval()
    episodes = list(episodes) if episodes is not None else held_out_episodes(n, bank, net)
    dim = model.cfg.hidden_size
    program_hits = step_hits = steps = 0
    cosines: list[float] = []
    per_family: dict[str, list[int]] = {}
    for at in range(0, len(episodes), batch):
        chunk = episodes[at:at + batch]
        seqs = [build_training_sequence(tokenizer, e.prompt, e.scans, e.steps, dim) for e in chunk]
        coll = collate_sequences(seqs, tokenizer.pad_id)
        out = model(coll.input_ids, enc_vectors=coll.enc_vectors, attention_mask=coll.attention_mask,
                    prompt_vectors=prompt_vectors(model, chunk),
                    prompt_states=prompt_state_batch(model, tokenizer, chunk))
        pred = out.logits[:, :-1].argmax(-1)
        for row, (e, seq) in enumerate(zip(chunk, seqs)):
            gold = seq.labels[1:]
            hit = (pred[row, :len(gold)] == gold) | (gold == IGNORE_INDEX)
            # steps are the runs of labelled positions; each ends with its <STEP>
            ids = seq.input_ids.tolist()
            ok_steps = []
            current = True
            for p in range(1, len(ids)):
                if seq.labels[p] == IGNORE_INDEX:
                    continue
                current &= bool(hit[p - 1])
                if ids[p] == tokenizer.step_id:
                    ok_steps.append(current)
                    current = True
            step_hits += sum(ok_steps)
            steps += len(ok_steps)
            program_hits += all(ok_steps)
            per_family.setdefault(e.family, []).append(int(all(ok_steps)))
            if e.mod_labels is not None and len(e.mod_labels) == int(seq.mod_positions.numel()) and e.mod_labels:
                phis = model.phi_head(out.hidden[row, seq.mod_positions])
                cosines += F.cosine_similarity(phis, phi_targets(bank, e.mod_labels), dim=-1).tolist()
    model.train()
    count = max(1, len(episodes))
    return {"program_exact": program_hits / count, "step_exact": step_hits / max(1, steps),
            "phi_cos": float(np.mean(cosines)) if cosines else None, "episodes": len(episodes),
            "per_family": {k: float(np.mean(v)) for k, v in sorted(per_family.items())}}


# ---------------------------------------------------------------- export and CLI

def export(run_dir: str | Path, out_dir: str | Path, best: bool = True) -> Path:
    """A models/<name> directory: the agent (best by held-out exact match) + the frozen vision snapshot."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    src = run_dir / "best" if best and (run_dir / "best" / "agent.safetensors").is_file() else run_dir / AGENT_DIR
    model, tokenizer = load_agent(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_agent(model, tokenizer, out_dir)
    for f in ("vision.safetensors", "vision_config.json", "phi_bank.safetensors"):
        shutil.copy2(run_dir / VISION_SNAPSHOT / f, out_dir / f)
    write_intent_index(run_dir, out_dir)
    return out_dir


def write_intent_index(run_dir: str | Path, out_dir: str | Path) -> Path | None:
    """``agent.intent_check``'s index of training-template requests, beside the exported agent: the
    run's episode pool where it has one, else requests drawn afresh (``training.intent_requests``, as
    after a fresh clone, where the pool is not committed); None (logged) without a sentence encoder."""
    from agent.functions import default_registry
    from agent.intent_check import INDEX_NAME, IntentIndex
    from agent.prompt_encoder import SentenceEncoderUnavailable, shared_encoder
    from training.intent_requests import template_requests

    try:
        encoder = shared_encoder()
    except SentenceEncoderUnavailable as exc:
        logger.warning("exported without an intent index: %s", exc)
        return None
    path = Path(run_dir) / POOL_FILE
    if path.is_file():
        pool = torch.load(path, weights_only=False)["pool"]
        requests = [(e.family, e.prompt, [s.code for s in e.steps]) for e in pool]
    else:
        logger.info("no episode pool in %s: drawing training-template requests for the intent index", run_dir)
        requests = list(template_requests())
    index = IntentIndex.build(requests, encoder.encode, default_registry())
    return index.save(Path(out_dir) / INDEX_NAME)


def grow(src_run: str | Path, dst_run: str | Path, config: AgentPretrainConfig) -> Path:
    """A new run that continues ``src_run`` with per-token prompt states added (``prompt_states``).

    Why: the comparison that matters is at equal budget from the same weights. The new projection
    starts at zero, so the grown agent first computes exactly what the source did; the source's
    pool, held-out episodes, logs, counters and Adam moments carry over (the new parameters come
    last in ``parameters()`` and start without moments). Besides ``prompt_states`` only the keys a
    resume may change can differ from the source's config.
    """
    from agent.prompt_encoder import SENTENCE_DIM

    src, dst = Path(src_run), Path(dst_run)
    if dst.exists():
        raise FileExistsError(f"{dst} exists: grow writes a new run directory")
    on_src = AgentPretrainConfig.from_json(src / "config.json")
    if on_src.prompt_states or not config.prompt_states:
        raise ValueError("grow adds prompt_states: the source must have it off and the new config on")
    changed = {f.name for f in dataclasses.fields(AgentPretrainConfig)
               if getattr(config, f.name) != getattr(on_src, f.name)}
    fixed = changed - RESUMABLE_KEYS - {"prompt_states"}
    if fixed:
        raise ValueError(f"the grown run may change only prompt_states and {sorted(RESUMABLE_KEYS)}, "
                         f"not {sorted(fixed)}")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(AGENT_DIR, AGENT_DIR + ".tmp", "best", STATE_FILE))
    config.to_json(dst / "config.json")
    with (dst / "config_history.jsonl").open("a") as fh:
        fh.write(json.dumps({"grown_from": str(src)} | {k: [getattr(on_src, k), getattr(config, k)]
                                                         for k in sorted(changed)}) + "\n")
    old, tokenizer = load_agent(src / AGENT_DIR)
    model = VoxAgentModel(dataclasses.replace(old.cfg, prompt_state_dim=SENTENCE_DIM))
    missing, unexpected = model.load_state_dict(old.state_dict(), strict=False)
    new_names = [n for n, _ in model.named_parameters()][-len(missing):]
    if unexpected or not missing or sorted(missing) != sorted(new_names) or \
            not all(n.startswith("prompt_state_proj.") for n in missing):
        raise RuntimeError(f"growing {src}: unexpected weight keys (missing {missing}, unexpected {unexpected})")
    save_agent(model, tokenizer, dst / AGENT_DIR)
    if (src / STATE_FILE).is_file():
        state = torch.load(src / STATE_FILE, weights_only=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      betas=(0.9, 0.98))
        grown = optimizer.state_dict()
        old_group = state["optimizer"]["param_groups"][0]
        grown["param_groups"][0].update({k: v for k, v in old_group.items() if k != "params"})
        grown["state"] = state["optimizer"]["state"]
        state["optimizer"] = grown
        torch.save(state, dst / STATE_FILE)
    logger.info("grew %s into %s with per-token prompt states", src, dst)
    return dst


def pack(run_dir: str | Path, out_dir: str | Path) -> Path:
    """What a later session needs to resume the run, small enough for git: the agent's weights in
    fp16, its tokenizer and config, the vision snapshot, logs and step counters. Left out: the
    optimizer state (twice the weights) and the episode pools, which the worker rebuilds."""
    from safetensors.torch import load_file, save_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = torch.load(run_dir / STATE_FILE, weights_only=False)
    (out_dir / AGENT_DIR).mkdir(parents=True, exist_ok=True)
    for name in ("agent_config.json", "tokenizer.model"):
        shutil.copy2(run_dir / AGENT_DIR / name, out_dir / AGENT_DIR / name)
    weights = load_file(str(run_dir / AGENT_DIR / "agent.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              str(out_dir / AGENT_DIR / "agent.safetensors"), metadata={"format_version": "1"})
    shutil.copytree(run_dir / VISION_SNAPSHOT, out_dir / VISION_SNAPSHOT, dirs_exist_ok=True)
    for name in ("config.json", LOG_FILE, EVAL_FILE, "config_history.jsonl"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    meta = {k: state[k] for k in ("step", "hours", "best", "evals_since_best")}
    (out_dir / PACKED_STATE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.agent_pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory (created, or resumed)")
    parser.add_argument("--vision", help="vision run or model directory to freeze (new runs only)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="named configuration for a new run")
    parser.add_argument("--config", help="JSON run file (AgentPretrainConfig fields)")
    parser.add_argument("--hours", type=float, help="stop after this long (default: until exact match stops rising)")
    parser.add_argument("--steps", type=int, help="stop after this many steps")
    parser.add_argument("--export", metavar="DIR", help="write the run's best agent + vision to DIR and exit")
    parser.add_argument("--evaluate", action="store_true", help="held-out exact match of the current agent, then exit")
    parser.add_argument("--pack", metavar="DIR", help="write what a resume needs, small enough for git, to DIR")
    parser.add_argument("--grow-from", metavar="RUN",
                        help="start --run as RUN continued with per-token prompt states (--config/--variant "
                             "give the new run's settings), then train it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.export:
        print(export(args.run, args.export))  # noqa: T201 - CLI output
        return 0
    if args.pack:
        print(pack(args.run, args.pack))  # noqa: T201 - CLI output
        return 0
    config = None
    if args.config:
        config = AgentPretrainConfig.from_json(Path(args.config))
    elif args.variant:
        config = VARIANTS[args.variant]
    if args.grow_from:
        if config is None:
            parser.error("--grow-from needs --config or --variant for the new run")
        grow(args.grow_from, args.run, config)
    trainer = AgentPretrainer(args.run, config, args.vision)
    if args.evaluate:
        print(json.dumps(trainer.evaluate(), indent=2))  # noqa: T201 - CLI output
        return 0
    trainer.fit(hours=args.hours, max_steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
