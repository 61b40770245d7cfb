"""The sandbox: an interpreter of a small Python subset with a persistent environment and limits."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.sandbox.errors import (
    SandboxCancelled,
    SandboxError,
    SandboxRuntimeError,
    SandboxTimeout,
    SandboxViolation,
)
from agent.sandbox.limits import SandboxLimits, apply_process_limits
from agent.sandbox.markers import MOD_TOKEN, strip_mod_markers
from agent.sandbox.outcome import Feedback, StepOutcome

if TYPE_CHECKING:
    from agent.sandbox.sandbox import Sandbox


def __getattr__(name: str) -> Any:
    # Sandbox imports the function library, which imports our errors: load it on first use only.
    if name == "Sandbox":
        from agent.sandbox.sandbox import Sandbox

        return Sandbox
    raise AttributeError(name)


__all__ = ["MOD_TOKEN", "Feedback", "Sandbox", "SandboxCancelled", "SandboxError", "SandboxLimits",
           "SandboxRuntimeError", "SandboxTimeout", "SandboxViolation", "StepOutcome", "apply_process_limits",
           "strip_mod_markers"]
