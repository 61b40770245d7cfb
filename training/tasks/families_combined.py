"""Requests that ask for more than one thing of one kind: a mask and its volume, masks of several targets.

Why (issue #20): "segment the white matter and give its volume" got a mask and no volume, and
"segment A and B" got a mask of A only: no training program ever answered both halves. These
families give the agent programs that do: output the mask, then measure it; output every mask asked
for. Targets, scans and case draws are those of the single-target families they extend.
"""
from __future__ import annotations

import voxel_ops as vo
from training.tasks.families import MeasureFamily, MultiVolume, only_scan, q
from training.tasks.program import Program
from training.tasks.targets import table_of, truth_mask, volume_phrase


class SegmentVolume(MeasureFamily):
    """One target, segmented (an output) and measured (its volume in the answer)."""

    name = "segment_volume"
    templates = (
        "{please} {segment_verb} {target} and give its {volume_word}.",
        "{segment_verb} {target} {scan_in}, then {measure_verb} its {volume_word}.",
        "{opener} I want a mask of {target} and its {volume_word} {in_units}.",
        "{target}: mask and {volume_word}, {closing}",
        "Segment {target} and tell me how big it is {in_units}.",
        "{please} {segment_phrase} {target} and {report_verb} the {volume_word}.",
        "Mask plus volume for {target} {scan_in}.",
        "{segment_verb} {target}; I also need the {volume_word}.",
        "Can you outline {target} and quantify it {in_units}?",
        # held out (index >= 9)
        "After delineating {target}, state how much volume it has.",
        "Both a segmentation and a volume of {target}, please.",
        "Return the {target} mask together with its size {in_units}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod, target, p, var = self.one_target(case, rng)
        p.output(var, target)
        p.line(f"v = volume({var})")
        text = f"Here is the segmentation of the {target}; the {volume_phrase(target)} is "
        p.respond(text + "{v}.", fstring=True)
        truth = truth_mask(case, target, scan)
        ml = vo.volume_ml(truth)
        return self.sample(p, self.prompt(rng, ti, self.bound(target, mod, case)), text + f"{q(ml, 'mL')}.",
                           {"target": target, "volume_ml": ml, "target_voxels": int(truth.array.sum())}, ti, case)


class MultiSegment(MultiVolume):
    """Two or three targets, one output each ("segment the left amygdala and the putamen")."""

    name = "multi_segment"
    templates = (
        "{please} {segment_verb} {targets}.",
        "{segment_verb} {targets} {scan_in}.",
        "I need masks of {targets}.",
        "{opener} {targets}: {segment_verb} them, {closing}",
        "Give me segmentations of {targets}.",
        "{please} {segment_phrase} {targets}, one mask {each_word}.",
        "Masks for {targets} please.",
        "Could you label {targets} {scan_in}?",
        "{segment_verb} {targets} {each_word}.",
        # held out (index >= 9)
        "Produce one segmentation per structure: {targets}.",
        "I'd like {targets} each delineated.",
        "Separate masks wanted for {targets}.",
    )

    def build(self, case, draw, rng, ti):
        scan, mod = only_scan(case)
        targets, base = self.distinct_targets(rng, case, scan)
        p = Program(table_of(case))
        p.encode([scan])
        for target in targets:
            p.output(p.segment(scan, target), target)
        names = [f"the {t}" for t in targets]
        answer = f"Here are the segmentations of {', '.join(names[:-1])} and {names[-1]}."
        p.respond(answer)
        voxels = [int(truth_mask(case, t, scan).array.sum()) for t in targets]
        return self.sample(p, self.prompt(rng, ti, self.targets_bound(targets, base, mod, case)), answer,
                           {"targets": targets, "target_voxels": voxels}, ti, case)

