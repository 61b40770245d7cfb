"""The resident vision service: load weights once, encode scans, generate masks on their own grid.

The engine speaks ``Volume`` (any orientation) on the outside and tensors on the inside: scans
are conformed to RAS by axis permutation/flip only (no resampling), normalised as the network was
trained (`vision.preprocess`), encoded once per job and kept in a memory-capped LRU cache until the
job releases them. Generated masks are mapped back onto the exact grid and affine the scan arrived
with. Concurrent generate calls go through one batcher thread; by default each still runs as its
own forward pass, so a mask never depends on which other requests arrived at the same moment
(``stack_batches=True`` stacks calls with identical grids on the batch axis: more throughput on a
GPU, but batch-size-dependent floats, see ``_generate_group``).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vision.batching import MicroBatcher
from vision.cache import CacheEntry, EncodingCache, EncodingNotCached
from vision.checkpoint import load_vision, resolve_paths
from vision.config import VisionConfig, get_config
from vision.model import Encoding, VisionNet, build_vision_net
from vision.preprocess import network_input
from voxel_ops import Volume, unconform

log = logging.getLogger(__name__)

__all__ = ["VisionEngine", "EncodingHandle", "EncodingNotCached"]


@dataclass(frozen=True, eq=False)
class EncodingHandle:
    """What a caller holds after ``encode``: a cache key plus the interpretable vectors."""

    key: str
    job_id: str
    stream_count: int
    vectors: np.ndarray  # (S, d) float32

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncodingHandle) and (self.key, self.job_id) == (other.key, other.job_id)

    def __hash__(self) -> int:
        return hash((self.key, self.job_id))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class VisionEngine:
    """Serve ``encode``/``generate``/``release`` over one resident :class:`VisionNet`."""

    def __init__(
        self,
        preset: str | VisionConfig = "tiny",
        weights: Path | str | None = None,
        device: str | None = None,
        cache_mb: float = 2048,
        batch_window_ms: float = 3.0,
        max_batch: int = 8,
        stack_batches: bool = False,
    ) -> None:
        self.device = torch.device(device or default_device())
        if weights is not None:
            self.net: VisionNet = load_vision(weights, device=self.device)
        else:
            # Untrained but reproducible: every engine built without weights has the same network.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.net = build_vision_net(get_config(preset))
            log.warning("vision engine %s runs with random weights (no checkpoint given)", self.config.name)
        self.net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.stack_batches = stack_batches
        self.cache = EncodingCache(int(cache_mb * 2**20))
        self._batcher = MicroBatcher(self._generate_group, window_s=batch_window_ms / 1000.0, max_batch=max_batch)
        log.info("vision engine ready: preset=%s device=%s cache=%d MB", self.config.name, self.device, cache_mb)

    @classmethod
    def load(cls, path: Path | str, **kwargs) -> "VisionEngine":
        """Engine from a checkpoint directory (``vision.safetensors`` + ``vision_config.json``)."""
        weights, _ = resolve_paths(path)
        return cls(weights=weights, **kwargs)

    @property
    def config(self) -> VisionConfig:
        return self.net.config

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the groups of concurrent generate calls collected so far (>1: calls arrived
        together; they share one forward pass only with ``stack_batches``)."""
        return self._batcher.batch_sizes

    def close(self) -> None:
        self._batcher.close()

    # -- encode ---------------------------------------------------------------------------
    def _phi(self, phi: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(phi, dtype=np.float32) if not torch.is_tensor(phi) else phi)
        t = t.detach().to(self.device, torch.float32).reshape(-1)
        if t.numel() != self.config.phi_dim:
            raise ValueError(f"phi must have {self.config.phi_dim} values, got {t.numel()}")
        return t

    def encode(
        self,
        volumes: Sequence[Volume],
        phis: Sequence[np.ndarray | torch.Tensor],
        job_id: str = "default",
    ) -> EncodingHandle:
        """Encode S scans together (they interact); cache the result under a new key for the job."""
        if not volumes:
            raise ValueError("encode needs at least one volume")
        if len(volumes) != len(phis):
            raise ValueError(f"got {len(volumes)} volumes but {len(phis)} phis")
        inputs = [network_input(v, self.config, self.device) for v in volumes]
        tensors, spacings = [i.tensor for i in inputs], [i.spacing for i in inputs]
        phi_list = [self._phi(p) for p in phis]
        with torch.inference_mode():
            enc = self.net.encode(tensors, spacings, phi_list)
        key = uuid.uuid4().hex
        extra = {"transforms": [i.transform for i in inputs], "metas": [v.meta for v in volumes]}
        self.cache.put(CacheEntry(key, job_id, enc, enc.nbytes, extra))
        vectors = enc.vectors.float().cpu().numpy()
        log.info("encoded %d stream(s) for job %s: %.1f MB cached", len(volumes), job_id, enc.nbytes / 2**20)
        return EncodingHandle(key=key, job_id=job_id, stream_count=len(volumes), vectors=vectors)

    # -- generate -------------------------------------------------------------------------
    def generate(self, handle: EncodingHandle, stream: int, phi: np.ndarray | torch.Tensor) -> Volume:
        """Probabilities in [0, 1] for one stream, on that scan's original grid and affine."""
        if not 0 <= int(stream) < handle.stream_count:
            raise IndexError(f"stream {stream} out of range: the encoding holds {handle.stream_count} stream(s)")
        entry = self.cache.get(handle.key)
        enc: Encoding = entry.value
        stream = int(stream)
        plan = enc.streams[stream].plan
        probs = self._batcher.submit(plan, (enc, stream, self._phi(phi)))
        transform = entry.extra["transforms"][stream]
        ras = Volume(probs, transform.ras_affine, entry.extra["metas"][stream])
        return unconform(ras, transform)

    def _generate_group(self, payloads: Sequence[tuple[Encoding, int, torch.Tensor]]) -> list[np.ndarray]:
        """Requests whose streams share a plan: one forward pass each, or one stacked pass.

        Per request by default. Stacked on the batch axis, the same request gave other floats with
        other company (a batch of 3 differs from a batch of 1, and the members of one batch from
        each other: the convolution library blocks the batch differently, and the phi shift is
        folded into the bias only at batch size 1), which moved voxels across 0.5 and changed
        volumes with the load of the server. Determinism is the contract; stacking is an opt-in.
        """
        if not self.stack_batches and len(payloads) > 1:
            return [self._generate_group([payload])[0] for payload in payloads]
        levels = len(payloads[0][0].streams[payloads[0][1]].skips)
        skips = [
            torch.cat([enc.streams[s].skips[n] for enc, s, _ in payloads], 0) if len(payloads) > 1
            else payloads[0][0].streams[payloads[0][1]].skips[n]
            for n in range(levels)
        ]
        plan = payloads[0][0].streams[payloads[0][1]].plan
        phis = torch.stack([phi for _, _, phi in payloads])
        with torch.inference_mode():
            logits = self.net.decode([skips], [plan], [phis])[0]
            probs = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        return [probs[i] for i in range(len(payloads))]

    # -- release --------------------------------------------------------------------------
    def release(self, job_id: str) -> None:
        """Forget every encoding of a job (its handles stop working)."""
        dropped = self.cache.release(job_id)
        log.info("released %d encoding(s) of job %s", dropped, job_id)
