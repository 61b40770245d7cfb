"""Executed training episodes for the agent on its own: prompt, ground-truth steps and what they read.

An episode does not depend on the agent's weights: the ground-truth program runs in the real
`Sandbox` over an oracle vision client that answers every ``generate`` with the case's true mask
(values read back are the truth, as in `training.trainer`'s ``feedback="truth"``) and every
``encode`` with the vectors of a *frozen* vision encoder, so the agent learns to read the same
kind of vectors it gets at inference. Episodes are therefore made once, in a worker process,
and reused many times from a pool (`training.agent_pretrain`), which is what makes a language
step cost milliseconds instead of the seconds a joint step costs.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import queue
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.phi_bank import PhiBank
from agent.sandbox import Sandbox
from agent.sandbox.limits import SandboxLimits
from agent.state import ScanInfo, StepRecord, scan_infos_from_volumes
from training.errors import TaskDefect
from training.oracle import OracleHandle, OracleVisionClient
from training.phi_probe import mod_labels
from training.synth import Case
from voxel_ops import Volume

logger = logging.getLogger(__name__)


class EpisodeError(TaskDefect, RuntimeError):
    """A ground-truth step failed in the sandbox: the task is broken, not the model."""


@dataclass
class Episode:
    """Everything a teacher-forced language step needs, independent of tokenizer and weights."""

    family: str
    seed: int
    template_index: int
    prompt: str
    scans: list[ScanInfo]
    steps: list[StepRecord]
    mod_labels: list[str] | None  # "generate:<target>" / "encode:<modality>" per <MOD>, in order
    answer: str | None = None
    expected: dict[str, Any] = field(default_factory=dict)
    prompt_vector: np.ndarray | None = None  # the sentence encoder's view, filled on first use

    def texts(self) -> Iterator[str]:
        """Texts for the tokenizer corpus: the state, the code and every read value."""
        from agent.state import initial_state_text

        yield initial_state_text(self.prompt, self.scans)
        for step in self.steps:
            yield step.code
            for fb in step.feedback:
                if fb.text:
                    yield fb.text + "\n"


class FrozenEncoderOracle(OracleVisionClient):
    """Oracle masks for ``generate``; a frozen vision network's vectors for ``encode``."""

    def __init__(self, case: Case, phi_bank: PhiBank, net: Any | None, cache: dict | None = None) -> None:
        super().__init__(case, phi_bank, encoding_dim=256 if net is None else net.config.encoding_dim)
        self.net = net
        self.cache = cache if cache is not None else {}  # shared by the tasks of one case

    @torch.no_grad()
    def encode(self, volumes: Sequence[Volume], phis: Sequence[Any], job_id: str) -> OracleHandle:
        handle = super().encode(volumes, phis, job_id)
        if self.net is None:
            return handle
        from vision.preprocess import network_input

        # renamed scans share their arrays: key by the data, not the name
        key = tuple((v.array.__array_interface__["data"][0], v.array.shape, np.asarray(p, np.float32).tobytes())
                    for v, p in zip(volumes, phis))
        if key not in self.cache:
            inputs = [network_input(v, self.net.config, self.net.device) for v in volumes]
            phi_t = [torch.as_tensor(np.asarray(p), dtype=torch.float32).reshape(-1) for p in phis]
            enc = self.net.encode([i.tensor for i in inputs], [i.spacing for i in inputs], phi_t)
            self.cache[key] = enc.vectors.float().cpu().numpy().astype(np.float32)
        vectors = self.cache[key]
        return OracleHandle(handle.key, handle.job_id, handle.stream_count, vectors, handle.scans)


def _limits() -> SandboxLimits:
    return SandboxLimits(use_alarm=False, call_timeout_s=600.0, job_timeout_s=1200.0)


def run_episode(sample: Any, case: Case, phi_bank: PhiBank, net: Any | None = None,
                cache: dict | None = None) -> Episode:
    """Execute ``sample``'s ground-truth steps on ``case``; a failing step raises `EpisodeError`.

    ``cache`` keeps the frozen encoder's vectors between tasks on the same case."""
    client = FrozenEncoderOracle(case, phi_bank, net, cache)
    job = hashlib.sha1(f"episode-{sample.seed}".encode()).hexdigest()[:12]
    sandbox = Sandbox(case.scans, client=client, limits=_limits(), phi_bank=phi_bank, job_id=job)
    modality_of = {name: case.modality(name) for name in case.scans}
    steps: list[StepRecord] = []
    labels: list[str] | None = []
    for i, code in enumerate(sample.steps):
        outcome = sandbox.execute_step(code)
        if outcome.error:
            raise EpisodeError(f"{sample.family} seed {sample.seed} step {i}: {outcome.error}")
        step_labels = mod_labels(code, modality_of)
        labels = labels + step_labels if labels is not None and step_labels is not None else None
        steps.append(StepRecord(code=code, feedback=list(outcome.feedback)))
    return Episode(family=sample.family, seed=int(sample.seed), template_index=int(sample.template_index),
                   prompt=sample.prompt, scans=scan_infos_from_volumes(case.scans), steps=steps, mod_labels=labels,
                   answer=sample.answer, expected=dict(sample.expected))


