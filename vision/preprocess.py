"""How a scan becomes network input, in one place.

Serving (`VisionEngine.encode`), training and the single-task baselines must feed the network
exactly the same array for the same scan; a second copy of these steps would drift (a different
clip, a different orientation) and the model would be evaluated on inputs it never saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vision.config import VisionConfig
from voxel_ops import Volume, conform_ras, normalize_intensity


@dataclass(frozen=True)
class NetworkInput:
    tensor: torch.Tensor  # (1, 1, X, Y, Z) float32, RAS-conformed, normalized
    spacing: tuple[float, float, float]  # mm per array axis of `tensor`
    transform: Any  # what `voxel_ops.unconform` needs to map outputs back to the scan's grid


def network_input(volume: Volume, config: VisionConfig, device: torch.device | str = "cpu") -> NetworkInput:
    """RAS-conform the scan and normalize its intensities as the network `config` was trained with."""
    ras, transform = conform_ras(volume)
    image = normalize_intensity(ras, ceiling=config.intensity_ceiling).array
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    sx, sy, sz = (float(s) for s in ras.spacing)
    return NetworkInput(tensor, (sx, sy, sz), transform)


__all__ = ["NetworkInput", "network_input"]
