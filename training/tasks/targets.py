"""Targets the tasks talk about: their wordings, how ground-truth code obtains them, their true masks.

Tissue targets that the vision model does not generate directly (left/right gray or white matter)
are composed in code from two generated masks with `intersection`, the way an expert would.
Generated target strings are names from `agent.phi_bank.DEFAULT_TARGETS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from training.synth import Case
from voxel_ops import Volume


@dataclass(frozen=True)
class TargetDef:
    name: str  # canonical name (what answers call it)
    var: str  # variable name in ground-truth code
    phrases: tuple[str, ...]  # interchangeable wordings for prompts
    generated: tuple[str, ...]  # generate() targets it is built from (1 = direct, 2 = intersection)
    lesion: bool = False


def _t(name: str, var: str, phrases: list[str], generated: tuple[str, ...] | None = None, lesion: bool = False
       ) -> TargetDef:
    return TargetDef(name, var, tuple(phrases), generated or (name,), lesion)


TARGETS: dict[str, TargetDef] = {t.name: t for t in [
    _t("brain", "brain", ["the brain", "the whole brain", "brain tissue", "the intracranial brain", "the brain mask",
                          "the entire brain"]),
    _t("gray matter", "gm", ["the gray matter", "the grey matter", "GM", "gray matter", "grey matter tissue",
                             "the gray-matter compartment"]),
    _t("white matter", "wm", ["the white matter", "WM", "white matter", "white-matter tissue",
                              "the cerebral white matter"]),
    _t("cerebrospinal fluid", "csf", ["the CSF", "cerebrospinal fluid", "the cerebrospinal fluid", "CSF spaces",
                                      "the fluid spaces"]),
    _t("left hemisphere", "lh", ["the left hemisphere", "the left cerebral hemisphere", "the left half of the brain",
                                 "the left side of the brain", "the left brain"]),
    _t("right hemisphere", "rh", ["the right hemisphere", "the right cerebral hemisphere",
                                  "the right half of the brain", "the right side of the brain", "the right brain"]),
    _t("left gray matter", "left_gm", ["the left gray matter", "left-hemisphere gray matter", "the left GM",
                                       "gray matter of the left hemisphere", "the left grey matter"],
       ("gray matter", "left hemisphere")),
    _t("right gray matter", "right_gm", ["the right gray matter", "right-hemisphere gray matter", "the right GM",
                                         "gray matter of the right hemisphere", "the right grey matter"],
       ("gray matter", "right hemisphere")),
    _t("left white matter", "left_wm", ["the left white matter", "left-hemisphere white matter", "the left WM",
                                        "white matter of the left hemisphere", "the left cerebral white matter"],
       ("white matter", "left hemisphere")),
    _t("right white matter", "right_wm", ["the right white matter", "right-hemisphere white matter", "the right WM",
                                          "white matter of the right hemisphere",
                                          "the right cerebral white matter"],
       ("white matter", "right hemisphere")),
    _t("lesion", "lesion", ["the lesion", "the lesions", "the abnormality", "the pathology", "the lesion burden",
                            "all lesions", "the abnormal tissue"], lesion=True),
    _t("enhancing tumor", "enhancing", ["the enhancing part", "the enhancing tumor", "the enhancing component",
                                        "the contrast-enhancing tissue", "the enhancing rim"], lesion=True),
    _t("edema", "edema", ["the edema", "the surrounding edema", "the perilesional edema", "the oedema",
                          "the peritumoral edema"], lesion=True),
    _t("necrosis", "necrosis", ["the necrotic core", "the necrosis", "the necrotic part", "the central necrosis",
                                "the necrotic component"], lesion=True),
]}
TISSUE = ("brain", "gray matter", "white matter", "cerebrospinal fluid", "left hemisphere", "right hemisphere",
          "left gray matter", "right gray matter", "left white matter", "right white matter")
SIMPLE_TISSUE = ("brain", "gray matter", "white matter", "cerebrospinal fluid")
BILATERAL_PAIRS = {"hemisphere": ("left hemisphere", "right hemisphere"),
                   "gray matter": ("left gray matter", "right gray matter"),
                   "white matter": ("left white matter", "right white matter")}

SCAN_PHRASES: dict[str, tuple[str, ...]] = {
    "T1": ("the T1", "the T1-weighted scan", "the T1w image", "the T1 MRI", "this T1 scan", "the T1 series"),
    "T1C": ("the post-contrast T1", "the contrast-enhanced T1", "the T1 post-gadolinium", "the T1+C",
            "the post-contrast scan"),
    "T2": ("the T2", "the T2-weighted scan", "the T2w image", "the T2 MRI", "this T2 series"),
    "FLAIR": ("the FLAIR", "the FLAIR scan", "the T2-FLAIR", "the FLAIR image", "this FLAIR series"),
    "CT": ("the CT", "the head CT", "the CT scan", "the non-contrast CT", "this CT"),
    "DWI": ("the DWI", "the diffusion-weighted image", "the b1000 image", "the DWI scan"),
    "ADC": ("the ADC", "the ADC map", "the apparent diffusion coefficient map", "the ADC image"),
    "PD": ("the PD", "the proton-density scan", "the PD-weighted image", "the PDw series", "this PD scan"),
    "MR": ("the scan", "the MRI", "the image", "this scan", "the volume"),
}
SEQUENCE_NAMES = {"T1": "T1", "T1C": "post-contrast T1", "T2": "T2", "FLAIR": "FLAIR", "CT": "CT", "DWI": "DWI",
                  "ADC": "ADC", "PD": "PD", "MR": "the scan"}


def truth_mask(case: Case, target: str, scan: str, *, lesion: int | None = None) -> Volume:
    """Ground-truth mask of a (possibly composed) target on the grid of `scan`."""
    table = table_of(case)
    t = table[target]
    masks = [case.mask(g, scan, lesion=lesion if table.get(g, t).lesion else None) for g in t.generated]
    arr = masks[0].array.astype(bool)
    for m in masks[1:]:
        arr &= m.array.astype(bool)
    return masks[0].with_array(arr.astype(np.uint8), series_description=target)


# ---------------------------------------------------------------- v2: every target of vision.targets
#
# Label cases (training.synth.label_case) know all 59 targets of `vision.targets`, so tasks on them
# talk about the hippocampus, the thalamus, the ventricles or the intracranial volume, and their
# generate() calls carry canonical names of that table (the contract of the vision issue). The old
# composed targets (left gray matter = gray matter & left hemisphere) stay compositions. The wordings
# are ours (vision.targets lists few synonyms): singular and plural nouns, abbreviations clinicians
# type (HC, LV, ICV, TIV, WM, GM), British spellings, and side markers (left, L, lt, left-sided).

# base structure -> (singular wordings, plural wordings for the bilateral union)
STRUCTURE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hippocampus": (("hippocampus", "hippocampal formation", "hippo", "HC"), ("hippocampi", "hippocampuses")),
    "thalamus": (("thalamus", "thalamus proper", "thal"), ("thalami",)),
    "caudate": (("caudate", "caudate nucleus", "caudate nuc"), ("caudate nuclei", "caudates")),
    "putamen": (("putamen", "putaminal nucleus"), ("putamina", "putamens")),
    "pallidum": (("pallidum", "globus pallidus", "GP", "pallidus"), ("pallida", "globi pallidi")),
    "amygdala": (("amygdala", "amygdaloid body", "amyg"), ("amygdalae", "amygdalas")),
    "accumbens": (("accumbens", "nucleus accumbens", "accumbens area", "NAcc"), ("accumbens nuclei",)),
    "ventral DC": (("ventral DC", "ventral diencephalon", "VDC"), ("ventral diencephala", "ventral DCs")),
    "lateral ventricle": (("lateral ventricle", "LV", "lat vent", "lateral ventricular horn"),
                          ("lateral ventricles", "LVs", "lat vents")),
    "inferior lateral ventricle": (("inferior lateral ventricle", "temporal horn", "inferior horn"),
                                   ("inferior lateral ventricles", "temporal horns")),
    "cerebellum white matter": (("cerebellar white matter", "cerebellum white matter", "cerebellar WM"),
                                ("cerebellar white matter",)),
    "cerebellum cortex": (("cerebellar cortex", "cerebellum cortex", "cerebellar gray matter",
                           "cerebellar grey matter"), ("cerebellar cortices",)),
    "cerebral white matter": (("cerebral white matter", "cerebral WM", "hemispheric white matter",
                               "cerebral white-matter"), ("cerebral white matter",)),
    "cerebral cortex": (("cerebral cortex", "cortex", "cortical gray matter", "cortical grey matter",
                         "cortical GM", "neocortex"), ("cerebral cortices", "cortices")),
}
LATERAL_BASES = tuple(STRUCTURE_WORDS)
SIDE_WORDS = {"left": ("left {w}", "the left {w}", "the left {w}", "L {w}", "lt {w}", "{w} (left)",
                       "the {w} on the left", "left-sided {w}", "Lt. {w}", "the {w}, left side"),
              "right": ("right {w}", "the right {w}", "the right {w}", "R {w}", "rt {w}", "{w} (right)",
                        "the {w} on the right", "right-sided {w}", "Rt. {w}", "the {w}, right side")}
UNION_WORDS = ("the {w}", "{w}", "bilateral {w}", "the {w} on both sides", "{w} (both sides)",
               "the left and right {w} together", "total {w}")
UNION_PLURAL_WORDS = ("the {p}", "both {p}", "{p}", "the two {p}", "both {p} combined")

GROUP_PHRASES: dict[str, tuple[str, ...]] = {
    "3rd ventricle": ("the third ventricle", "the 3rd ventricle", "3rd ventricle", "third ventricle", "V3",
                      "the 3rd vent"),
    "4th ventricle": ("the fourth ventricle", "the 4th ventricle", "4th ventricle", "fourth ventricle", "V4",
                      "the 4th vent"),
    "brain-stem": ("the brainstem", "the brain stem", "brainstem", "the brain-stem", "the pons and medulla",
                   "brain stem"),
    "extra-ventricular csf": ("the extra-ventricular CSF", "the sulcal CSF", "the extracerebral CSF",
                              "the subarachnoid CSF", "CSF outside the ventricles", "the peripheral CSF"),
    "lateral ventricles": ("the lateral ventricles", "both lateral ventricles", "the LVs", "lateral ventricles",
                           "the lat vents", "the left and right lateral ventricles together"),
    "ventricles": ("the ventricles", "the ventricular system", "all ventricles", "the vents",
                   "the whole ventricular system", "ventricles", "the four ventricles"),
    "cerebellum": ("the cerebellum", "cerebellum", "the whole cerebellum", "the cerebellar hemispheres and vermis",
                   "the cerebellar hemispheres", "the entire cerebellum"),
    "gray matter": ("the gray matter", "the grey matter", "GM", "gray matter", "total grey matter",
                    "the total gray matter", "all gray matter"),
    "deep gray matter": ("the deep gray matter", "the deep grey matter", "subcortical gray matter", "deep GM",
                         "the subcortical grey matter", "the deep nuclei"),
    "white matter": ("the white matter", "WM", "white matter", "the total white matter", "all white matter",
                     "white-matter tissue"),
    "csf": ("the CSF", "CSF", "cerebrospinal fluid", "the cerebrospinal fluid", "the CSF spaces",
            "total CSF", "the fluid spaces"),
    "brain": ("the brain", "the whole brain", "brain tissue", "the brain parenchyma", "the total brain",
              "the entire brain", "brain"),
    "intracranial volume": ("the intracranial volume", "ICV", "TIV", "the total intracranial volume",
                            "the intracranial space", "the intracranial cavity", "the ICV", "the TIV",
                            "total intracranial vol"),
    "left hemisphere": ("the left hemisphere", "the left cerebral hemisphere", "the left half of the brain",
                        "the left side of the brain", "the left brain", "L hemisphere", "the LH"),
    "right hemisphere": ("the right hemisphere", "the right cerebral hemisphere", "the right half of the brain",
                         "the right side of the brain", "the right brain", "R hemisphere", "the RH"),
}
SHORT_VARS = {"brain": "brain", "gray matter": "gm", "white matter": "wm", "csf": "csf", "left hemisphere": "lh",
              "right hemisphere": "rh", "lesion": "lesion", "enhancing tumor": "enhancing", "edema": "edema",
              "necrosis": "necrosis", "intracranial volume": "intracranial", "3rd ventricle": "third_ventricle",
              "4th ventricle": "fourth_ventricle", "brain-stem": "brainstem", "extra-ventricular csf": "sulcal_csf",
              "deep gray matter": "deep_gm"}


def var_name(target: str) -> str:
    """Variable of a target's mask in ground-truth code: short where the old code had one, else snake case."""
    return SHORT_VARS.get(target) or re.sub(r"[^a-z0-9]+", "_", target.lower()).strip("_")