def load_frozen_vision(vision_dir: str | Path | None) -> Any | None:
    """The frozen encoder episodes read vectors from (None: zero vectors, as the oracle has)."""
    if vision_dir is None:
        return None
    from vision.checkpoint import load_vision

    net = load_vision(Path(vision_dir))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


RENAME_PROB = 0.3  # share of training episodes whose scans get neutral names (training/tasks/rename.py)


def label_source(data_root: str | Path | None, validation: bool = False) -> Any | None:
    """Real anatomy for the anatomy families (``training.tasks.LabelCaseSource``); None = MNI cases only.

    ``validation`` picks the held-out subjects (training_seg_17/18); a folder without them (the test
    phantom) falls back to its training subjects, with a warning, so held-out numbers from it are not
    held out.
    """
    if data_root is None:
        return None
    from training.synth.synthseg import split_subjects
    from training.tasks import LabelCaseSource

    train, val = split_subjects(data_root)
    if validation and not val:
        logger.warning("%s has no validation subjects: held-out episodes use training anatomy", data_root)
    return LabelCaseSource(data_root, subjects=(val or train) if validation else train)


def training_episodes(run_seed: int, index: int, phi_bank: PhiBank, net: Any | None,
                      source: Any | None = None, variants: int = 1) -> list[Episode]:
    """The index-th case of a run and ``variants`` tasks on it: training templates only, some scans
    renamed; a task whose program fails is left out (logged), the others are kept."""
    from training.tasks import sample_task_variants
    from training.tasks.rename import rename_scans
    from training.trainer import TRAIN_TEMPLATES, train_task_seed

    seed = train_task_seed(run_seed, index)
    cache: dict = {}
    out: list[Episode] = []
    for j, (sample, case) in enumerate(sample_task_variants(seed, variants, templates=TRAIN_TEMPLATES, labels=source)):
        rng = np.random.default_rng([seed, 31] if j == 0 else [seed, 31, j])
        if rng.random() < RENAME_PROB:
            sample, case = rename_scans(sample, case, rng)
        try:
            out.append(run_episode(sample, case, phi_bank, net, cache))
        except EpisodeError as exc:
            if j == 0:
                raise
            logger.warning("variant %d of case %d skipped: %s", j, index, exc)
    return out


def training_episode(run_seed: int, index: int, phi_bank: PhiBank, net: Any | None,
                     source: Any | None = None) -> Episode:
    """The index-th training episode of a run (the first task on its case)."""
    return training_episodes(run_seed, index, phi_bank, net, source, variants=1)[0]


def _produce(out: Any, run_seed: int, start: int, vision_dir: str | None, bank_path: str, threads: int,
             data_root: str | None, variants: int) -> None:
    """Worker loop: episodes in index order into ``out`` forever (skipping broken tasks, logged)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us after saving
    torch.set_num_threads(threads)
    bank = PhiBank.load(bank_path)
    net = load_frozen_vision(vision_dir)
    source = label_source(data_root)
    index = start
    while True:
        try:
            episodes = training_episodes(run_seed, index, bank, net, source, variants)
        except TaskDefect as exc:
            logger.warning("episode %d skipped: %s", index, exc)
            episodes = []
        out.put((index, episodes))
        index += 1


class EpisodeWorker:
    """A process that keeps a bounded queue of fresh episodes filled while the agent trains."""

    def __init__(self, run_seed: int, start: int, vision_dir: str | Path | None, bank_path: str | Path,
                 threads: int = 1, capacity: int = 256, data_root: str | Path | None = None,
                 variants: int = 1) -> None:
        ctx = mp.get_context("spawn")  # no forked torch thread pools
        self.queue: Any = ctx.Queue(maxsize=capacity)
        self.next_index = start
        self.process = ctx.Process(target=_produce, daemon=True,
                                   args=(self.queue, run_seed, start,
                                         None if vision_dir is None else str(vision_dir), str(bank_path), threads,
                                         None if data_root is None else str(data_root), variants))
        self.process.start()

    def take(self, at_least: int = 0, at_most: int = 64, timeout_s: float = 600.0,
             stop: Callable[[], bool] | None = None) -> list[Episode]:
        """Whatever is ready (up to ``at_most``), waiting only until ``at_least`` have arrived, or
        until ``stop()`` says to give up waiting (a signal while the pool fills: minutes otherwise)."""
        got: list[Episode] = []
        waited = 0.0
        while len(got) < at_most:
            block = len(got) < at_least
            if block and stop is not None and stop():
                break
            try:
                wait = min(timeout_s - waited, 1.0) if stop is not None else timeout_s
                index, episodes = self.queue.get(block=block, timeout=wait if block else None)
                waited = 0.0
            except queue.Empty:
                if block and stop is not None and waited + wait < timeout_s:
                    waited += wait
                    continue
                if len(got) < at_least:
                    raise RuntimeError(f"the episode worker produced nothing for {timeout_s:g} s") from None
                break
            self.next_index = index + 1
            got.extend(episodes)
        return got

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)


__all__ = ["Episode", "EpisodeError", "EpisodeWorker", "FrozenEncoderOracle", "label_source", "load_frozen_vision",
           "run_episode", "training_episode", "training_episodes"]
