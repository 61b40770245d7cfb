"""Vision weights on disk: ``vision.safetensors`` plus ``vision_config.json`` side by side.

safetensors holds tensors only (no pickle, so a checkpoint cannot run code on load); the JSON
config is what is needed to rebuild the module the tensors belong to.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vision.config import VisionConfig
from vision.model import VisionNet

log = logging.getLogger(__name__)

WEIGHTS_NAME = "vision.safetensors"
CONFIG_NAME = "vision_config.json"


def save_vision(net: VisionNet, directory: str | Path) -> Path:
    """Write the network's weights and config into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "preset": net.config.name})
    (directory / CONFIG_NAME).write_text(net.config.to_json())
    return directory / WEIGHTS_NAME


def resolve_paths(path: str | Path) -> tuple[Path, Path]:
    """Accept a checkpoint directory or the weights file itself; return (weights, config)."""
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    config = weights.parent / CONFIG_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no vision weights at {weights}")
    if not config.is_file():
        raise FileNotFoundError(f"no vision config next to the weights: {config}")
    return weights, config


def load_vision(path: str | Path, device: str | torch.device = "cpu") -> VisionNet:
    """Rebuild the network from a checkpoint directory (or its weights file); strict key match."""
    weights, config_path = resolve_paths(path)
    config = VisionConfig.from_json(config_path)
    net = VisionNet(config)
    net.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    log.info("loaded vision net %s from %s", config.name, weights)
    return net.to(device)