def _v2_phrases(name: str) -> tuple[str, ...]:
    if name in GROUP_PHRASES:
        return GROUP_PHRASES[name]
    side, _, base = name.partition(" ")
    if side in SIDE_WORDS and base in STRUCTURE_WORDS:
        return tuple(f.format(w=w) for w in STRUCTURE_WORDS[base][0] for f in SIDE_WORDS[side])
    if name in STRUCTURE_WORDS:
        singular, plural = STRUCTURE_WORDS[name]
        return (tuple(f.format(w=w) for w in singular for f in UNION_WORDS)
                + tuple(f.format(p=p) for p in plural for f in UNION_PLURAL_WORDS))
    raise KeyError(f"no wording for target {name!r}")


def _build_v2() -> dict[str, TargetDef]:
    from vision.targets import ANATOMY_TARGETS

    table = {n: TargetDef(n, var_name(n), _v2_phrases(n), (n,)) for n in ANATOMY_TARGETS}
    for name, (tissue, hemi) in {"left gray matter": ("gray matter", "left hemisphere"),
                                 "right gray matter": ("gray matter", "right hemisphere"),
                                 "left white matter": ("white matter", "left hemisphere"),
                                 "right white matter": ("white matter", "right hemisphere")}.items():
        table[name] = replace(TARGETS[name], generated=(tissue, hemi))
    for name in ("lesion", "enhancing tumor", "edema", "necrosis"):
        table[name] = TARGETS[name]
    return table


