"""A differentiable `VisionClient` for teacher forcing: the real `VisionNet`, with gradients, inside the sandbox.

The sandbox only sees numpy: encode returns a handle whose `.vectors` are a detached copy, generate
returns a probability `Volume`. Behind that the client keeps what the trainer needs:

* each encoding's vectors *with* grad (`vectors_for(array)` maps a read-back array to its tensor),
  so read-back embeddings carry gradients from the LM loss into the encoder;
* each generate's logits (on the RAS-conformed input grid) with the ground-truth mask of the target
  that the ground-truth program asked for, so the trainer adds the soft Dice term.

Which target a generate call is for: the client gets only phi (the protocol has no target), so it
takes targets from the task's recorded `generate_calls`, in code order; the sandbox executes
ground-truth code in that order.

What generate hands back to the sandbox (and so which values later steps read): the ground-truth
mask (``feedback="truth"``, the default) or the network's own probabilities (``"predicted"``). Truth
keeps read texts consistent with the answers the ground-truth code writes from them; early in
training predicted masks would teach the agent to ignore what it reads.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.synth import Case
from vision.model import Encoding, VisionNet
from vision.preprocess import NetworkInput, network_input
from voxel_ops import Volume, conform_ras, unconform


@dataclass(frozen=True, eq=False)
class TrainHandle:
    """Shaped like `vision.engine.EncodingHandle` (key, job_id, stream_count, vectors)."""

    key: str
    job_id: str
    stream_count: int
    vectors: np.ndarray  # detached float32 copy (S, d): what the sandbox feeds back
    scans: tuple[str, ...]


@dataclass
class GenerateRecord:
    """One generate() during a trajectory: logits with grad and the truth they are scored against."""

    scan: str
    target: str
    logits: torch.Tensor  # (1, 1, X, Y, Z) on the RAS-conformed grid of the scan
    truth: torch.Tensor  # same shape, 0/1 float


@dataclass
class _Entry:
    encoding: Encoding
    vectors: torch.Tensor  # (S, d) with grad
    array: np.ndarray  # the detached copy handed to the sandbox
    transforms: list[Any] = field(default_factory=list)


class TrainingVisionClient:
    """`VisionClient` over a trainable `VisionNet` for one synthesized case."""

    def __init__(self, net: VisionNet, case: Case, generate_calls: Sequence[tuple[str, str]],
                 feedback: str = "truth", joint: bool = True) -> None:
        if feedback not in ("truth", "predicted"):
            raise ValueError("feedback must be 'truth' or 'predicted'")
        self.net = net
        self.case = case
        self.feedback = feedback
        # joint=False: language-only pass. Encodings are computed without grad (the agent still reads
        # real vectors) and generate() returns the truth without running the generator at all.
        self.joint = joint
        self._pending = list(generate_calls)
        self._entries: dict[str, _Entry] = {}
        self.generates: list[GenerateRecord] = []
        self._inputs: dict[str, NetworkInput] = {}

    # -- helpers --------------------------------------------------------------------------
    def _scan_name(self, volume: Volume) -> str:
        return self.case.scan_name(volume)

    def _input(self, name: str) -> NetworkInput:
        """Conformed, normalised tensor of a case scan, exactly as `VisionEngine.encode` prepares it."""
        if name not in self._inputs:
            self._inputs[name] = network_input(self.case.scans[name], self.net.config, self.net.device)
        return self._inputs[name]

    def vectors_for(self, array: np.ndarray) -> torch.Tensor:
        """The grad-carrying encoding vectors behind an array the sandbox fed back."""
        for entry in self._entries.values():
            if entry.array is array:
                return entry.vectors
        for entry in self._entries.values():
            if entry.array.shape == np.shape(array) and np.array_equal(entry.array, array):
                return entry.vectors
        raise KeyError("these vectors did not come from this client")

    # -- VisionClient protocol ------------------------------------------------------------
    def encode(self, volumes: Sequence[Volume], phis: Sequence[Any], job_id: str) -> TrainHandle:
        names = tuple(self._scan_name(v) for v in volumes)
        inputs = [self._input(n) for n in names]
        phi_t = [torch.as_tensor(p, dtype=torch.float32).reshape(-1).to(self.net.device) for p in phis]
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            enc = self.net.encode([i.tensor for i in inputs], [i.spacing for i in inputs],
                                  [p if self.joint else p.detach() for p in phi_t])
        key = hashlib.sha1(f"{job_id}|{len(self._entries)}|{'|'.join(names)}".encode()).hexdigest()[:16]
        array = enc.vectors.detach().float().cpu().numpy().astype(np.float32)
        entry = _Entry(enc, enc.vectors, array, [i.transform for i in inputs])
        self._entries[key] = entry
        return TrainHandle(key, job_id, len(names), array, names)

    def generate(self, handle: TrainHandle, stream: int, phi: Any) -> Volume:
        if not self._pending:
            raise RuntimeError("more generate() calls than the ground-truth program records")
        scan, target = self._pending.pop(0)
        name = handle.scans[stream]
        if name != scan:
            raise RuntimeError(f"generate() on scan {name!r}, but the program recorded {scan!r}")
        entry = self._entries[handle.key]
        if not self.joint:
            truth_vol = self.case.mask(target, scan)
            return truth_vol.with_array(truth_vol.array.astype(np.float32), modality="probability")
        phi_t = torch.as_tensor(phi, dtype=torch.float32).reshape(-1).to(self.net.device)
        logits = self.net.generate(entry.encoding, stream, phi_t)
        truth_vol = self.case.mask(target, scan)
        truth_ras, _ = conform_ras(truth_vol)
        truth = torch.from_numpy(np.ascontiguousarray(truth_ras.array, dtype=np.float32))[None, None]
        self.generates.append(GenerateRecord(scan, target, logits, truth.to(logits.device)))
        if self.feedback == "truth":
            return truth_vol.with_array(truth_vol.array.astype(np.float32), modality="probability")
        probs = torch.sigmoid(logits.detach().float())[0, 0].cpu().numpy()
        transform = entry.transforms[stream]
        return unconform(Volume(probs, transform.ras_affine, self.case.scans[scan].meta), transform)

    def release(self, job_id: str) -> None:
        return None
