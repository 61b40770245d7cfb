"""The task families: what case each needs, its prompt templates, its ground-truth program and answer.

Each family draws a case specification and its own choices (target, sequence, description), then,
given the synthesized case, writes the prompt, the program (`training.tasks.program`) and the
ground truth, computed independently of the sandbox with `voxel_ops` on the true masks or taken from
the lesion design (signal class, side, enhancement, restriction, growth).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import voxel_ops as vo
from agent.functions.types import Quantity, asymmetry_meaning
from training.synth import Case, CaseSpec, LesionSpec, ScanSpec
from training.synth.label_case import LabelCase, LabelCaseSpec
from training.tasks.grammar import expand, tidy
from training.tasks.lexicon import FRAMES, LEXICON, noisy
from training.tasks.program import Program, TaskSample
from training.tasks.targets import (
    BILATERAL_PAIRS,
    SCAN_PHRASES,
    SEQUENCE_NAMES,
    SIMPLE_TISSUE,
    STRUCTURE_WORDS,
    TARGETS,
    TISSUE,
    V2_PAIRS,
    table_of,
    truth_mask,
    v2_target,
    volume_phrase,
)


def q(value: float, unit: str | None) -> str:
    """A quantity as `read`/f-strings show it (agent.functions.types.Quantity.text)."""
    return Quantity(float(value), unit, "value").text


def q_asymmetry(index: float) -> str:
    """An asymmetry index as library ``asymmetry`` shows it: the number, then what its sign means."""
    return Quantity(float(index), None, "asymmetry", asymmetry_meaning(float(index))).text


@dataclass
class Draw:
    spec: CaseSpec | LabelCaseSpec  # a LabelCaseSpec puts the task on real anatomy (training.synth.label_case)
    params: dict[str, Any] = field(default_factory=dict)


HELD_OUT_TEMPLATE_START = 9  # a family's templates[9:] are evaluation-only; templates_extra adds training ones


class Family:
    name: str = ""
    templates: tuple[str, ...] = ()  # 9 training templates, then the held-out ones

    @property
    def all_templates(self) -> tuple[str, ...]:
        """``templates`` then the family's training-only extras: indices of ``templates`` keep their meaning."""
        from training.tasks.templates_extra import EXTRA_TEMPLATES

        return self.templates + EXTRA_TEMPLATES.get(self.name, ())

    def template_indices(self, which: str) -> list[int]:
        """``"train"``: the first nine and the extras; ``"held_out"``: the rest of ``templates``."""
        if which == "train":
            return list(range(HELD_OUT_TEMPLATE_START)) + list(range(len(self.templates), len(self.all_templates)))
        if which == "held_out":
            return list(range(HELD_OUT_TEMPLATE_START, len(self.templates)))
        raise ValueError(f"template set must be 'train' or 'held_out', got {which!r}")

    def draw(self, rng: np.random.Generator) -> Draw:
        raise NotImplementedError

    def draw_v2(self, rng: np.random.Generator) -> Draw:
        """The draw when label cases are available (``sample_task(..., labels=...)``).

        Anatomy families override it to draw a ``LabelCaseSpec`` (every ``vision.targets`` target);
        the lesion families keep their MNI cases, whose lesion design records what they ask about.
        """
        return self.draw(rng)

    def build(self, case: Case, draw: Draw, rng: np.random.Generator, template_index: int) -> TaskSample:
        raise NotImplementedError

    # helpers shared by the families
    def prompt(self, rng: np.random.Generator, template_index: int, bound: dict[str, Any]) -> str:
        bound = {k: (list(v) if isinstance(v, (list, tuple)) else [str(v)]) for k, v in bound.items()}
        core = tidy(expand(self.all_templates[template_index], rng, LEXICON, bound))
        # a frame (clinical context, filler, thanks) around it, then seeded typing noise
        return noisy(tidy(expand("{frame}", rng, FRAMES, {"core": [core]})), rng)

    def sample(self, program: Program, prompt: str, answer: str | None, expected: dict[str, Any],
               template_index: int, case: Case) -> TaskSample:
        return TaskSample(family=self.name, prompt=prompt, steps=program.finish(), answer=answer, expected=expected,
                          generate_calls=list(program.generate_calls), outputs=list(program.outputs),
                          template_index=template_index, seed=case.seed)


# ---------------------------------------------------------------- case helpers

