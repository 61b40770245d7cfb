"""The report family: "give me a report of this scan" answered by a short structured report.

Why a family of its own: a report is many measurements at once (the main structures, their share of
the intracranial volume, left-right asymmetries, lesions and their side), and every sentence of it
must rest on a number the program computed (issue 20, "A grounded report"). The program therefore
formats each number into text in the step that computes it (the global measures into ``rep = f"..."``
in the first measuring step, the paired structures and lesions into the final ``respond(f"...")``),
so the sandbox records each metric with that step and `agent.grounding` can link every sentence of
the answer to its metrics and step. The lesion search ends the first measuring step (its count is
read back); the last step characterizes the lesions only when there are some.

On label cases (real anatomy, every ``vision.targets`` target) the report covers the intracranial
volume, brain, cerebral cortex, cerebral white matter, lateral ventricles and hippocampi; the MNI
cases only know brain, gray and white matter, CSF and the hemispheres, so their report normalizes
by the brain volume and says so. Lesions found on an MNI case also get their signal on the scan.
The truth is computed apart from the sandbox, with ``voxel_ops`` on the true masks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

import voxel_ops as vo
from agent.functions.library import SIGNAL_CONTRAST
from training.synth.label_case import LabelCase
from training.tasks.families import (
    Draw,
    Family,
    label_spec,
    lesion_spec,
    only_scan,
    present,
    q,
    q_asymmetry,
    tissue_spec,
)
from training.tasks.program import Program
from training.tasks.targets import SCAN_PHRASES, SEQUENCE_NAMES, table_of, truth_mask

SIGN_NOTE = "Positive asymmetry indices mean the left side is larger."


@dataclass(frozen=True)
class Part:
    """One step's share of a report: what it measures and how its sentences read.

    ``volumes``: (variable, target) pairs; ``ratios`` and ``asymmetries``: (variable, first, second)
    over volume variables; ``sentences``: text with ``{variable}`` fields (a sentence is left out when
    one of its structures is missing from the case, e.g. a hippocampus lost between thick slices).
    """

    volumes: tuple[tuple[str, str], ...]
    ratios: tuple[tuple[str, str, str], ...] = ()
    asymmetries: tuple[tuple[str, str, str], ...] = ()
    sentences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """A report in two parts: the global measures (first step, with the lesion search, whose count
    decides the last step) and the paired structures (last step, with the lesion characterization).

    Why two parts: one step holding every measurement runs past the runtime's ``max_step_tokens``.
    """

    first: Part
    second: Part
    white_matter: str  # target the lesion signal is compared against (MNI cases)


LABEL_LAYOUT = Layout(
    first=Part(volumes=(("vi", "intracranial volume"), ("vb", "brain"), ("vc", "cerebral cortex"),
                        ("vw", "cerebral white matter")),
               ratios=(("fb", "vb", "vi"), ("fc", "vc", "vi"), ("fw", "vw", "vi")),
               sentences=("Intracranial volume: {vi}.", "Brain volume: {vb} ({fb} of ICV).",
                          "Cerebral cortex: {vc} ({fc} of ICV).", "Cerebral white matter: {vw} ({fw} of ICV).")),
    second=Part(volumes=(("vv", "lateral ventricles"), ("vl", "left lateral ventricle"),
                         ("vr", "right lateral ventricle"), ("hl", "left hippocampus"), ("hr", "right hippocampus")),
                ratios=(("fv", "vv", "vi"),),
                asymmetries=(("av", "vl", "vr"), ("ah", "hl", "hr")),
                sentences=("Lateral ventricles: {vv} ({fv} of ICV), asymmetry index {av}.",
                           "Hippocampus: left {hl}, right {hr}, asymmetry index {ah}.")),
    white_matter="cerebral white matter",
)
MNI_LAYOUT = Layout(
    first=Part(volumes=(("vb", "brain"), ("vg", "gray matter"), ("vw", "white matter"), ("vc", "cerebrospinal fluid")),
               ratios=(("fg", "vg", "vb"), ("fw", "vw", "vb"), ("fc", "vc", "vb")),
               sentences=("Brain volume: {vb}.", "Gray matter: {vg} ({fg} of brain).",
                          "White matter: {vw} ({fw} of brain).", "CSF: {vc} ({fc} of brain).")),
    second=Part(volumes=(("vl", "left hemisphere"), ("vr", "right hemisphere")),
                asymmetries=(("ah", "vl", "vr"),),
                sentences=("Hemispheres: left {vl}, right {vr}, asymmetry index {ah}.",)),
    white_matter="white matter",
)


def _fields(sentence: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", sentence)


def truth_signal(scan: vo.Volume, lesion: vo.Volume, reference: vo.Volume) -> str:
    """Signal class of the true lesion against true white matter, by the library's rule.

    Why not the lesion design's class: with two lesions of different classes the union has no design
    class, and the report asks about the union; the rule (mean contrast to the reference, scaled by the
    reference's mean or spread) applied to the true masks is what a perfect segmentation would read.
    """
    inside = vo.intensity_stats(scan, lesion)["mean"]
    ref = vo.intensity_stats(scan, reference)
    contrast = (inside - ref["mean"]) / max(abs(ref["mean"]), ref["std"], 1e-6)
    return "hyperintense" if contrast > SIGNAL_CONTRAST else "hypointense" if contrast < -SIGNAL_CONTRAST \
        else "isointense"


class Report(Family):
    name = "report"
    templates = (
        "{opener} {please} give me a {report_noun} of {this_scan} {closing}",
        "{please} {summarize_verb} the {morphometry_word} {scan_in}.",
        "{report_noun} please",
        "{opener} can I get a {report_noun} {scan_in}?",
        "{please} write a {report_noun} of the {morphometry_word}, {closing}",
        "{summarize_verb} {this_scan}: {morphometry_word} and any {lesions_word}.",
        "I need a {report_noun} for {this_scan}.",
        "Draft a {report_noun} with the {morphometry_word} {scan_in}.",
        "{opener} {morphometry_word} {report_noun}?",
        # held out (index >= 9): wordings training never shows
        "What are the headline numbers for this brain, and is anything abnormal?",
        "Put together a concise quantitative read-out of {this_scan}.",
        "Walk me through the key volumes, normalised to head size, plus any {lesion_word} you can find.",
    )

    def draw(self, rng: np.random.Generator) -> Draw:
        if rng.random() < 0.5:
            return Draw(lesion_spec(rng, (1, 2)))
        return Draw(tissue_spec(rng, lesion_prob=0.0))

    def draw_v2(self, rng: np.random.Generator) -> Draw:
        return Draw(label_spec(rng, lesion_prob=0.4))

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        v2 = isinstance(case, LabelCase)
        layout = LABEL_LAYOUT if v2 else MNI_LAYOUT
        p = Program(table_of(case))
        p.encode([scan])
        truth: dict[str, tuple[float, str | None]] = {}
        targets: dict[str, str] = {}
        first = self._part(p, case, scan, layout.first, truth, targets)
        p.line(f'rep = f"{" ".join(first)}"')
        lesion = p.generate(scan, "lesion")
        lesion_truth = truth_mask(case, "lesion", scan)
        n = int(vo.connected_components(lesion_truth).count) if lesion_truth.array.any() else 0
        p.line(f"n = count_components({lesion})")
        p.line("read(n)")
        p.end_step()

        second = self._part(p, case, scan, layout.second, truth, targets)
        if any(var in truth for var, _, _ in (*layout.first.asymmetries, *layout.second.asymmetries)):
            second.append(SIGN_NOTE)
        expected: dict[str, Any] = {"v2": v2, "lesion_count": n, "targets": targets,
                                    "values": {var: value for var, (value, _) in truth.items()}}
        asymmetries = {var for var, _, _ in (*layout.first.asymmetries, *layout.second.asymmetries)}
        filled = {var: q_asymmetry(value) if var in asymmetries else q(value, unit)
                  for var, (value, unit) in truth.items()} | {"n": str(n)}
        tail = "Lesions: {n} found"
        if n:
            p.line(f"lv = volume({lesion})")
            p.line(f"side = hemisphere({lesion})")
            tail += ", total volume {lv}, side: {side}"
            filled["lv"] = q(vo.volume_ml(lesion_truth), "mL")
            filled["side"] = str(vo.hemisphere(lesion_truth))
            expected |= {"lesion_volume_ml": vo.volume_ml(lesion_truth), "side": filled["side"],
                         "design_sides": sorted({t.side for t in case.lesions})}
            if not v2:
                wm = p.segment(scan, layout.white_matter)
                p.line(f"sig = signal({scan}, {lesion}, {wm})")
                tail += ", {sig} on " + SEQUENCE_NAMES[mod]
                filled["sig"] = truth_signal(case.scans[scan], lesion_truth,
                                             truth_mask(case, layout.white_matter, scan))
                classes = {t.signal.get(mod) for t in case.lesions}
                expected |= {"signal": filled["sig"], "design_signal": classes.pop() if len(classes) == 1 else None}
        closing = " ".join([*second, tail + "."])
        p.line(f'respond(f"{{rep}} {closing}")')
        answer = " ".join(s.format(**filled) for s in [*first, closing])
        bound = {"scan": SCAN_PHRASES[mod], "scan_in": ["", "", "of {scan}", "for {scan}", "from {scan}"]}
        return self.sample(p, self.prompt(rng, ti, bound), answer, expected, ti, case)

    @staticmethod
    def _part(p: Program, case, scan: str, part: Part, truth: dict[str, tuple[float, str | None]],
              targets: dict[str, str]) -> list[str]:
        """Write one part's measurements into ``p`` and their true values into ``truth``; its sentences.

        Only what a kept sentence needs is measured; a structure missing from the case (fewer than
        ``MIN_VOXELS``) drops the sentences that name it (its ratio or asymmetry would be undefined).
        """
        have = set(truth) | {var for var, t in part.volumes if present(case, t, scan)}
        derived = [d for d in (*part.ratios, *part.asymmetries) if {d[1], d[2]} <= have]
        have |= {var for var, _, _ in derived}
        sentences = [s for s in part.sentences if set(_fields(s)) <= have]
        used = {f for s in sentences for f in _fields(s)}
        derived = [d for d in derived if d[0] in used]
        needed = used | {x for _, a, b in derived for x in (a, b)}
        volumes = [(var, t) for var, t in part.volumes if var in needed and var not in truth]
        masks = {var: p.segment(scan, t) for var, t in volumes}
        for var, t in volumes:
            p.line(f"{var} = volume({masks[var]})")
            truth[var] = (vo.volume_ml(truth_mask(case, t, scan)), "mL")
            targets[var] = t
        for var, a, b in derived:
            if (var, a, b) in part.ratios:
                p.line(f"{var} = ratio({a}, {b})")
                truth[var] = (float(vo.ratio(truth[a][0], truth[b][0])), None)
            else:
                p.line(f"{var} = asymmetry({a}, {b})")
                truth[var] = (float(vo.asymmetry_index(truth[a][0], truth[b][0])), None)
        return sentences


__all__ = ["LABEL_LAYOUT", "MNI_LAYOUT", "Layout", "Part", "Report", "SIGN_NOTE", "truth_signal"]
