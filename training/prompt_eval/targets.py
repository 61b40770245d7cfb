"""Target expressions: what a request's target words mean, and what a program's masks are made of.

Both sides of the judge land in one small expression language over the canonical names of
`vision.targets` (the table of 59 targets): a leaf is a table name, composition is ``and`` / ``or`` /
``minus`` (the sandbox's intersection / union / subtract), and mask operations that are not set
operations (largest component, dilation, ...) wrap their argument. Two expressions name the same
target when their *label sets* are equal, so ``intersection(white matter, left hemisphere)`` and
``left cerebral white matter`` compare by the voxels they stand for, not by spelling.

Truth masks are computed from the leaves with `vision.targets.target_mask` on the case's label map
and combined with numpy boolean operations, so the truth of a composed target is exactly the voxels
its words name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from agent.phi_bank import normalize_target
from vision.targets import TARGETS, UnknownTargetError, canonical_target, target_mask

SET_OPS = {"intersection": "and", "union": "or", "subtract": "minus"}
SIDES = ("left", "right")
# a hemisphere in "<side> hemisphere <tissue>" is the cerebral hemisphere: the cerebellum is not in it
CEREBELLUM = "cerebellum"
# tissue classes whose "<side> hemisphere" part is a composition (there is no table entry for it)
_TISSUE_OF_HEMISPHERE = {"white matter": "cerebral white matter"}
# normalized_volume: the denominators that make a ratio "a volume normalized by head size"
HEAD_SIZE = ("intracranial volume", "brain")
_FILLER = re.compile(r"\b(the|part|component|region|portion|area|volume|tissue|of)\b")


@dataclass(frozen=True)
class Expr:
    """A target expression. ``op``: "target" (leaf, ``name`` = canonical name), "unknown" (a name
    outside the table, kept verbatim), "and", "or", "minus" (two ``args``), or a mask operation
    ("largest_component", "extreme_component", ...) on ``args[0]`` with ``detail`` for its parameter."""

    op: str
    name: str = ""
    args: tuple["Expr", ...] = ()
    detail: str = ""

    @property
    def labels(self) -> frozenset[int] | None:
        """Label set of a pure set expression over table targets; None when it is not one."""
        if self.op == "target":
            return TARGETS[self.name].labels
        if self.op in ("and", "or", "minus"):
            a, b = (x.labels for x in self.args)
            if a is None or b is None:
                return None
            return a & b if self.op == "and" else a | b if self.op == "or" else a - b
        return None

    def key(self) -> tuple:
        """Comparison key: the label set when there is one, else the structure with child keys."""
        labels = self.labels
        if labels is not None:
            return ("labels", labels)
        if self.op == "unknown":
            return ("unknown", self.name)
        return (self.op, self.detail, tuple(a.key() for a in self.args))

    def text(self) -> str:
        if self.op in ("target", "unknown"):
            return self.name
        if self.op in ("and", "or", "minus"):
            sym = {"and": " ∩ ", "or": " ∪ ", "minus": " − "}[self.op]
            return "(" + sym.join(a.text() for a in self.args) + ")"
        inner = ", ".join([a.text() for a in self.args] + ([self.detail] if self.detail else []))
        return f"{self.op}({inner})"

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """The expression's voxels on a segmentation-label array."""
        if self.op == "target":
            return target_mask(labels, self.name)
        if self.op in ("and", "or", "minus"):
            a, b = (x.mask(labels) for x in self.args)
            return a & b if self.op == "and" else a | b if self.op == "or" else a & ~b
        if self.op == "largest_component":
            inner = self.args[0].mask(labels)
            comp, n = ndimage.label(inner, structure=np.ones((3, 3, 3)))  # 26-connected, as voxel_ops
            if n == 0:
                return inner
            sizes = np.bincount(comp.ravel())[1:]
            return comp == int(np.argmax(sizes)) + 1
        raise ValueError(f"no truth mask for {self.text()}")

    def is_lesion(self) -> bool:
        if self.op == "target":
            return TARGETS[self.name].kind == "lesion"
        return any(a.is_lesion() for a in self.args)


def leaf(name: str) -> Expr:
    return Expr("target", canonical_target(name))


def both(op: str, a: Expr, b: Expr) -> Expr:
    return Expr(op, args=(a, b))


def from_generated(target: str) -> Expr:
    """A ``generate()`` target string of a program (phi-bank spelling) as an expression."""
    name = normalize_target(target)
    try:
        return leaf(name)
    except UnknownTargetError:
        return Expr("unknown", name)


