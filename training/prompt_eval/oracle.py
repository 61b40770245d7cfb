"""Truth masks in place of the vision network's: language judged apart from vision.

Issue 20 asks for task success "under teacher-forced masks too": with the vision network's masks a
wrong number may be the agent's fault or the network's. `OracleVisionClient` keeps the real
encoder (the agent still reads real encoding features at ``read(e)``) but answers every
``generate`` with the case's truth mask of the target the agent's phi points to: the bank entry
nearest in cosine. A phi that points at no target clearly (cosine below ``min_cosine``) gets an
empty mask, so an agent whose phis are wrong still fails.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent.phi_bank import PhiBank, phi_array
from vision.targets import UnknownTargetError, canonical_target, target_mask
from voxel_ops import Volume

logger = logging.getLogger(__name__)


class OracleVisionClient:
    """A `VisionClient` that encodes for real and generates the truth of the nearest bank target."""

    def __init__(self, inner: Any, bank: PhiBank, scans: dict[str, Volume],
                 truth: Callable[[str, str], np.ndarray], min_cosine: float = 0.5) -> None:
        """``truth(scan name, bank target)``: the 0/1 truth mask of that target on that scan's grid."""
        self.inner = inner
        self.scans = scans
        self.truth = truth
        self.min_cosine = min_cosine
        self.names = list(bank.targets)
        table = np.stack([bank.generate_phi(t) for t in self.names]).astype(np.float64)
        self.table = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
        self._streams: dict[int, list[Volume]] = {}
        self.calls: list[tuple[str, float]] = []  # (target, cosine) of every generate, for the report

    def encode(self, volumes: Sequence[Volume], phis: Sequence[Any], job_id: str) -> Any:
        handle = self.inner.encode(volumes, phis, job_id)
        self._streams[id(handle)] = list(volumes)
        return handle

    def nearest_target(self, phi: Any) -> tuple[str, float]:
        """(bank target, cosine) nearest to ``phi``."""
        vec = phi_array(phi).astype(np.float64)
        cos = self.table @ (vec / max(float(np.linalg.norm(vec)), 1e-12))
        best = int(np.argmax(cos))
        return self.names[best], float(cos[best])

    def _scan_name(self, volume: Volume) -> str:
        for name, scan in self.scans.items():
            if scan is volume:
                return name
        for name, scan in self.scans.items():
            if scan.shape == volume.shape and np.allclose(scan.affine, volume.affine) \
                    and np.array_equal(scan.array, volume.array):
                return name
        raise KeyError("the oracle was asked to generate on a volume that is not one of the case's scans")

    def generate(self, handle: Any, stream: int, phi: Any) -> Volume:
        volume = self._streams[id(handle)][stream]
        target, cosine = self.nearest_target(phi)
        self.calls.append((target, cosine))
        scan = self._scan_name(volume)
        empty = volume.with_array(np.zeros(volume.shape, dtype=np.float32))
        if cosine < self.min_cosine:
            logger.info("oracle: phi points at no target (best %s, cosine %.2f): empty mask", target, cosine)
            return empty
        try:
            return volume.with_array(np.asarray(self.truth(scan, target), dtype=np.float32))
        except UnknownTargetError:  # a bank entry the target table has no labels for (old banks)
            logger.info("oracle: bank target %s has no truth labels: empty mask", target)
            return empty

    def release(self, job_id: str) -> None:
        self._streams.clear()
        self.inner.release(job_id)


def label_truth(labels: dict[str, np.ndarray]) -> Callable[[str, str], np.ndarray]:
    """Truth from segmentation-label arrays per scan (`vision.targets` names)."""
    return lambda scan, target: target_mask(np.asarray(labels[scan]), canonical_target(target))
