"""Word-level noise on a training prompt at every step, so the agent reads words, not templates.

Why: a 2,000-step run fits the training prompts (cross-entropy ~0.01) while held-out wordings stay
near 0.55 exact match: the decoder keys on a template's whole shape ("What is the volume of X?")
instead of its content words, and an unseen shape ("What volume did X have?") gets the program of
the template it looks most like. Dropping, inserting and swapping the words that carry no argument
every time an episode is drawn (word dropout, as in deep averaging networks) makes no shape
reliable, while the words a program copies or depends on stay put: numbers, scan names, target
wording, sides and negations. The episodes' programs are unchanged, so the noise is label-free.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from training.tasks.lexicon import LEXICON
from training.tasks.targets import TARGETS, V2_TARGETS

# words whose loss changes what the program must be (sides, sets, negation, order, sessions)
MEANING_WORDS = frozenset("""
left right l r lt rt lh rh both bilateral each and or not no only except without but than to from between
versus vs first second last prior baseline follow-up followup previous new old before after
""".split())

# words with no bearing on the program; inserted at random positions
FILLER_WORDS = ("actually", "basically", "just", "also", "here", "now", "quickly", "maybe", "um", "so",
                "then", "again", "really", "roughly", "perhaps", "overall", "today", "simply", "kindly", "ok")

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


# lexicon entries that are wording only (the rest name a measurement, an action or a unit: kept)
FREE_LEXICON = frozenset({"please", "please_phrase", "opener", "closing", "what_is", "report_verb", "measure_verb",
                          "this_scan"})


def _words(phrases: Iterable[str]) -> set[str]:
    return {w.lower() for phrase in phrases for w in _WORD.findall(phrase)}


def _kept_words() -> frozenset[str]:
    """Target wordings and the lexicon's kind-bearing words: dropping one could change the program."""
    targets: set[str] = set()
    for table in (TARGETS, V2_TARGETS):
        for t in table.values():
            targets |= _words((t.name, *t.phrases))
    kinds: set[str] = set()
    for key, options in LEXICON.items():
        if key not in FREE_LEXICON:
            kinds |= _words(options)
    free = _words(o for k in FREE_LEXICON for o in LEXICON[k])
    # glue words the kind-bearing phrases share with every sentence stay free
    glue = {"the", "a", "an", "of", "in", "is", "me", "you", "on", "for", "this", "what", "how"}
    return frozenset(((kinds - free) | targets | MEANING_WORDS) - glue)


KEPT_WORDS = _kept_words()


@dataclass(frozen=True)
class PromptNoise:
    """Odds of each perturbation; ``share`` of drawn episodes get any (the rest stay as generated)."""

    share: float = 0.5
    drop: float = 0.12  # per free word
    insert: float = 0.06  # per gap between words
    swap: float = 0.04  # per pair of neighbouring free words

    def protected(self, word: str, names: Iterable[str]) -> bool:
        """A word the program depends on: digits, a scan name, target or kind wording, a side, a negation."""
        core = word.strip(".,?!:;()'\"[]").lower()
        if not core or any(c.isdigit() for c in core) or "_" in core:
            return True
        if core in {n.lower() for n in names}:
            return True
        return core in KEPT_WORDS or core in MEANING_WORDS

    def apply(self, prompt: str, scan_names: Iterable[str], rng: random.Random) -> str:
        """The prompt with free words dropped, swapped and filler inserted (``prompt`` itself when
        this episode draws no noise, or when the noise would leave nothing)."""
        if rng.random() >= self.share:
            return prompt
        names = list(scan_names)
        words = prompt.split()
        free = [not self.protected(w, names) for w in words]
        out: list[str] = []
        kept_free: list[bool] = []
        for w, f in zip(words, free):
            if rng.random() < self.insert:
                out.append(FILLER_WORDS[rng.randrange(len(FILLER_WORDS))])
                kept_free.append(True)
            if f and rng.random() < self.drop:
                continue
            out.append(w)
            kept_free.append(f)
        for i in range(len(out) - 1):
            if kept_free[i] and kept_free[i + 1] and rng.random() < self.swap:
                out[i], out[i + 1] = out[i + 1], out[i]
        text = " ".join(out)
        return text if text.strip() else prompt


__all__ = ["FILLER_WORDS", "MEANING_WORDS", "KEPT_WORDS", "PromptNoise"]
