"""The sandbox: an interpreter of a small Python subset with a persistent environment and limits."""
from agent.sandbox.errors import SandboxError, SandboxRuntimeError, SandboxTimeout, SandboxViolation
from agent.sandbox.limits import SandboxLimits, apply_process_limits
from agent.sandbox.markers import MOD_TOKEN, strip_mod_markers
from agent.sandbox.outcome import Feedback, StepOutcome
from agent.sandbox.sandbox import Sandbox

__all__ = ["MOD_TOKEN", "Feedback", "Sandbox", "SandboxError", "SandboxLimits", "SandboxRuntimeError",
           "SandboxTimeout", "SandboxViolation", "StepOutcome", "apply_process_limits", "strip_mod_markers"]
