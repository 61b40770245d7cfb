"""Whether an answer may be reported as ``succeeded``: the gate both the agent loop and scripted
programs pass their final answer through.

A run that stopped is not yet a run that answered. Seen in the wild: "Here is {r}." (an f-string
whose placeholder was never filled because the text was not an f-string), "}." (token soup), and
answers whose last step failed. Those are ``no_answer`` with the reason, never ``succeeded``.
"""
from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.\[\]'\"]*(?:![rsa])?(?::[^{}]*)?\}")
CONTENT = re.compile(r"[A-Za-z]{2,}|\d")


def answer_problem(text: str) -> str | None:
    """Why ``text`` is not an answer (None if it is): unfilled placeholders or no words at all."""
    stripped = text.strip()
    if not stripped:
        return None  # no text: metrics or outputs may still answer; callers decide on emptiness
    holes = PLACEHOLDER.findall(stripped)
    if holes:
        return f"the answer has unfilled placeholders ({', '.join(dict.fromkeys(holes))})"
    if not CONTENT.search(stripped):
        return f"the answer {stripped[:40]!r} has no words or numbers"
    return None


__all__ = ["answer_problem"]
