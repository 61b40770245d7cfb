"""The two ways agent code fails: it breaks a rule of the language subset, or a call goes wrong."""
from __future__ import annotations


class SandboxError(Exception):
    """Any failure of agent code; its message is written for the agent (it becomes feedback)."""


class SandboxViolation(SandboxError):
    """The code uses something outside the allowed subset or exceeds a static limit; nothing ran."""


class SandboxRuntimeError(SandboxError):
    """The code is allowed but failed while running (bad argument, limit hit, library error)."""


class SandboxTimeout(SandboxRuntimeError):
    """A call or the whole job ran past its wall-time limit."""


class SandboxCancelled(SandboxError):
    """The job was cancelled while it ran: the step ends at the next safe point and no step follows."""
