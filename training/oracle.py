"""`OracleVisionClient`: a vision client that answers with a synthesized case's true masks.

Scaffolding for the training pipeline (not a model): it lets ground-truth programs run in the real
sandbox before any network is trained, so tests, the trainer (execution of ground-truth code) and the
evaluation (upper bound, program checks) can compare what a program computes with the recorded
truth. `generate` has no target argument in the `VisionClient` protocol, only phi; the oracle
recovers the target by matching phi against the phi bank the sandbox uses (exact for bank phis,
nearest vector otherwise).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.phi_bank import PhiBank
from training.synth import Case
from voxel_ops import Volume


@dataclass(frozen=True, eq=False)
class OracleHandle:
    """Shaped like `vision.engine.EncodingHandle`, plus the case scan behind each stream."""

    key: str
    job_id: str
    stream_count: int
    vectors: np.ndarray  # (S, d): zeros, the oracle has no features to show
    scans: tuple[str, ...]


class OracleVisionClient:
    """Returns `case.mask(target, scan)` as probabilities for every generate() call."""

    def __init__(self, case: Case, phi_bank: PhiBank | None = None, encoding_dim: int = 256) -> None:
        self.case = case
        self.phi_bank = phi_bank or PhiBank.default()
        self.encoding_dim = encoding_dim
        self._targets = list(self.phi_bank.targets)
        self._table = np.stack([np.asarray(self.phi_bank.generate_phi(t), dtype=np.float32) for t in self._targets])
        self.calls: list[tuple[str, str]] = []  # (scan, target) of every generate, for inspection

    def _scan_name(self, volume: Volume) -> str:
        return self.case.scan_name(volume)

    def target_of(self, phi: Any) -> str:
        vec = np.asarray(phi.detach().cpu().numpy() if hasattr(phi, "detach") else phi, dtype=np.float32).ravel()
        return self._targets[int(np.argmin(np.linalg.norm(self._table - vec, axis=1)))]

    def encode(self, volumes: Sequence[Volume], phis: Sequence[Any], job_id: str) -> OracleHandle:
        names = tuple(self._scan_name(v) for v in volumes)
        key = hashlib.sha1(("|".join(names) + job_id).encode()).hexdigest()[:16]
        return OracleHandle(key, job_id, len(names), np.zeros((len(names), self.encoding_dim), np.float32), names)

    def generate(self, handle: OracleHandle, stream: int, phi: Any) -> Volume:
        scan = handle.scans[stream]
        target = self.target_of(phi)
        self.calls.append((scan, target))
        mask = self.case.mask(target, scan)
        return mask.with_array(mask.array.astype(np.float32), modality="probability")

    def release(self, job_id: str) -> None:
        return None