V2_TARGETS: dict[str, TargetDef] = _build_v2()
# bilateral structures for asymmetry: base -> (left target, right target, answer name, prompt wordings)
V2_PAIRS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    **{base: (f"left {base}", f"right {base}", STRUCTURE_WORDS[base][0] + STRUCTURE_WORDS[base][1])
       for base in ("hippocampus", "thalamus", "caudate", "putamen", "pallidum", "amygdala", "accumbens",
                    "ventral DC", "lateral ventricle", "cerebral cortex", "cerebral white matter",
                    "cerebellum cortex")},
    "hemisphere": ("left hemisphere", "right hemisphere", ("cerebral hemispheres", "hemispheres",
                                                           "brain hemispheres", "two hemispheres")),
    "gray matter": ("left gray matter", "right gray matter", ("gray matter", "grey matter", "GM")),
    "white matter": ("left white matter", "right white matter", ("white matter", "WM")),
}
# how often a target is drawn for a v2 task (the rest weigh 1): what users ask about most
V2_COMMON = {"brain": 4, "intracranial volume": 4, "hippocampus": 3, "left hippocampus": 3, "right hippocampus": 3,
             "lateral ventricles": 3, "ventricles": 2, "thalamus": 2, "gray matter": 2, "white matter": 2,
             "cerebral cortex": 2, "cerebral white matter": 2, "csf": 2, "left hemisphere": 1.5,
             "right hemisphere": 1.5, "cerebellum": 1.5, "brain-stem": 1.5, "amygdala": 1.5}
V2_ANATOMY: tuple[str, ...] = tuple(n for n, t in V2_TARGETS.items() if not t.lesion)


def v2_target(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    """A v2 anatomy target, weighted towards the structures users ask about most."""
    names = [n for n in V2_ANATOMY if n not in exclude]
    odds = np.array([V2_COMMON.get(n, 1.0) for n in names])
    return names[int(rng.choice(len(names), p=odds / odds.sum()))]


def table_of(case: object) -> dict[str, TargetDef]:
    """The target table a case speaks: all v2 targets on a label case, the old list on an MNI case."""
    from training.synth.label_case import LabelCase

    return V2_TARGETS if isinstance(case, LabelCase) else TARGETS


def volume_phrase(target: str) -> str:
    """`the {this}` in answers: "left hippocampus volume", but "intracranial volume", not "... volume volume"."""
    return target if target == "intracranial volume" else f"{target} volume"
