"""Recursive prompt templates (VoxelPrompt 4.2): placeholders filled from lists of alternatives.

A template is text with `{name}` placeholders. Each name maps to a list of alternatives, which may
themselves contain placeholders; expansion recurses until no placeholder is left. Names bound by a
task (its target, its scans) are passed per call and take precedence over the shared lexicon.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

PLACEHOLDER = re.compile(r"\{([a-z0-9_]+)\}")
MAX_DEPTH = 8


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def expand(template: str, rng: np.random.Generator, lexicon: Mapping[str, Sequence[str]],
           bound: Mapping[str, Sequence[str]] | None = None, _depth: int = 0) -> str:
    """Fill every placeholder, recursively; unknown names are an error (caught by the tests)."""
    if _depth > MAX_DEPTH:
        raise RecursionError(f"template nests deeper than {MAX_DEPTH}: {template!r}")
    bound = bound or {}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        options = bound.get(name, lexicon.get(name))
        if not options:
            raise KeyError(f"placeholder {{{name}}} has no alternatives")
        choice = options[int(rng.integers(len(options)))]
        return expand(choice, rng, lexicon, bound, _depth + 1)

    return PLACEHOLDER.sub(fill, template)


def tidy(text: str) -> str:
    """Collapse doubled spaces from empty alternatives and capitalise the first letter."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([?.,!])", r"\1", text)
    return text[:1].upper() + text[1:] if text else text