TISSUE_MODALITIES = ("T1", "T1", "T2", "FLAIR", "CT", "MR")


def _scan_name(modality: str) -> str:
    return {"MR": "scan"}.get(modality, modality.lower())


def tissue_spec(rng: np.random.Generator, modality: str | None = None, lesion_prob: float = 0.25) -> CaseSpec:
    mod = modality or TISSUE_MODALITIES[int(rng.integers(len(TISSUE_MODALITIES)))]
    scan = ScanSpec(_scan_name(mod), mod, contrast="random" if mod == "MR" else None)
    count = (1, 2) if rng.random() < lesion_prob else (0, 0)
    return CaseSpec(scans=(scan,), lesions=LesionSpec(count=count, visible_on=("FLAIR", "T2", "T1", "CT", "random")))


def lesion_spec(rng: np.random.Generator, count: tuple[int, int] = (1, 1), **lesion: Any) -> CaseSpec:
    mod = ("FLAIR", "FLAIR", "T2", "T1C")[int(rng.integers(4))]
    vis = {"FLAIR": ("FLAIR",), "T2": ("T2",), "T1C": ("T1",)}[mod]
    lesion.setdefault("visible_on", vis)
    if mod == "T1C":
        lesion.setdefault("enhancing_prob", 1.0)
    return CaseSpec(scans=(ScanSpec(_scan_name(mod), mod),), lesions=LesionSpec(count=count, **lesion))


V2_MODALITIES = ("T1", "T1", "T1", "T2", "FLAIR", "CT", "MR", "PD")


def label_spec(rng: np.random.Generator, modality: str | None = None, lesion_prob: float = 0.15) -> LabelCaseSpec:
    """A label case with one scan (a share of them with painted lesions)."""
    mod = modality or V2_MODALITIES[int(rng.integers(len(V2_MODALITIES)))]
    lesions = (1, 2) if rng.random() < lesion_prob else (0, 0)
    return LabelCaseSpec(scans=(ScanSpec(_scan_name(mod), mod),), lesions=lesions)


def only_scan(case: Case | LabelCase) -> tuple[str, str]:
    spec = case.spec.scans[0]
    return spec.name, spec.modality


