"""Warnings a result carries: what a reader should know before trusting its numbers.

An answer can be `succeeded` and still rest on weak ground: a step that failed before the agent
recovered, a scan whose slices are too thick for small structures, or an instruction (phi) the
agent emitted that is far from the one the vision network was trained with for the target it
named. Each warning is one sentence naming the step or scan it is about.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from agent.phi_bank import PhiBank, UnsupportedTargetError, phi_array
from agent.state import ScanInfo

# a voxel this much longer along one axis than along another, or slices thicker than this
THICK_RATIO = 2.5
THICK_MM = 3.0
# phis of a well-trained agent sit at cosine ~0.99 to the bank's; below this the mask is a guess
MIN_PHI_COSINE = 0.9
# a step token the model gave less than even odds: another program was nearly as likely
LOW_CONFIDENCE = 0.5
_FUNC_BEFORE = re.compile(r"(\w+)\s*$")
_TARGET_AFTER = re.compile(r'\s*,\s*(["\'])(.*?)\1')  # either quote: the sandbox takes both


def mod_sites(code: str) -> list[tuple[str | None, str | None]]:
    """(function, target string) of every ``<MOD>`` in ``code``, in order: the call it stands in
    (``encode``, ``generate``, ...) and, for ``generate(e, scan<MOD>, "target")``, the target."""
    sites: list[tuple[str | None, str | None]] = []
    for mod in re.finditer(r"<MOD>", code):
        depth, i = 0, mod.start() - 1
        while i >= 0:  # back to the unclosed "(" of the enclosing call
            if code[i] == ")":
                depth += 1
            elif code[i] == "(":
                if depth == 0:
                    break
                depth -= 1
            i -= 1
        name = _FUNC_BEFORE.search(code[:i]) if i >= 0 else None
        func = name.group(1) if name else None
        target = _TARGET_AFTER.match(code, mod.end()) if func == "generate" else None
        sites.append((func, target.group(2) if target else None))
    return sites


def thick_slice_warnings(scans: Sequence[ScanInfo]) -> list[str]:
    """One warning per scan whose voxels are anisotropic or thick enough to blur small structures."""
    out = []
    for scan in scans:
        if not scan.spacing:
            continue
        lo, hi = min(scan.spacing), max(scan.spacing)
        if hi >= THICK_MM or (lo > 0 and hi / lo >= THICK_RATIO):
            size = "x".join(f"{s:g}" for s in scan.spacing)
            out.append(f"scan {scan.name} has {size} mm voxels: thin structures (cortex, hippocampus, small "
                       "lesions) are measured coarsely along its thick axis")
    return out


def instruction_warnings(step: int, code: str, phis: Sequence[object], bank: PhiBank,
                         min_cosine: float = MIN_PHI_COSINE) -> list[str]:
    """Warnings for the generate instructions of one step that are far from the bank's for their target.

    ``phis`` are the vectors emitted at the step's ``<MOD>`` tokens, in order; the step's code says
    which of them drive ``generate`` and for which target string.
    """
    out = []
    for (func, target), phi in zip(mod_sites(code), phis):
        if func != "generate" or target is None:
            continue
        try:
            ref = bank.generate_phi(target)
        except UnsupportedTargetError:
            continue  # the sandbox reports an unknown target as the step's error
        vec = phi_array(phi).astype(np.float64)
        if vec.shape != ref.shape:
            continue
        cos = float(vec @ ref / max(np.linalg.norm(vec) * np.linalg.norm(ref), 1e-12))
        if cos < min_cosine:
            out.append(f"step {step}: the instruction for {target!r} is far from the one the vision network "
                       f"was trained with (cosine {cos:.2f}): its mask is low confidence")
    return out


def failed_step_warnings(trace: Sequence[object]) -> list[str]:
    """The steps that failed before the last one (the agent went on after each)."""
    return [f"step {t.index} failed and the agent went on: {t.error}"  # type: ignore[attr-defined]
            for t in list(trace)[:-1] if getattr(t, "error", None)]


def low_confidence_warnings(trace: Sequence[object], threshold: float = LOW_CONFIDENCE) -> list[str]:
    """Steps written with a token the model gave less than ``threshold`` probability.

    Why: a wrong program usually runs and answers fluently; the decoder's own doubt is the one
    signal available at run time that the request was read as something else (an unseen wording).
    """
    out = []
    for t in trace:
        conf = getattr(t, "confidence", None)
        if conf is not None and conf < threshold:
            out.append(f"step {t.index} was written with low confidence (a token at probability "  # type: ignore[attr-defined]
                       f"{conf:.2f}): check that the program does what was asked")
    return out
