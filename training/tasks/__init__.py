"""Task families with recursive prompt templates and ground-truth programs (VoxelPrompt 3.2, 4.1, 4.2).

`sample_task(seed)` draws a family, synthesizes the case it needs and returns both; every choice
is seeded, so a seed names one (prompt, program, case) triple.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from training.synth import Case, synthesize_case
from training.synth.label_case import LabelCase, LabelCaseSource, LabelCaseSpec, default_source
from training.tasks.families import (
    HELD_OUT_TEMPLATE_START,
    Asymmetry,
    BoundingBox,
    Centroid,
    Compare,
    Crop,
    Draw,
    Extents,
    Family,
    IcvNormalized,
    KeepRemove,
    MeanIntensity,
    MultiVolume,
    Segment,
    Snr,
    Volume,
)
from training.tasks.families_combined import MultiSegment, SegmentVolume
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
from training.tasks.families_report import Report
from training.tasks.program import MOD, STEP, TaskSample

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Segment(), Volume(), Extents(), BoundingBox(), MeanIntensity(), Snr(), Crop(), KeepRemove(), Compare(),
    Asymmetry(), IcvNormalized(), Longitudinal(), LesionCount(), LesionSignal(), LesionSide(), LesionRegion(),
    Enhancement(), Restriction(), TargetLesion(), OutOfScope(), Centroid(), MultiVolume(), Report(),
    SegmentVolume(), MultiSegment(),
)}


def _allowed(fam: Family, templates: Sequence[int] | str | None) -> list[int]:
    """Template indices a draw may use: a named set (``"train"``, ``"held_out"``), a list, or all."""
    if isinstance(templates, str):
        return fam.template_indices(templates)
    allowed = list(templates) if templates is not None else list(range(len(fam.all_templates)))
    return [t for t in allowed if t < len(fam.all_templates)] or [0]


def case_for(draw: Draw, seed: int, source: LabelCaseSource | None) -> Case | LabelCase:
    """The case a family's draw asks for: real anatomy from ``source`` for a label-case spec, else
    an MNI case synthesized from the spec (a label-case spec with no source is a caller's error)."""
    if isinstance(draw.spec, LabelCaseSpec):
        if source is None:
            raise ValueError("this draw needs real anatomy: pass a LabelCaseSource")
        return source.case(seed, draw.spec)
    return synthesize_case(seed, draw.spec)


def sample_task(seed: int, family: str | None = None, *, templates: Sequence[int] | str | None = None,
                labels: LabelCaseSource | bool | None = None) -> tuple[TaskSample, Case | LabelCase]:
    """One task: family (random unless given), its case, prompt, program and ground truth.

    `templates` restricts the template indices: ``"train"`` or ``"held_out"`` (the family's own split,
    ``Family.template_indices``) or a list of indices.
    `labels`: where real anatomy comes from. None (default) keeps every task on the MNI cases and the old
    19-target list (what the current trainer's phi bank knows); a `LabelCaseSource` (or True: the
    training subjects of ../shared/data/synthseg) puts the anatomy families on label cases that speak
    every `vision.targets` target, while the lesion families stay on MNI cases.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(b"task")])
    name = family or list(FAMILIES)[int(rng.integers(len(FAMILIES)))]
    fam = FAMILIES[name]
    source = default_source() if labels is True else (labels or None)
    draw = fam.draw_v2(rng) if source is not None else fam.draw(rng)
    case = case_for(draw, seed, source)
    allowed = _allowed(fam, templates)
    ti = int(allowed[int(rng.integers(len(allowed)))])
    return fam.build(case, draw, rng, ti), case


def sample_task_variants(seed: int, variants: int, *, templates: Sequence[int] | str | None = None,
                         labels: LabelCaseSource | bool | None = None) -> list[tuple[TaskSample, Case | LabelCase]]:
    """``sample_task(seed)`` plus ``variants - 1`` more tasks of the same family on the same case.

    Synthesizing a case costs far more than writing a prompt and program for it, so a language
    trainer gets several tasks (other templates, wordings and choices of target) per case. The
    first element equals ``sample_task(seed, templates=templates, labels=labels)``.
    """
    first, case = sample_task(seed, templates=templates, labels=labels)
    out: list[tuple[TaskSample, Case | LabelCase]] = [(first, case)]
    fam = FAMILIES[first.family]
    rng0 = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(b"task")])
    rng0.integers(len(FAMILIES))  # the family draw of sample_task
    source = default_source() if labels is True else (labels or None)
    draw = fam.draw_v2(rng0) if source is not None else fam.draw(rng0)  # the same draw: the same case spec
    allowed = _allowed(fam, templates)
    for j in range(1, variants):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(b"variant"), j])
        ti = int(allowed[int(rng.integers(len(allowed)))])
        out.append((fam.build(case, draw, rng, ti), case))
    return out


__all__ = ["FAMILIES", "HELD_OUT_TEMPLATE_START", "MOD", "STEP", "LabelCaseSource", "TaskSample", "case_for",
           "sample_task", "sample_task_variants"]
