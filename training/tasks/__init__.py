"""Task families with recursive prompt templates and ground-truth programs (VoxelPrompt 3.2, 4.1, 4.2).

`sample_task(seed)` draws a family, synthesizes the case it needs and returns both; every choice
is seeded, so a seed names one (prompt, program, case) triple.
"""
from __future__ import annotations

import zlib

import numpy as np

from training.synth import Case, synthesize_case
from training.tasks.families import (
    Asymmetry,
    BoundingBox,
    Compare,
    Crop,
    Extents,
    Family,
    IcvNormalized,
    KeepRemove,
    MeanIntensity,
    Segment,
    Snr,
    Volume,
)
from training.tasks.families_lesion import (
    Enhancement,
    LesionCount,
    LesionRegion,
    LesionSide,
    LesionSignal,
    Longitudinal,
    OutOfScope,
    Restriction,
    TargetLesion,
)
from training.tasks.program import MOD, STEP, TaskSample

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Segment(), Volume(), Extents(), BoundingBox(), MeanIntensity(), Snr(), Crop(), KeepRemove(), Compare(),
    Asymmetry(), IcvNormalized(), Longitudinal(), LesionCount(), LesionSignal(), LesionSide(), LesionRegion(),
    Enhancement(), Restriction(), TargetLesion(), OutOfScope(),
)}


def sample_task(seed: int, family: str | None = None, *, templates: list[int] | None = None
                ) -> tuple[TaskSample, Case]:
    """One task: family (random unless given), its case, prompt, program and ground truth.

    `templates` restricts the template indices (e.g. hold some out for evaluation).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(b"task")])
    name = family or list(FAMILIES)[int(rng.integers(len(FAMILIES)))]
    fam = FAMILIES[name]
    draw = fam.draw(rng)
    case = synthesize_case(seed, draw.spec)
    allowed = templates if templates is not None else list(range(len(fam.templates)))
    allowed = [t for t in allowed if t < len(fam.templates)] or [0]
    ti = int(allowed[int(rng.integers(len(allowed)))])
    return fam.build(case, draw, rng, ti), case


__all__ = ["FAMILIES", "MOD", "STEP", "TaskSample", "sample_task"]
