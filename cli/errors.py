"""The one exception a command raises for a user-facing failure."""
from __future__ import annotations

from pathlib import Path


class CommandError(Exception):
    """A user-facing failure: printed as one clear line, exit status 2."""


def default_models_dir() -> Path:
    """The models directory of the settings (VOXAGENT_MODELS_DIR, else the shipped checkpoint)."""
    from service.settings import get_settings

    return get_settings().models_dir
