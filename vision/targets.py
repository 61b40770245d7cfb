"""The one table of segmentation targets: canonical names, synonyms, label sets and laterality.

Every string that reaches ``generate`` is a canonical name from :data:`TARGETS`. The vision
pretraining (which target a phi-bank row stands for), the synthesis (which voxels are its truth), the
function library's docs and the error for an unknown target all read this table, so a name means
one set of voxels everywhere.

Anatomical targets are sets of FreeSurfer labels in the *segmentation* space of SynthSeg
(``SEGMENTATION_MAP`` folds the extra generation labels, e.g. lesion 25 into white matter 2, onto
it). Lesion targets have no FreeSurfer label: the synthesis paints them with the codes in
``LESION_LABELS``, which lie above every FreeSurfer label used here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# FreeSurfer label values of the 32 structures SynthSeg segments (left, right).
_LATERAL: dict[str, tuple[int, int]] = {
    "cerebral white matter": (2, 41),
    "cerebral cortex": (3, 42),
    "lateral ventricle": (4, 43),
    "inferior lateral ventricle": (5, 44),
    "cerebellum white matter": (7, 46),
    "cerebellum cortex": (8, 47),
    "thalamus": (10, 49),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "accumbens": (26, 58),
    "ventral DC": (28, 60),
}
_MIDLINE: dict[str, int] = {"3rd ventricle": 14, "4th ventricle": 15, "brain-stem": 16, "extra-ventricular csf": 24}

# Generation labels of the SynthSeg maps that are not segmentation labels, and what they count as
# (SynthSeg's own segmentation list, priors/synthseg_segmentation_labels_2.0.npy): lesion labels join
# white matter, choroid-plexus-like 136/137/163/164 join the ventricles, everything else is background.
SEGMENTATION_MAP: dict[int, int] = {25: 2, 57: 41, 136: 4, 137: 5, 163: 43, 164: 44}

# Synthesized lesion parts, painted over the anatomy (codes above every FreeSurfer label used here);
# a lesion in the right hemisphere adds RIGHT_LESION so that the hemisphere targets keep it.
LESION_SOLID, LESION_RIM, LESION_CORE, LESION_EDEMA = 1001, 1002, 1003, 1004
RIGHT_LESION = 10
LEFT_LESION_LABELS = (LESION_SOLID, LESION_RIM, LESION_CORE, LESION_EDEMA)
RIGHT_LESION_LABELS = tuple(v + RIGHT_LESION for v in LEFT_LESION_LABELS)
LESION_LABELS = LEFT_LESION_LABELS + RIGHT_LESION_LABELS
LUT_SIZE = 1024 + 8  # label values index boolean lookup tables of this length


@dataclass(frozen=True)
class Target:
    """One thing ``generate`` can draw."""

    name: str
    labels: frozenset[int]
    kind: str = "anatomy"  # "anatomy" (from the label maps) or "lesion" (from the lesion synthesis)
    side: str | None = None  # "left", "right" or None (midline or bilateral)
    synonyms: tuple[str, ...] = field(default=())

    def lut(self) -> np.ndarray:
        """Boolean lookup table over label values: ``lut[labels]`` is this target's mask."""
        table = np.zeros(LUT_SIZE, dtype=bool)
        table[list(self.labels)] = True
        return table


