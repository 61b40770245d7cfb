"""Targets the tasks talk about: their wordings, how ground-truth code obtains them, their true masks.

Tissue targets that the vision model does not generate directly (left/right gray or white matter)
are composed in code from two generated masks with `intersection`, the way an expert would.
Generated target strings are names from `agent.phi_bank.DEFAULT_TARGETS`.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    "MR": ("the scan", "the MRI", "the image", "this scan", "the volume"),
}
SEQUENCE_NAMES = {"T1": "T1", "T1C": "post-contrast T1", "T2": "T2", "FLAIR": "FLAIR", "CT": "CT", "DWI": "DWI",
                  "ADC": "ADC", "MR": "the scan"}


def truth_mask(case: Case, target: str, scan: str, *, lesion: int | None = None) -> Volume:
    """Ground-truth mask of a (possibly composed) target on the grid of `scan`."""
    t = TARGETS[target]
    masks = [case.mask(g, scan, lesion=lesion if TARGETS.get(g, t).lesion else None) for g in t.generated]
    arr = masks[0].array.astype(bool)
    for m in masks[1:]:
        arr &= m.array.astype(bool)
    return masks[0].with_array(arr.astype(np.uint8), series_description=target)
