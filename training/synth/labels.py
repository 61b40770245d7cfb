"""The uint8 code scheme of synthesized label maps and the target masks derived from it.

One code map per scan grid holds everything: tissue, hemisphere, extra-cerebral shells and lesion
parts. A target is a boolean lookup table over the 256 codes, so any mask is one `take` away.

Target definitions (these are the ground truth the model is trained on):
* "brain": intracranial brain mask = CSF + GM + WM + every lesion part (edema included); this is
  also the intracranial volume (ICV) used for normalisation.
* "gray matter" / "white matter" / "cerebrospinal fluid": healthy tissue only (lesion parts and edema
  are excluded, as FreeSurfer-style labels keep lesions apart from normal tissue).
* "left hemisphere" / "right hemisphere": brain voxels of that side (anatomical side, carried through
  all deformations; lesions included).
* "lesion": every lesion part except edema (solid lesion, enhancing rim, necrotic core).
* "enhancing tumor": parts that enhance on a post-contrast scan (rim of heterogeneous enhancing
  lesions, whole solid enhancing lesions). "necrosis": necrotic cores. "edema": surrounding edema.
* "skull", "extra-cerebral tissue": synthetic shells (labelled background for every brain target).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

AIR, CSF, GM, WM = 0, 1, 2, 3
SHELL_FIRST, SHELL_LAST = 4, 63  # extra-cerebral distance bins (1 mm each)
LESION_FIRST = 64
MAX_LESIONS = 8
RIGHT_BIT = 128
LOW_MASK = 127

# lesion parts: code = LESION_FIRST + 8 * lesion_index + part
PART_SOLID, PART_RIM, PART_CORE, PART_EDEMA = 0, 1, 2, 3
# per-case shell layers, written into the low bits of shell codes by a per-case lookup table
LAYER_DURA, LAYER_SKULL, LAYER_SCALP = "dura", "skull", "scalp"

TISSUE_TARGETS = ("brain", "gray matter", "white matter", "cerebrospinal fluid",
                  "left hemisphere", "right hemisphere")
LESION_TARGETS = ("lesion", "enhancing tumor", "necrosis", "edema")
SHELL_TARGETS = ("skull", "extra-cerebral tissue")
ALL_TARGETS = TISSUE_TARGETS + LESION_TARGETS + SHELL_TARGETS


def lesion_code(index: int, part: int) -> int:
    if not 0 <= index < MAX_LESIONS:
        raise ValueError(f"at most {MAX_LESIONS} lesions per case")
    return LESION_FIRST + 8 * index + part


def lesion_part_of(low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lesion index, part) for low codes >= LESION_FIRST (garbage elsewhere)."""
    rel = low.astype(np.int32) - LESION_FIRST
    return rel // 8, rel % 8


def target_lut(target: str, *, enhancing_lesions: Iterable[int] = (), lesion_index: int | None = None,
               skull_bins: tuple[int, int] | None = None, head_last_bin: int | None = None) -> np.ndarray:
    """Boolean lookup table over the 256 codes for one target.

    `enhancing_lesions`: lesion indices that enhance (for "enhancing tumor"). `lesion_index`: restrict
    "lesion"/"edema"/... to one lesion. `skull_bins`: (first, last) shell distance bins of the skull.
    """
    codes = np.arange(256)
    low = codes & LOW_MASK
    right = codes >= RIGHT_BIT
    is_lesion_code = low >= LESION_FIRST
    index, part = lesion_part_of(low)
    in_index = is_lesion_code & ((index == lesion_index) if lesion_index is not None else True)
    brain = ((low >= CSF) & (low <= WM)) | is_lesion_code
    if target == "brain":
        return brain
    if target == "gray matter":
        return low == GM
    if target == "white matter":
        return low == WM
    if target in ("cerebrospinal fluid", "csf"):
        return low == CSF
    if target == "left hemisphere":
        return brain & ~right
    if target == "right hemisphere":
        return brain & right
    if target == "lesion":
        return in_index & (part != PART_EDEMA)
    if target == "edema":
        return in_index & (part == PART_EDEMA)
    if target == "necrosis":
        return in_index & (part == PART_CORE)
    if target == "enhancing tumor":
        enh = np.isin(index, list(enhancing_lesions))
        return in_index & enh & ((part == PART_SOLID) | (part == PART_RIM))
    shells = (low >= SHELL_FIRST) & (low <= SHELL_LAST)
    if target == "extra-cerebral tissue":
        return shells & (low - SHELL_FIRST <= (head_last_bin if head_last_bin is not None else -1))
    if target == "skull":
        if skull_bins is None:
            return np.zeros(256, dtype=bool)
        return shells & (low - SHELL_FIRST >= skull_bins[0]) & (low - SHELL_FIRST <= skull_bins[1])
    raise KeyError(f"unknown target {target!r}; known: {', '.join(ALL_TARGETS)}")
