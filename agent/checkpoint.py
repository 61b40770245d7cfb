"""Save and load the agent (config + weights + tokenizer) as plain files in a models directory.

Layout inside ``models/<name>/``: ``agent_config.json``, ``agent.safetensors``, ``tokenizer.model``.
Loading never touches the network: the LLaMA is rebuilt from the config in code.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from agent.config import AgentConfig
from agent.model import VoxAgentModel
from agent.tokenizer import AgentTokenizer

logger = logging.getLogger(__name__)

CONFIG_FILE = "agent_config.json"
WEIGHTS_FILE = "agent.safetensors"
TOKENIZER_FILE = "tokenizer.model"
FORMAT_VERSION = 1


def save_agent(model: VoxAgentModel, tokenizer: AgentTokenizer, directory: str | Path) -> Path:
    """Write the three agent files into ``directory`` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model.cfg.vocab_size != tokenizer.vocab_size or model.cfg.mod_id != tokenizer.mod_id:
        raise ValueError("model and tokenizer do not belong together")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    config = {"format_version": FORMAT_VERSION, **model.cfg.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save(directory / TOKENIZER_FILE)
    logger.info("saved agent (%s preset) to %s", model.cfg.preset, directory)
    return directory


def has_agent(directory: str | Path) -> bool:
    directory = Path(directory)
    return all((directory / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE))


def load_agent(directory: str | Path, device: str | torch.device = "cpu") -> tuple[VoxAgentModel, AgentTokenizer]:
    """Rebuild the model from ``agent_config.json`` and fill it from ``agent.safetensors`` (strict)."""
    directory = Path(directory)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE) if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"agent checkpoint {directory} lacks {missing}")
    data = json.loads((directory / CONFIG_FILE).read_text())
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"agent checkpoint format {version} is not supported (expected {FORMAT_VERSION})")
    cfg = AgentConfig.from_dict(data)
    tokenizer = AgentTokenizer.load(directory / TOKENIZER_FILE)
    if cfg != cfg.bind_tokenizer(tokenizer):
        raise ValueError("agent_config.json does not match tokenizer.model (vocabulary or special ids differ)")
    model = VoxAgentModel(cfg)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval(), tokenizer
