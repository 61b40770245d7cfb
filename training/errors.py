"""The one kind of failure the trainer may skip: a synthesized task that cannot be used.

Anything else (a typo in an option, a shape mismatch, an unknown target name) is a bug and must stop
the run, not silently skip every task. Subclasses keep their historical builtin bases so callers
that caught ValueError/RuntimeError still do.
"""
from __future__ import annotations


class TaskDefect(Exception):
    """A defect of one synthesized task (not of the code or the model): skip it and draw another."""


class SynthesisError(TaskDefect, ValueError):
    """The synthesis could not build the case it was asked for (no room for a lesion, a lesion that
    vanished after painting)."""


__all__ = ["SynthesisError", "TaskDefect"]
