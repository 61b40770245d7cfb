"""Models load once per process (first use, under a lock), never per request.

Celery workers warm these in ``worker_process_init``; the embedded service warms them at start-up.
"""
from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_lock = threading.RLock()
_cache: dict[tuple[str, str], Any] = {}


def _once(kind: str, models_dir: Path, build):
    key = (kind, str(models_dir))
    with _lock:
        if key not in _cache:
            log.info("loading %s from %s", kind, models_dir)
            _cache[key] = build(models_dir)
        return _cache[key]


def _build_vision_engine(models_dir: Path):
    from vision.engine import VisionEngine

    if (Path(models_dir) / "vision.safetensors").is_file():
        return VisionEngine.load(models_dir)
    log.warning("no vision weights in %s: random-init vision network", models_dir)
    return VisionEngine(preset="tiny")


def vision_engine(models_dir: Path):
    """The resident VisionEngine (shipped weights when present, else a random-init network); the
    Celery vision tasks use this one too, so a process holds one engine."""
    return _once("vision", Path(models_dir), _build_vision_engine)


def agent_runtime(models_dir: Path):
    """The agent (language model + tokenizer) and its runtime; see service.tasks.engines."""
    from service.tasks.engines import build_runtime

    return _once("agent", models_dir, build_runtime)


def phi_bank(models_dir: Path):
    """The checkpoint's phi bank (or the deterministic default bank)."""
    from agent.phi_bank import PhiBank

    return _once("phi_bank", models_dir, PhiBank.for_model_dir)


def loaded() -> list[str]:
    with _lock:
        return sorted({k for k, _ in _cache})


@lru_cache(maxsize=1)
def hostname() -> str:
    import socket

    return socket.gethostname()