def _lookup(words: str) -> Expr | None:
    """A table target for ``words``: the name or a synonym, else after dropping filler words, else the
    one table entry whose name or a synonym starts with them (e.g. "enhancing" -> enhancing tumor)."""
    words = re.sub(r"\s+", " ", words.strip().lower())
    for candidate in (words, re.sub(r"\s+", " ", _FILLER.sub(" ", words)).strip()):
        if not candidate:
            continue
        try:
            return leaf(candidate)
        except UnknownTargetError:
            pass
        starts = {t.name for t in TARGETS.values()
                  for s in (t.name, *t.synonyms) if s.lower().startswith(candidate + " ")}
        if len(starts) == 1:
            return leaf(starts.pop())
    return None


@dataclass(frozen=True)
class ExpectedTarget:
    """What a request's target words mean.

    ``truth``: the expressions whose true values the answer is checked against (one, or two for pair
    kinds: asymmetry's left and right, a ratio's numerator and denominator). ``accepted``: per
    position, the comparison keys a program's target may have and still name it (the truth's own,
    plus the plain composition ``tissue ∩ side hemisphere`` the function library offers for a
    cerebral-hemisphere tissue).
    """

    words: str | None
    truth: tuple[Expr, ...]
    accepted: tuple[frozenset[tuple], ...]

    @property
    def is_lesion(self) -> bool:
        return any(e.is_lesion() for e in self.truth)

    def text(self) -> str:
        return " / ".join(e.text() for e in self.truth) if self.truth else "-"


def _sided(side: str, words: str) -> tuple[Expr, set[tuple]] | None:
    """``<side> <X>`` or ``<side> hemisphere <X>``: the table's sided entry, or X ∩ side hemisphere
    (minus the cerebellum for tissue classes, a hemisphere being cerebral)."""
    rest = words.removeprefix("hemisphere ").strip()
    direct = _lookup(f"{side} {rest}")
    if direct is not None and not words.startswith("hemisphere "):
        return direct, {direct.key()}
    base = _lookup(rest)
    if base is None:
        return None
    hemi = leaf(f"{side} hemisphere")
    plain = both("and", base, hemi)
    if base.is_lesion():
        return plain, {plain.key()}
    tissue = _lookup(_TISSUE_OF_HEMISPHERE.get(base.name, ""))
    truth = both("and", tissue, hemi) if tissue is not None else both("minus", plain, leaf(CEREBELLUM))
    return truth, {truth.key(), plain.key()}


def parse_target(words: str | None) -> tuple[Expr, set[tuple]] | None:
    """One target phrase -> (truth expression, accepted keys); None for words the table cannot express."""
    if not words:
        return None
    w = re.sub(r"\s+", " ", words.strip().lower())
    m = re.fullmatch(r"(largest|biggest) (.+)", w)
    if m:
        inner = parse_target(m.group(2))
        if inner is None:
            return None
        e = Expr("largest_component", args=(inner[0],))
        return e, {e.key()}
    m = re.fullmatch(r"(left|right) (.+)", w)
    if m:
        return _sided(m.group(1), m.group(2))
    m = re.fullmatch(r"(.+?) (?:of|in) the (left|right) hemisphere", w)
    if m:
        return _sided(m.group(2), "hemisphere " + m.group(1))
    e = _lookup(w)
    return (e, {e.key()}) if e is not None else None


def expected_target(words: str | None, kind: str) -> ExpectedTarget | None:
    """The expectation for a request's ``target`` under its ``kind``; None when the words name nothing
    in the table (the judge then reports the request as not judgeable, never as correct)."""
    if words is None or not str(words).strip():
        return ExpectedTarget(None, (), ())
    w = str(words).strip().lower()
    if kind == "ratio" and "/" in w:
        parts = [parse_target(p) for p in w.split("/", 1)]
        if any(p is None for p in parts):
            return None
        return ExpectedTarget(words, tuple(p[0] for p in parts), tuple(frozenset(p[1]) for p in parts))
    if kind == "asymmetry" and not w.startswith(SIDES):
        parts = [parse_target(f"{side} {w}") for side in SIDES]
        if any(p is None for p in parts):
            return None
        return ExpectedTarget(words, tuple(p[0] for p in parts), tuple(frozenset(p[1]) for p in parts))
    one = parse_target(w)
    if one is None:
        return None
    return ExpectedTarget(words, (one[0],), (frozenset(one[1]),))


def head_size_keys() -> frozenset[tuple]:
    return frozenset(leaf(n).key() for n in HEAD_SIZE)


__all__ = ["Expr", "ExpectedTarget", "both", "expected_target", "from_generated", "head_size_keys", "leaf",
           "parse_target", "SET_OPS"]
