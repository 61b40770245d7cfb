"""How the function library reaches the vision network: in-process, or through the `vision` queue.

The library only needs three calls; which process holds the model is the client's business.
`LocalVisionClient` wraps a resident `vision.engine.VisionEngine`; a Celery client (service
package) implements the same protocol by sending artifact references to queue `vision`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from voxel_ops import Volume


@runtime_checkable
class VisionClient(Protocol):
    def encode(self, volumes: Sequence[Volume], phis: Sequence[Any], job_id: str) -> Any:
        """Encode volumes (one phi each); returns an EncodingHandle with `.vectors` (S, d)."""

    def generate(self, handle: Any, stream: int, phi: Any) -> Volume:
        """Probabilities in [0, 1] on the grid and affine of stream `stream`'s input volume."""

    def release(self, job_id: str) -> None:
        """Forget every encoding of the job."""


class LocalVisionClient:
    """In-process client: calls a VisionEngine directly (CLI, tests, the embedded service)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def encode(self, volumes: Sequence[Volume], phis: Sequence[Any], job_id: str) -> Any:
        return self.engine.encode(list(volumes), [_as_array(p) for p in phis], job_id=job_id)

    def generate(self, handle: Any, stream: int, phi: Any) -> Volume:
        return self.engine.generate(handle, stream, _as_array(phi))

    def release(self, job_id: str) -> None:
        self.engine.release(job_id)


def _as_array(phi: Any) -> Any:
    """The engine takes tensors and arrays alike: a tensor from the agent goes as it is, detached
    (no numpy round trip; the engine moves it to its device), anything else as float32 numbers."""
    if hasattr(phi, "detach"):
        return phi.detach()
    return np.asarray(phi, dtype=np.float32)