def pick(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


MIN_VOXELS = 8  # a v2 target must have at least this many voxels on the case to be asked about


def present(case: Case | LabelCase, target: str, scan: str) -> bool:
    return int(truth_mask(case, target, scan).array.sum()) >= MIN_VOXELS


def v2_pick(rng: np.random.Generator, case: LabelCase, scan: str, exclude: tuple[str, ...] = ()) -> str:
    """A v2 anatomy target present on the case (thick slices can lose the smallest structures)."""
    for _ in range(20):
        target = v2_target(rng, exclude)
        if present(case, target, scan):
            return target
    return "brain"


def target_for(rng: np.random.Generator, case: Case | LabelCase, lesion_share: float = 0.3) -> str:
    if case.lesions and rng.random() < lesion_share:
        return "lesion"
    if isinstance(case, LabelCase):
        return v2_pick(rng, case, only_scan(case)[0])
    return pick(rng, TISSUE)


# ---------------------------------------------------------------- ROI families

class Segment(Family):
    name = "segment"
    templates = (
        "{opener} {please} {segment_verb} {target} {scan_in} {closing}",
        "{segment_verb} {target}",
        "{please} {segment_verb} {target} on {scan}.",
        "I need a mask of {target} {scan_in}.",
        "Can you show me where {target} is {scan_in}?",
        "{opener} {target}: {segment_verb} it, {closing}",
        "Give me {target} as a segmentation {scan_in}.",
        "Which voxels belong to {target}? {segment_verb} them.",
        "{please} {segment_phrase} {target}.",
        "Segmentation request: {target} {scan_in}.",
        "Could you label {target} for me {scan_in}?",
        "I would like {target} delineated {scan_in}.",
    )

    def draw(self, rng):
        lesion_task = rng.random() < 0.3
        spec = lesion_spec(rng, (1, 2), edema_prob=0.4, heterogeneous_prob=0.4) if lesion_task else tissue_spec(rng)
        return Draw(spec, {"lesion_task": lesion_task})

    def draw_v2(self, rng):
        lesion_task = rng.random() < 0.2
        if lesion_task:
            return Draw(lesion_spec(rng, (1, 2), edema_prob=0.4, heterogeneous_prob=0.4), {"lesion_task": True})
        return Draw(label_spec(rng, lesion_prob=0.0), {"lesion_task": False})

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        if draw.params["lesion_task"]:
            options = ["lesion", "lesion"]
            if any(t.has_edema for t in case.lesions) and case.mask("edema", scan).array.any():
                options.append("edema")
            enhancing = any(t.enhancing for t in case.lesions)
            if mod == "T1C" and enhancing and case.mask("enhancing tumor", scan).array.any():
                options.append("enhancing tumor")
            target = pick(rng, options)
        else:
            target = target_for(rng, case, lesion_share=0.0)
        p = Program(table_of(case))
        p.encode([scan])
        var = p.segment(scan, target)
        p.output(var, target)
        answer = f"Here is the segmentation of the {target}."
        p.respond(answer)
        prompt = self.prompt(rng, ti, {"target": table_of(case)[target].phrases, "scan": SCAN_PHRASES[mod],
                                        "scan_in": ["", "in {scan}", "on {scan}", "from {scan}"]})
        truth = truth_mask(case, target, scan)
        return self.sample(p, prompt, answer, {"target": target, "target_voxels": int(truth.array.sum())}, ti, case)


class MeasureFamily(Family):
    """A single measurement of one target, answered with an f-string."""

    def draw(self, rng):
        return Draw(tissue_spec(rng))

    def draw_v2(self, rng):
        return Draw(label_spec(rng))

    def one_target(self, case: Case | LabelCase, rng: np.random.Generator) -> tuple[str, str, str, Program, str]:
        """The start every one-target measurement shares: (scan, modality, target, program, mask
        variable) after the program has encoded the scan and segmented a drawn target."""
        scan, mod = only_scan(case)
        target = target_for(rng, case)
        p = Program(table_of(case))
        p.encode([scan])
        return scan, mod, target, p, p.segment(scan, target)

    def bound(self, target: str, mod: str, case: Case | LabelCase | None = None) -> dict[str, Any]:
        table = table_of(case) if case is not None else TARGETS
        return {"target": table[target].phrases, "scan": SCAN_PHRASES[mod],
                "scan_in": ["", "", "in {scan}", "on {scan}", "using {scan}"]}


class Volume(MeasureFamily):
    name = "volume"
    templates = (
        "{what_is} the {volume_word} of {target} {in_units}?",
        "{how_big} {target}?",
        "{please} {measure_verb} the {volume_word} of {target} {scan_in}.",
        "{opener} {measure_verb} {target} volume {in_units}.",
        "How many {unit_ml} does {target} occupy?",
        "{vol_terse}",
        "I'd like to know the {volume_word} of {target}.",
        "Volume of {target} {scan_in}, {closing}",
        "{report_verb} the {volume_word} of {target} {in_units}.",
        # held out (index >= 9): wordings training never shows
        "What volume did {target} have {scan_in}?",
        "Quantify {target} in terms of volume {in_units}.",
        "Could I get a volumetric measurement of {target}?",
        "{target} -> how much space does it take up, in {unit_ml}?",
    )
    TERSE = {"intracranial volume": ["ICV?", "ICV", "TIV?", "TIV", "icv pls", "intracranial vol?", "eTIV?",
                                     "{target} vol?"],
             "brain": ["brain vol?", "total brain vol?", "brain volume?", "BV?", "whole brain vol"]}

    def build(self, case, draw, rng, ti):
        scan, mod, target, p, var = self.one_target(case, rng)
        p.line(f"v = volume({var})")
        p.respond(f"The {volume_phrase(target)} is {{v}}.", fstring=True)
        ml = vo.volume_ml(truth_mask(case, target, scan))
        bound = self.bound(target, mod, case) | ({"vol_terse": self.TERSE[target]} if target in self.TERSE else {})
        return self.sample(p, self.prompt(rng, ti, bound), f"The {volume_phrase(target)} is {q(ml, 'mL')}.",
                           {"target": target, "volume_ml": ml}, ti, case)


EXTENT_FUNCS = {"height": ("superior_inferior", "height_word"), "width": ("left_right", "width_word"),
                "depth": ("anterior_posterior", "depth_word")}


class Extents(MeasureFamily):
    name = "extents"
    templates = (
        "{what_is} the {which} of {target} {scan_in}?",
        "{please} {measure_verb} the {which} of {target} in {unit_mm}.",
        "How {adj} is {target}?",
        "{opener} {target}: {which}?",
        "{report_verb} the {which} of {target}.",
        "I need the {which} of {target} {scan_in}.",
        "Measure {target} along one axis: the {which}.",
        "What {which} does {target} span?",
        "{which} of {target} in {unit_mm}, {closing}",
        "Determine the {which} of {target}.",
        "Could you tell me the {which} of {target}?",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        target = target_for(rng, case)
        kind = pick(rng, ("height", "width", "depth", "all"))
        p = Program(table_of(case))
        p.encode([scan])
        var = p.segment(scan, target)
        truth = vo.extents_mm(truth_mask(case, target, scan))
        if kind == "all":
            p.line(f"x = extents({var})")
            p.respond(f"The {target} extents are {{x}}.", fstring=True)
            answer = f"The {target} extents are " + ", ".join(
                f"{k}={q(truth[k], 'mm')}" for k in ("left_right", "anterior_posterior", "superior_inferior")) + "."
            which = ["{extent_word}"]
            adj = ["large", "big"]
            expected = {f"{k}_mm": float(truth[k]) for k in truth}
        else:
            key, word = EXTENT_FUNCS[kind]
            p.line(f"x = {kind}({var})")
            p.respond(f"The {target} {kind} is {{x}}.", fstring=True)
            answer = f"The {target} {kind} is {q(truth[key], 'mm')}."
            which = ["{" + word + "}"]
            adj = {"height": ["tall", "high"], "width": ["wide", "broad"], "depth": ["deep", "long"]}[kind]
            expected = {f"{kind}_mm": float(truth[key])}
        bound = self.bound(target, mod, case) | {"which": which, "adj": adj}
        return self.sample(p, self.prompt(rng, ti, bound), answer, {"target": target, "kind": kind, **expected}, ti,
                           case)


class BoundingBox(MeasureFamily):
    name = "bounding_box"
    templates = (
        "{what_is} the {bbox_word} of {target}?",
        "{please} compute the {bbox_word} of {target} {scan_in}.",
        "Give the {bbox_word} around {target} in {unit_mm}.",
        "{opener} {bbox_word} of {target}?",
        "Where does {target} start and end along each axis?",
        "{report_verb} the {bbox_word} for {target}.",
        "I need the {bbox_word} of {target} {scan_in}.",
        "Find the {bbox_word} enclosing {target}.",
        "What are the min and max world coordinates of {target}?",
        "{target}: {bbox_word}, {closing}",
        "Determine the {bbox_word} of {target} in world coordinates.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod, target, p, var = self.one_target(case, rng)
        p.line(f"b = bbox({var})")
        p.respond(f"The {target} bounding box is {{b}}.", fstring=True)
        lo, hi = vo.bounding_box_mm(truth_mask(case, target, scan))
        parts = ([f"min_{a}={q(v, 'mm')}" for a, v in zip("xyz", lo)]
                 + [f"max_{a}={q(v, 'mm')}" for a, v in zip("xyz", hi)])
        expected = ({f"min_{a}_mm": float(v) for a, v in zip("xyz", lo)}
                    | {f"max_{a}_mm": float(v) for a, v in zip("xyz", hi)})
        return self.sample(p, self.prompt(rng, ti, self.bound(target, mod, case)),
                           f"The {target} bounding box is {', '.join(parts)}.", {"target": target, **expected},
                           ti, case)


class MeanIntensity(MeasureFamily):
    name = "mean_intensity"
    templates = (
        "{what_is} the {mean_word} of {target} {scan_in}?",
        "{please} {measure_verb} the {mean_word} inside {target}.",
        "How bright is {target} on average {scan_in}?",
        "{opener} {mean_word} within {target}?",
        "{report_verb} the {mean_word} of {target}.",
        "I need the {mean_word} over {target} {scan_in}.",
        "Average the voxel values inside {target}.",
        "What is {target}'s {mean_word}?",
        "{mean_word} of {target}, {closing}",
        "Compute the {mean_word} of {scan} within {target}.",
        "Tell me how intense {target} is on average {scan_in}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod, target, p, var = self.one_target(case, rng)
        p.line(f"m = mean_intensity({scan}, {var})")
        p.respond(f"The mean intensity of the {target} is {{m}}.", fstring=True)
        unit = "HU" if mod == "CT" else None
        mean = vo.intensity_stats(case.scans[scan], truth_mask(case, target, scan))["mean"]
        return self.sample(p, self.prompt(rng, ti, self.bound(target, mod, case)),
                           f"The mean intensity of the {target} is {q(mean, unit)}.",
                           {"target": target, "mean_intensity": float(mean)}, ti, case)


class Snr(MeasureFamily):
    name = "snr"
    templates = (
        "{what_is} the {snr_word} of {target} {scan_in}?",
        "{please} {measure_verb} the {snr_word} in {target}.",
        "How noisy is {scan} within {target}? Give the {snr_word}.",
        "{opener} {snr_word} for {target}?",
        "{report_verb} the {snr_word} of {target}.",
        "I need the {snr_word} of {target} {scan_in}.",
        "Estimate image quality as the {snr_word} inside {target}.",
        "What {snr_word} does {target} have?",
        "{snr_word} of {target}, {closing}",
        "Compute {snr_word} with {target} as the signal region.",
        "Determine the {snr_word} measured in {target} {scan_in}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        target = target_for(rng, case, lesion_share=0.1)
        p = Program(table_of(case))
        p.encode([scan])
        var = p.segment(scan, target)
        p.line(f"s = snr({scan}, {var})")
        p.respond(f"The SNR of the {target} is {{s}}.", fstring=True)
        value = vo.snr(case.scans[scan], truth_mask(case, target, scan))
        return self.sample(p, self.prompt(rng, ti, self.bound(target, mod, case)),
                           f"The SNR of the {target} is {q(value, None)}.",
                           {"target": target, "snr": float(value)}, ti, case)


class Crop(MeasureFamily):
    name = "crop"
    templates = (
        "{please} {crop_verb} {scan} {crop_tail} {margin_phrase}.",
        "{crop_verb} the image {crop_tail} {margin_phrase}.",
        "{opener} I only need the field of view {crop_tail}; {crop_verb} it {margin_phrase}.",
        "Reduce the field of view {crop_tail} {margin_phrase}.",
        "Make a cropped copy of {scan} {crop_tail} {margin_phrase}.",
        "Zoom in {crop_tail} {margin_phrase}, {closing}",
        "Crop {crop_tail} {margin_phrase}.",
        "Could you cut the volume down {crop_tail} {margin_phrase}?",
        "Give me {scan} restricted to a box {crop_tail} {margin_phrase}.",
        "I want a tight crop {crop_tail} {margin_phrase}.",
        "{please} trim {scan} {crop_tail} {margin_phrase}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        target = target_for(rng, case)
        margin = int(pick(rng, (0, 0, 3, 5, 8, 10, 12, 15, 20, 25, 30)))  # many values: the agent must copy it
        margin_alts = [a for a in LEXICON["margin_phrase"] if ("{margin}" in a) == (margin > 0)]
        p = Program(table_of(case))
        p.encode([scan])
        var = p.segment(scan, target)
        p.line(f"c = crop({scan}, {var}, {margin})")
        p.output("c", "cropped")
        answer = f"Here is the {SEQUENCE_NAMES[mod]} scan cropped around the {target}."
        p.respond(answer)
        cropped = vo.crop_to_mask(case.scans[scan], truth_mask(case, target, scan), float(margin))
        bound = self.bound(target, mod, case) | {"margin": str(margin), "margin_phrase": margin_alts}
        return self.sample(p, self.prompt(rng, ti, bound), answer,
                           {"target": target, "margin_mm": margin, "shape": tuple(cropped.shape)}, ti, case)


class KeepRemove(MeasureFamily):
    name = "keep_remove"
    templates = (
        "{please} {verb} {target} {scan_in}.",
        "{opener} {verb} {target}.",
        "Produce an image where you {verb} {target}.",
        "{verb} {target} from {scan}, {closing}",
        "Can you {verb} {target} {scan_in}?",
        "I need {scan} with an edit: {verb} {target}.",
        "Make a copy of {scan} and {verb} {target}.",
        "{please} {verb} {target} and give me the result.",
        "Edit the image: {verb} {target}.",
        "For display, {verb} {target} {scan_in}.",
        "{verb} {target} in the volume.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        target = target_for(rng, case)
        mode = pick(rng, ("keep", "remove"))
        p = Program(table_of(case))
        p.encode([scan])
        var = p.segment(scan, target)
        p.line(f"r = {mode}({scan}, {var})")
        p.output("r", "edited")
        answer = (f"Here is the image with only the {target} kept." if mode == "keep"
                  else f"Here is the image with the {target} removed.")
        p.respond(answer)
        truth = truth_mask(case, target, scan)
        fn = vo.keep_region if mode == "keep" else vo.remove_region
        edited = fn(case.scans[scan], truth)
        bound = self.bound(target, mod, case) | {"verb": ["{keep_verb}"] if mode == "keep" else ["{remove_verb}"]}
        return self.sample(p, self.prompt(rng, ti, bound), answer,
                           {"target": target, "mode": mode,
                            "edited_sum": float(np.sum(edited.array, dtype=np.float64))},
                           ti, case)


class Compare(MeasureFamily):
    name = "compare"
    templates = (
        "{what_is} the {how} between the volumes of {target} and {target2}?",
        "{please} {compare_verb} {target} and {target2} by volume ({how}).",
        "{opener} {how} of {target} volume to {target2} volume?",
        "Give me the volume {how} of {target} versus {target2}.",
        "{compare_verb} the size of {target} with {target2}: {how}, {closing}",
        "How does {target} compare to {target2} in volume? Report the {how}.",
        "{report_verb} the {how} of {target} and {target2} volumes.",
        "I need the {how} between {target} and {target2}.",
        "Volume {how}: {target} vs {target2}.",
        "Compute the {how} of the {target} volume relative to {target2}.",
        "{measure_verb} both {target} and {target2}, then their {how}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        a = target_for(rng, case, lesion_share=0.2)
        if isinstance(case, LabelCase):
            b = v2_pick(rng, case, scan, exclude=(a,))
        else:
            b = pick(rng, [t for t in SIMPLE_TISSUE if t != a] + ["brain"])
        if b == a:
            b = "brain" if a != "brain" else "white matter"
        how = pick(rng, ("ratio", "difference"))
        p = Program(table_of(case))
        p.encode([scan])
        va_, vb_ = p.segment(scan, a), p.segment(scan, b)
        p.line(f"v1 = volume({va_})")
        p.line(f"v2 = volume({vb_})")
        ml_a = vo.volume_ml(truth_mask(case, a, scan))
        ml_b = vo.volume_ml(truth_mask(case, b, scan))
        if how == "ratio":
            p.line("r = ratio(v1, v2)")
            p.respond(f"The ratio of the {volume_phrase(a)} to the {volume_phrase(b)} is {{r}}.", fstring=True)
            value = float(vo.ratio(ml_a, ml_b))
            answer = f"The ratio of the {volume_phrase(a)} to the {volume_phrase(b)} is {q(value, None)}."
        else:
            p.line("r = difference(v1, v2)")
            p.respond(f"The {volume_phrase(a)} minus the {volume_phrase(b)} is {{r}}.", fstring=True)
            value = ml_a - ml_b
            answer = f"The {volume_phrase(a)} minus the {volume_phrase(b)} is {q(value, 'mL')}."
        bound = self.bound(a, mod, case) | {"target2": table_of(case)[b].phrases,
                                      "how": ["{ratio_word}"] if how == "ratio" else ["{diff_word}"]}
        return self.sample(p, self.prompt(rng, ti, bound), answer,
                           {"target": a, "target2": b, "how": how, "value": value}, ti, case)


class Asymmetry(MeasureFamily):
    name = "asymmetry"
    templates = (
        "{what_is} the {asym_word} of the {structure}?",
        "{please} {measure_verb} the {asym_word} of the {structure} volume.",
        "Is the {structure} volume symmetric? Give the {asym_word}.",
        "{opener} {asym_word} between the left and right {structure}?",
        "Compare the left and right {structure}: {asym_word}.",
        "{report_verb} the {asym_word} for the {structure}.",
        "I need a {asym_word} of the {structure} {scan_in}.",
        "How asymmetric is the {structure} volume?",
        "Left versus right {structure}, {asym_word}, {closing}",
        "Compute the {asym_word} of the {structure} from the left and right volumes.",
        "Quantify the {asym_word} in the {structure}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        if isinstance(case, LabelCase):
            kinds = [k for k, (lt, rt, _) in V2_PAIRS.items() if present(case, lt, scan) and present(case, rt, scan)]
            kind = pick(rng, kinds)
            left, right, words = V2_PAIRS[kind]
        else:
            kind = pick(rng, tuple(BILATERAL_PAIRS))
            left, right = BILATERAL_PAIRS[kind]
            words = {"hemisphere": ("cerebral hemispheres", "hemispheres", "brain hemispheres"),
                     "gray matter": ("gray matter", "grey matter", "GM", "cortical gray matter"),
                     "white matter": ("white matter", "WM", "cerebral white matter")}[kind]
        p = Program(table_of(case))
        p.encode([scan])
        lv, rv = p.segment(scan, left), p.segment(scan, right)
        p.line(f"vl = volume({lv})")
        p.line(f"vr = volume({rv})")
        p.line("a = asymmetry(vl, vr)")
        p.respond(f"The {kind} asymmetry index is {{a}}.", fstring=True)
        ml_l = vo.volume_ml(truth_mask(case, left, scan))
        ml_r = vo.volume_ml(truth_mask(case, right, scan))
        value = float(vo.asymmetry_index(ml_l, ml_r))
        bound = {"structure": words, "scan": SCAN_PHRASES[mod], "scan_in": ["", "in {scan}", "on {scan}"]}
        return self.sample(p, self.prompt(rng, ti, bound), f"The {kind} asymmetry index is {q_asymmetry(value)}.",
                           {"structure": kind, "value": value, "left_ml": ml_l, "right_ml": ml_r}, ti, case)


class IcvNormalized(MeasureFamily):
    name = "icv_normalized"
    templates = (
        "{what_is} the volume of {target} {normalized_word} the {icv_word}?",
        "{please} {measure_verb} {target} volume {normalized_word} {icv_word}.",
        "{opener} {target} volume as a fraction of {icv_word}?",
        "Normalize the {target} volume by the {icv_word}.",
        "What share of the {icv_word} is {target}?",
        "{report_verb} {target} volume {normalized_word} the {icv_word}.",
        "Head-size corrected volume of {target}, {closing}",
        "I need the {icv_word}-normalized volume of {target}.",
        "Divide the volume of {target} by the {icv_word}.",
        "Express {target} relative to the {icv_word}.",
        "How big is {target} compared with the {icv_word}?",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        v2 = isinstance(case, LabelCase)
        icv_target = "intracranial volume" if v2 else "brain"  # the MNI cases have no CSF outside the brain mask
        target = target_for(rng, case, lesion_share=0.2)
        if target == icv_target:
            target = "brain" if v2 else "gray matter"
        p = Program(table_of(case))
        p.encode([scan])
        var, icv = p.segment(scan, target), p.segment(scan, icv_target)
        p.line(f"v = volume({var})")
        p.line(f"icv = volume({icv})")
        p.line("r = ratio(v, icv)")
        p.respond(f"The {target} volume normalized by intracranial volume is {{r}}.", fstring=True)
        value = float(vo.ratio(vo.volume_ml(truth_mask(case, target, scan)),
                               vo.volume_ml(truth_mask(case, icv_target, scan))))
        return self.sample(p, self.prompt(rng, ti, self.bound(target, mod, case)),
                           f"The {target} volume normalized by intracranial volume is {q(value, None)}.",
                           {"target": target, "value": value}, ti, case)


class Centroid(MeasureFamily):
    name = "centroid"
    templates = (
        "{what_is} the {centroid_word} of {target} {scan_in}?",
        "{please} {measure_verb} the {centroid_word} of {target} in {unit_mm}.",
        "Where is the {centroid_word} of {target}?",
        "{opener} {target}: {centroid_word}?",
        "{report_verb} the {centroid_word} {coords_word} of {target}.",
        "{target} {centroid_word} pls",
        "I need the {coords_word} of the {centroid_word} of {target} {scan_in}.",
        "Locate {target} by its {centroid_word}, {closing}",
        "Give the {centroid_word} of {target} as x, y, z.",
        # held out (index >= 9)
        "At which point in space does {target} have its middle?",
        "Find the average voxel position of {target} in world space.",
        "Compute where {target} is centred on average, in {unit_mm}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod, target, p, var = self.one_target(case, rng)
        p.line(f"c = centroid({var})")
        p.respond(f"The {target} centroid is {{c}}.", fstring=True)
        point = vo.centroid_mm(truth_mask(case, target, scan))
        answer = f"The {target} centroid is " + ", ".join(f"{a}={q(v, 'mm')}" for a, v in zip("xyz", point)) + "."
        return self.sample(p, self.prompt(rng, ti, self.bound(target, mod, case)), answer,
                           {"target": target, **{f"{a}_mm": float(v) for a, v in zip("xyz", point)}}, ti, case)


class MultiVolume(MeasureFamily):
    """Several targets in one request ("volumes of the left and right hippocampus and the thalamus")."""

    name = "multi_volume"
    templates = (
        "{what_is} the {volumes_word} of {targets}?",
        "{please} {measure_verb} the {volumes_word} of {targets} {each_word}.",
        "{opener} {targets}: {volumes_word}?",
        "I need {volumes_word} for {targets} {in_units}.",
        "{report_verb} the {volume_word} of {targets} {each_word}.",
        "{targets} vols?",
        "How big are {targets}? Give each volume {in_units}.",
        "Volumes please: {targets}, {closing}",
        "{measure_verb} {targets} and give me the {volumes_word}.",
        # held out (index >= 9)
        "Could you tell me how much room {targets} take up, one number each?",
        "Report a separate volume for every one of these: {targets}.",
        "Volumetry requested for {targets}.",
    )
    THREE = ["{target}, {target2} and {target3}", "{target}, {target2}, {target3}", "{target} & {target2} & {target3}",
             "{target}, {target2} as well as {target3}", "{target} and {target2} and {target3}"]
    PAIR = ["the left and right {struct}", "left and right {struct}", "L and R {struct}", "both {struct} separately",
            "the left and the right {struct}"]

    def _targets(self, rng, case, scan) -> tuple[list[str], str | None]:
        """2-3 distinct targets; on label cases often a left/right pair (its base word is returned)."""
        n = 3 if rng.random() < 0.35 else 2
        if not isinstance(case, LabelCase):
            names = list(rng.permutation(list(TISSUE)))[:n]
            return [str(t) for t in names], None
        base = None
        if rng.random() < 0.5:
            bases = [b for b in STRUCTURE_WORDS
                     if present(case, f"left {b}", scan) and present(case, f"right {b}", scan)]
            base = pick(rng, bases)
            chosen = [f"left {base}", f"right {base}"]
        else:
            chosen = [v2_pick(rng, case, scan)]
        while len(chosen) < n:
            chosen.append(v2_pick(rng, case, scan, exclude=tuple(chosen)))
        return chosen, base

    def distinct_targets(self, rng, case, scan) -> tuple[list[str], str | None]:
        """`_targets`, made distinct and at least two (v2_pick may fall back to a chosen target)."""
        targets, base = self._targets(rng, case, scan)
        if len(set(targets)) < len(targets):
            targets = list(dict.fromkeys(targets))
        if len(targets) < 2:
            targets.append("intracranial volume" if targets[0] != "intracranial volume" else "brain")
        return targets, base

    def targets_bound(self, targets: list[str], base: str | None, mod: str, case) -> dict[str, Any]:
        """Template bindings naming every target ({targets}), with left/right pair wordings."""
        table = table_of(case)
        bound = self.bound(targets[0], mod, case) | {"target2": table[targets[1]].phrases}
        if len(targets) == 3:
            bound |= {"target3": table[targets[2]].phrases, "targets": self.THREE}
            if base is not None:
                bound["targets"] = self.THREE + [f"{a} and {{target3}}" for a in self.PAIR]
        elif base is not None:
            bound["targets"] = LEXICON["targets"] + self.PAIR
        if base is not None:
            singular, plural = STRUCTURE_WORDS[base]
            bound["struct"] = list(singular + plural)
        return bound

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        targets, base = self.distinct_targets(rng, case, scan)
        table = table_of(case)
        p = Program(table)
        p.encode([scan])
        masks = [p.segment(scan, t) for t in targets]
        names = [f"v{i + 1}" for i in range(len(targets))]
        for var, mask in zip(names, masks):
            p.line(f"{var} = volume({mask})")
        mls = [vo.volume_ml(truth_mask(case, t, scan)) for t in targets]

        def sentence(values: list[str]) -> str:
            parts = [f"the {volume_phrase(t)} is {v}" for t, v in zip(targets, values)]
            text = ", ".join(parts[:-1]) + " and " + parts[-1]
            return text[:1].upper() + text[1:] + "."

        p.respond(sentence(["{" + n + "}" for n in names]), fstring=True)
        answer = sentence([q(ml, "mL") for ml in mls])
        bound = self.targets_bound(targets, base, mod, case)
        return self.sample(p, self.prompt(rng, ti, bound), answer,
                           {"targets": targets, "volumes_ml": mls}, ti, case)
