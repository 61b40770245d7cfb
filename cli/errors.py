"""The one exception a command raises for a user-facing failure, and how other errors read."""
from __future__ import annotations

from pathlib import Path
from typing import Any


class CommandError(Exception):
    """A user-facing failure: printed as one clear line, exit status 2."""


def validation_message(exc: Any) -> str:
    """One readable line for a pydantic ``ValidationError``: ``field: reason; field: reason``.

    ``str(ValidationError)`` spans several lines, repeats the input and links to pydantic's
    website, which tells a command-line user nothing about their own flag; the errors' own
    locations and messages do, so only those are kept (and pydantic's ``Value error, `` prefix,
    which is how it wraps our validators' messages, is dropped).
    """
    parts = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid value"


def default_models_dir() -> Path:
    """The models directory of the settings (VOXAGENT_MODELS_DIR, else the shipped checkpoint)."""
    from service.settings import get_settings

    return get_settings().models_dir