def _build() -> dict[str, Target]:
    t: dict[str, Target] = {}

    def add(name: str, labels: Iterable[int], kind: str = "anatomy", side: str | None = None,
            synonyms: tuple[str, ...] = ()) -> None:
        t[name] = Target(name, frozenset(labels), kind, side, synonyms)

    for base, (left, right) in _LATERAL.items():
        add(f"left {base}", [left], side="left")
        add(f"right {base}", [right], side="right")
    for name, label in _MIDLINE.items():
        add(name, [label], synonyms=("brainstem", "brain stem") if name == "brain-stem" else
            ("sulcal csf", "extracerebral csf") if label == 24 else ())
    # clinicians' names of the same structures ("cortical gray matter" is the cerebral cortex, not all
    # gray matter; "cerebellar grey matter" the cerebellar cortex), as the training prompts word them
    syn = {"accumbens": ("nucleus accumbens", "accumbens area"), "ventral DC": ("ventral diencephalon",),
           "cerebellum cortex": ("cerebellar cortex", "cerebellar gray matter", "cerebellar grey matter"),
           "cerebellum white matter": ("cerebellar white matter", "cerebellar wm"),
           "cerebral cortex": ("cortical gray matter", "cortical grey matter", "cortical gm", "neocortex"),
           "cerebral white matter": ("cerebral wm",)}
    for base in ("hippocampus", "thalamus", "caudate", "putamen", "pallidum", "amygdala", "accumbens",
                 "ventral DC", "cerebellum white matter", "cerebellum cortex", "cerebral white matter",
                 "cerebral cortex"):
        add(base, _LATERAL[base], synonyms=syn.get(base, ()))

    def labels_of(*names: str) -> set[int]:
        return set().union(*(t[n].labels for n in names))

    deep = ("thalamus", "caudate", "putamen", "pallidum", "hippocampus", "amygdala", "accumbens", "ventral DC")
    add("lateral ventricles", set(_LATERAL["lateral ventricle"]) | set(_LATERAL["inferior lateral ventricle"]),
        synonyms=("lateral ventricle",))
    add("ventricles", labels_of("lateral ventricles", "3rd ventricle", "4th ventricle"),
        synonyms=("ventricular system",))
    add("cerebellum", labels_of("cerebellum white matter", "cerebellum cortex"))
    add("gray matter", labels_of("cerebral cortex", "cerebellum cortex", *deep),
        synonyms=("grey matter", "gm"))
    add("deep gray matter", labels_of(*deep), synonyms=("deep grey matter", "subcortical gray matter"))
    add("white matter", labels_of("cerebral white matter", "cerebellum white matter"), synonyms=("wm",))
    add("csf", labels_of("ventricles", "extra-ventricular csf"), synonyms=("cerebrospinal fluid",))
    brain_names = [n for n, x in t.items() if x.side is not None] + ["3rd ventricle", "4th ventricle", "brain-stem"]
    add("brain", labels_of(*brain_names) | set(LESION_LABELS), synonyms=("whole brain", "brain parenchyma"))
    add("intracranial volume", t["brain"].labels | t["csf"].labels, synonyms=("icv", "intracranial"))
    for side, lesions in (("left", LEFT_LESION_LABELS), ("right", RIGHT_LESION_LABELS)):
        own = labels_of(*[n for n, x in t.items() if x.side == side])
        add(f"{side} hemisphere", own | set(lesions), side=side)

    def both(*parts: int) -> list[int]:
        return [*parts, *(p + RIGHT_LESION for p in parts)]

    add("lesion", both(LESION_SOLID, LESION_RIM, LESION_CORE), kind="lesion", synonyms=("tumor", "tumour", "mass"))
    add("enhancing tumor", both(LESION_RIM), kind="lesion", synonyms=("enhancing lesion", "enhancement"))
    add("necrosis", both(LESION_CORE), kind="lesion", synonyms=("necrotic core",))
    add("edema", both(LESION_EDEMA), kind="lesion", synonyms=("oedema", "peritumoral edema"))
    return t


TARGETS: dict[str, Target] = _build()
ANATOMY_TARGETS: tuple[str, ...] = tuple(n for n, x in TARGETS.items() if x.kind == "anatomy")
LESION_TARGETS: tuple[str, ...] = tuple(n for n, x in TARGETS.items() if x.kind == "lesion")
# The 32 structures SynthSeg segments, by canonical name: the "mean over the 32 structures" figure.
SYNTHSEG_STRUCTURES: tuple[str, ...] = tuple(
    [f"{side} {base}" for base in _LATERAL for side in ("left", "right")] + list(_MIDLINE)
)
_SYNONYMS: dict[str, str] = {s.lower(): n for n, x in TARGETS.items() for s in (n, *x.synonyms)}


class UnknownTargetError(ValueError):
    """A target name that is neither a canonical name nor a synonym in the table."""


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower().replace("_", " "))


def canonical_target(name: str) -> str:
    """The canonical name for a name or synonym (case and spacing ignored); a clear error otherwise."""
    key = _key(name)
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    raise UnknownTargetError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")


def segmentation_labels(labels: np.ndarray) -> np.ndarray:
    """Generation labels -> segmentation labels (``SEGMENTATION_MAP``; unknown labels -> 0)."""
    table = np.zeros(LUT_SIZE, dtype=np.int16)
    known = set().union(*(t.labels for t in TARGETS.values()))
    for value in known:
        table[value] = value
    for src, dst in SEGMENTATION_MAP.items():
        table[src] = dst
    labels = np.asarray(labels)
    inside = (labels >= 0) & (labels < LUT_SIZE)
    return np.where(inside, table[np.clip(labels, 0, LUT_SIZE - 1)], 0).astype(np.int16)


def target_mask(labels: np.ndarray, target: str) -> np.ndarray:
    """Boolean mask of ``target`` on a segmentation-label array."""
    return TARGETS[canonical_target(target)].lut()[np.asarray(labels, dtype=np.int64)]


__all__ = ["Target", "TARGETS", "ANATOMY_TARGETS", "LESION_TARGETS", "SYNTHSEG_STRUCTURES",
           "LESION_LABELS", "SEGMENTATION_MAP", "UnknownTargetError", "canonical_target",
           "segmentation_labels", "target_mask"]
