"""Which targets a request names, read from its words, checked against what the program segmented.

Why: the commonest wrong answer is a fluent one about the wrong structure ("How long, wide and tall
is the brain?" answered with the left hemisphere's extents; "segment the left amygdala and the left
hippocampus" answered with the amygdala only). The decoder's token probabilities barely tell those
apart from right answers, but the words do: when a request names a target of the table
(`vision.targets`: canonical names and synonyms) and no step that ran segmented it (nor a target
containing it, nor, where the request names a side, a part of it), the result carries a warning.

It reads only the table's own names, so it says nothing about words it does not know ("the
abnormality", "ventricular"): it is built to be right when it speaks, not to speak often.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

# spellings folded before matching (British forms, plurals of structures the table names singly)
_FOLDS = (("grey", "gray"), ("tumour", "tumor"), ("oedema", "edema"), ("hippocampi", "hippocampus"),
          ("thalami", "thalamus"), ("amygdalae", "amygdala"), ("hemispheres", "hemisphere"))
# synonyms that are also words of a task ("is there enhancement?" asks about a lesion's signal)
_NOT_MENTIONS = frozenset({"enhancement"})
_SIDE = re.compile(r"\b(left|right|side|sided|hemisphere|l|r|lt|rt)\b")
# a generic word: a mention of it counts only where the request names nothing else
_GENERIC = "brain"


def _normalize(text: str) -> str:
    text = re.sub(r"[-_/]", " ", text.lower())
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    for a, b in _FOLDS:
        text = re.sub(rf"\b{a}\b", b, text)
    return re.sub(r"\s+", " ", text).strip()


@lru_cache(maxsize=1)
def _phrases() -> tuple[tuple[str, str], ...]:
    """(normalized phrase, canonical target), longest phrase first."""
    from vision.targets import TARGETS

    pairs = {(_normalize(p), name) for name, t in TARGETS.items() for p in (name, *t.synonyms)
             if p.lower() not in _NOT_MENTIONS}
    return tuple(sorted(pairs, key=lambda pair: (-len(pair[0]), pair[0])))


def request_targets(prompt: str) -> list[str]:
    """Canonical targets the request names, in order of first mention; a phrase inside a longer
    match does not count ("left hippocampus" names the left hippocampus, not the hippocampus)."""
    text = f" {_normalize(prompt)} "
    taken = [False] * len(text)
    found: list[tuple[int, str]] = []
    for phrase, name in _phrases():
        for m in re.finditer(rf"(?<= ){re.escape(phrase)}(?= )", text):
            if not any(taken[m.start():m.end()]):
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
                found.append((m.start(), name))
    names = list(dict.fromkeys(name for _, name in sorted(found)))
    if len(names) > 1 and _GENERIC in names:
        names.remove(_GENERIC)
    return names


def generated_targets(steps: Iterable[str]) -> list[str]:
    """Canonical targets of every ``generate(..., scan<MOD>, "target")`` in the code."""
    from agent.result_warnings import mod_sites
    from vision.targets import UnknownTargetError, canonical_target

    out: list[str] = []
    for code in steps:
        for func, raw in mod_sites(code):
            if func != "generate" or raw is None:
                continue
            try:
                out.append(canonical_target(raw))
            except UnknownTargetError:
                continue  # a lesion alias of the phi bank the table does not list
    return list(dict.fromkeys(out))


def unmet_mentions(prompt: str, steps: Sequence[str]) -> list[str]:
    """Targets the request names that the steps never segmented, nor a target containing them, nor
    (where the request names a side) a part of them."""
    return _unmet(prompt, generated_targets(steps))


def _unmet(prompt: str, generated: Sequence[str]) -> list[str]:
    from vision.targets import TARGETS

    named = request_targets(prompt)
    if not named:
        return []
    made = [TARGETS[g].labels for g in generated if g in TARGETS]
    union = frozenset().union(*made) if made else frozenset()
    sided = _SIDE.search(_normalize(prompt)) is not None
    unmet = []
    for name in named:
        want = TARGETS[name].labels
        if want <= union or (sided and any(m and m <= want for m in made)):
            continue
        unmet.append(name)
    return unmet


_SIDE_WORDS = {"left": ("left", "l", "lt"), "right": ("right", "r", "rt")}


def steering_targets(prompt: str) -> tuple[str, ...]:
    """The targets the request names (`request_targets`), for the decoder to draw first
    (`agent.constrained.StepConstraint` ``mentions``); a sided mention gets its other side too when
    the request names both sides ("left vs right hippocampus" reads as ``right hippocampus`` alone,
    since "left" stands apart from the structure)."""
    from vision.targets import TARGETS

    named = request_targets(prompt)
    words = set(_normalize(prompt).split())
    out = list(named)
    for name in named:
        side = TARGETS[name].side
        if side is None:
            continue
        other = "right" if side == "left" else "left"
        twin = other + name[len(side):]
        if twin in TARGETS and words & set(_SIDE_WORDS[other]):
            out.append(twin)
    return tuple(dict.fromkeys(out))


def answers_none(prompt: str, targets: Iterable[str]) -> bool:
    """The request names targets and the drawn ``targets`` (target strings, any spelling) answer
    none of them: none is drawn whole, by its parts together or by one of its sides. The decoder's
    cue to draw again, steered."""
    from vision.targets import TARGETS, UnknownTargetError, canonical_target

    named = request_targets(prompt)
    if not named:
        return False
    drawn = []
    for raw in targets:
        try:
            drawn.append(canonical_target(raw))
        except UnknownTargetError:
            continue
    made = [TARGETS[d].labels for d in drawn if d in TARGETS]
    union = frozenset().union(*made) if made else frozenset()
    for name in named:
        want = TARGETS[name].labels
        # answered: drawn whole (or by its parts together), or one side of it drawn, whatever words
        # the request used for the side ("lt cerebellar white matter" names no side the table knows)
        if want <= union or any(d in (f"left {name}", f"right {name}") for d in drawn):
            return False
    return True


def answer_mention_warnings(answer: str, steps: Sequence[str]) -> list[str]:
    """One low-confidence warning when the answer's words name a target that no step segmented.

    Why: a program steered to the right target can still word its answer after the wrong one (seen:
    the gray matter drawn and output as "cerebral white matter", "Here is the segmentation of the
    cerebral white matter."). Hemispheres are left out: ``hemisphere()`` answers name them without
    drawing them."""
    named = [t for t in request_targets(answer) if not t.endswith(" hemisphere")]
    if not named:
        return []
    made = generated_targets(steps)
    return _missed("the answer", [t for t in _unmet(answer, made) if t in named], made, "what was segmented")


def mention_warnings(prompt: str, steps: Sequence[str]) -> list[str]:
    """One low-confidence warning naming the targets the request names and the program missed."""
    made = generated_targets(steps)
    return _missed("the request", _unmet(prompt, made), made, "what was asked")


def _missed(who: str, unmet: Sequence[str], made: Sequence[str], about: str) -> list[str]:
    """The one warning of `mention_warnings` and `answer_mention_warnings` (none when nothing is unmet)."""
    if not unmet:
        return []
    return [f"{who} names the {', the '.join(unmet)}, but no step that ran segmented "
            f"{'it' if len(unmet) == 1 else 'them'} (segmented: {', '.join(made) or 'nothing'}): low confidence, "
            f"check that the answer is about {about}"]


__all__ = ["answer_mention_warnings", "answers_none", "generated_targets", "mention_warnings", "request_targets",
           "steering_targets", "unmet_mentions"]
