"""Describe the served model from its checkpoint directory and the installed function library."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from api_schemas.models import FunctionInfo, ModelInfo

log = logging.getLogger(__name__)


def _functions() -> list[FunctionInfo]:
    try:
        from agent.functions import default_registry

        return [FunctionInfo(name=d["name"], signature=d.get("signature"), doc=d.get("description"))
                for d in default_registry().describe()]
    except Exception:  # noqa: BLE001 - describing the service must not fail on the library
        log.warning("function library unavailable", exc_info=True)
        return []


def _targets(models_dir: Path) -> list[str]:
    try:
        from service.tasks import resources

        return list(resources.phi_bank(models_dir).targets)
    except Exception:  # noqa: BLE001 - without a phi bank the model info lists no targets
        log.warning("phi bank unavailable", exc_info=True)
        return []


def describe(models_dir: Path) -> ModelInfo:
    models_dir = Path(models_dir)
    config = {}
    cfg_path = models_dir / "agent_config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except ValueError:
            log.warning("unreadable %s", cfg_path)
    trained = (models_dir / "agent.safetensors").is_file() and (models_dir / "vision.safetensors").is_file()
    note = None if trained else ("no trained checkpoint found: a random-init model answers prompts "
                                 "(expect 'no_answer'); programs given as `code` run normally")
    return ModelInfo(name=models_dir.name, version=str(config.get("version")) if config.get("version") else None,
                     trained=trained, preset=config.get("preset"), presets=["tiny", "paper"],
                     tasks=["segmentation", "measurement", "comparison", "description"],
                     targets=_targets(models_dir), functions=_functions(), note=note)
