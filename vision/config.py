"""Hyper-parameters of the instructable vision network, with named presets.

One dataclass holds everything needed to rebuild the network, so a checkpoint is just the
weights plus ``dataclasses.asdict(config)`` as JSON.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class VisionConfig:
    """Shape of the UNet-like encoder/generator (VoxelPrompt 3.1, 3.3, A.1)."""

    name: str = "custom"
    channels: tuple[int, ...] = (32, 96, 96, 96, 96, 96)  # output channels per level, top first
    phi_dim: int = 32  # width of the agent's latent instruction per stream
    attn_dim: int = 32  # b in eq. 1
    encoding_dim: int = 512  # d: width of the interpretable encoding vectors (agent width)
    group_size: int = 4  # channels per group-norm group
    omega_threshold: float = 2.0  # an axis is "thick" at a level when spacing / in-plane > this
    # Finer inputs are reduced in-plane to this spacing (mm) before the network, and outputs
    # are returned on the input grid. None processes every input at its native spacing.
    min_spacing: float | None = None
    # Single-task baseline (paper 5.2): phi mixing becomes a plain linear layer that ignores phi.
    baseline: bool = False
    # Input intensities: the 0.5th/99.5th percentiles map to 0/1, values clip at this ceiling.
    # 1.0 (what checkpoints without the key were trained with) flattens bright lesions; see
    # voxel_ops.normalize_intensity.
    intensity_ceiling: float = 1.0
    # Output channels of the head. 1 for the instructable network (one mask per generate); a plain
    # multi-label baseline (baseline=True) emits one logit per label class instead.
    out_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) < 1:
            raise ValueError("a vision network needs at least one level")
        if min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        bad = [c for c in self.channels if c % self.group_size]
        if bad:
            raise ValueError(f"channels {bad} are not multiples of group_size={self.group_size}")
        if self.min_spacing is not None and self.min_spacing <= 0:
            raise ValueError("min_spacing must be positive or None")
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {self.out_channels}")
        if self.out_channels > 1 and not self.baseline:
            raise ValueError("out_channels > 1 is the multi-label baseline: set baseline=True too")
        if not self.intensity_ceiling >= 1.0:
            raise ValueError("intensity_ceiling must be >= 1")

    @property
    def levels(self) -> int:
        return len(self.channels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "VisionConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown vision config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "VisionConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# New networks keep intensities up to 3x the 0.5-99.5 percentile range: on 39 synthesized lesion
# scans that leaves no lesion voxel clipped (40 % were at ceiling 1) and the lesion-to-rim contrast
# of the unclipped image (median 2.7 vs 1.8 rim SDs); reproduce with `python -m training.lesion_contrast`.
NEW_NETWORK_CEILING = 3.0

PRESETS: dict[str, VisionConfig] = {
    # Six levels, 32 channels on top and 96 below, b = 32, phi 32, d = 512 (paper 3.3).
    "paper": VisionConfig(name="paper", intensity_ceiling=NEW_NETWORK_CEILING),
    # Between tiny and paper, native spacing everywhere: the native-vs-isotropic CPU benchmark.
    "mid": VisionConfig(
        name="mid", channels=(8, 32, 32, 32, 32), attn_dim=16, encoding_dim=256,
        intensity_ceiling=NEW_NETWORK_CEILING,
    ),
    # vision v2 (stage-1 pretraining on the SynthSeg label maps): 1.0 M parameters, five levels, 2 mm.
    "v2": VisionConfig(
        name="v2", channels=(16, 32, 64, 64, 64), attn_dim=16, encoding_dim=256, min_spacing=2.0,
        intensity_ceiling=NEW_NETWORK_CEILING,
    ),
    # Fast on two CPU cores: few channels, four levels, 2 mm minimum working spacing.
    "tiny": VisionConfig(
        name="tiny", channels=(8, 16, 16, 16), attn_dim=8, encoding_dim=256, min_spacing=2.0,
        intensity_ceiling=NEW_NETWORK_CEILING,
    ),
}


def get_config(preset: str | VisionConfig, **overrides) -> VisionConfig:
    """Resolve a preset name (or pass a config through), applying field overrides."""
    if isinstance(preset, VisionConfig):
        config = preset
    else:
        try:
            config = PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown vision preset {preset!r}; known: {sorted(PRESETS)}") from None
    return replace(config, **overrides) if overrides else config


__all__ = ["VisionConfig", "PRESETS", "NEW_NETWORK_CEILING", "get_config"]
