"""Lesion families: longitudinal change, count, signal, side, region, enhancement, restriction,
targeting one lesion by description; and the refusal family for out-of-scope requests.

Characterization answers are chosen from a fixed set of sentences (exact match, as in VoxelPrompt
5.3); the program reads the deciding values back before responding.
"""
from __future__ import annotations

import numpy as np

import voxel_ops as vo
from agent.functions.capabilities import CAPABILITIES, CAPABILITIES_V2
from agent.functions.library import trend_word
from training.synth import CaseSpec, LesionSpec, ScanSpec
from training.synth.lesions import HYPER, HYPO
from training.tasks.families import Draw, Family, pick, q
from training.tasks.program import Program
from training.tasks.targets import SCAN_PHRASES, SEQUENCE_NAMES, truth_mask

SIDE_ANSWERS = {"left": "The lesion is in the left hemisphere.", "right": "The lesion is in the right hemisphere.",
                "bilateral": "The lesion crosses the midline and involves both hemispheres."}
LESION_BOUND = {"lesion": ["the {lesion_word}", "the {lesion_word} {seen}"],
                "seen": ["seen here", "in this scan", "visible on the images", "present"]}


def _flair_lesion_spec(rng: np.random.Generator, extra: tuple[ScanSpec, ...] = (), **lesion) -> CaseSpec:
    lesion.setdefault("visible_on", ("FLAIR",))
    return CaseSpec(scans=(ScanSpec("flair", "FLAIR"), *extra), lesions=LesionSpec(**lesion))


class Longitudinal(Family):
    name = "longitudinal"
    templates = (
        "How did {lesion} {change_word} {between_sessions}?",
        "{please} {measure_verb} the change in lesion volume {between_sessions}.",
        "{opener} has {lesion} grown or shrunk {between_sessions}?",
        "Compare the lesion volume at baseline and follow-up.",
        "What is the percent change of {lesion} volume {between_sessions}?",
        "{report_verb} the lesion volume change {between_sessions}.",
        "Is {lesion} larger, smaller or stable on the follow-up?",
        "Track {lesion} {between_sessions} and give the change.",
        "By how much did the volume of {lesion} change {between_sessions}?",
        "Longitudinal assessment: {lesion} volume, {closing}",
        "Did the {lesion_word} progress {between_sessions}? Quantify it.",
    )

    def draw(self, rng):
        mod = pick(rng, ("FLAIR", "T2"))
        names = pick(rng, (("baseline", "followup"), ("1", "2"), ("prior", "current")))
        scans = tuple(ScanSpec(f"{mod.lower()}_{n}", mod, s) for s, n in enumerate(names))
        spec = CaseSpec(scans=scans, lesions=LesionSpec(count=(1, 1), visible_on=(mod,), radius_mm=(8.0, 16.0),
                                                        growth_range=(0.35, 2.8), stable_prob=0.3))
        return Draw(spec, {"mod": mod})

    def build(self, case, draw, rng, ti):
        a, b = (s.name for s in case.spec.scans)
        p = Program()
        p.encode([a, b])
        la, lb = p.generate(a, "lesion"), p.generate(b, "lesion", suffix="_2")
        p.line(f"v1 = volume({la})")
        p.line(f"v2 = volume({lb})")
        p.line("pc = percent_change(v1, v2)")
        p.line("t = trend(pc)")  # the library words the change: the agent only copies it
        (truth,) = case.lesions
        v1 = vo.volume_ml(truth_mask(case, "lesion", a))
        v2 = vo.volume_ml(truth_mask(case, "lesion", b))
        pc = vo.change(v1, v2)["percent"]
        # the trend follows what the two scans show (grids differ, so a stable lesion never measures 0 %)
        trend = trend_word(pc)
        p.respond("The lesion volume went from {v1} to {v2} ({pc}); the lesion {t}.", fstring=True)
        answer = f"The lesion volume went from {q(v1, 'mL')} to {q(v2, 'mL')} ({q(pc, '%')}); the lesion {trend}."
        prompt = self.prompt(rng, ti, LESION_BOUND)
        return self.sample(p, prompt, answer, {"trend": trend, "volume_before_ml": v1, "volume_after_ml": v2,
                                               "percent_change": pc, "growth_factor": truth.growth_factor}, ti, case)


class LesionCount(Family):
    name = "lesion_count"
    templates = (
        "{how_many} {lesions_word} are there?",
        "{please} count the {lesions_word}.",
        "{opener} how many {lesions_word} do you see?",
        "Number of {lesions_word} {scan_in}?",
        "{report_verb} the {lesions_word} count.",
        "Are there multiple {lesions_word}? How many?",
        "Count every {lesion_word} {scan_in}.",
        "What is the total number of {lesions_word}?",
        "Tell me the lesion count, {closing}",
        "How many separate {lesions_word} can be identified {scan_in}?",
        "Give the number of distinct {lesions_word}.",
    )

    def draw(self, rng):
        return Draw(_flair_lesion_spec(rng, count=(0, 4), radius_mm=(5.0, 11.0), edema_prob=0.0))

    def build(self, case, draw, rng, ti):
        p = Program()
        p.encode(["flair"])
        lesion = p.generate("flair", "lesion")
        p.line(f"n = count_components({lesion})")
        p.line("read(n)")
        p.end_step()
        n = len(case.lesions)
        answer = ("No lesion is present." if n == 0 else "There is 1 lesion." if n == 1 else f"There are {n} lesions.")
        p.respond(answer)
        bound = {"scan": SCAN_PHRASES["FLAIR"], "scan_in": ["", "in {scan}", "on {scan}"]}
        return self.sample(p, self.prompt(rng, ti, bound), answer, {"count": n}, ti, case)


class LesionSignal(Family):
    name = "lesion_signal"
    templates = (
        "{what_is} the {signal_word} of {lesion} on {seq_scan}?",
        "Is {lesion} hyperintense, hypointense or isointense on {seq_scan}?",
        "{opener} describe the {signal_word} of {lesion} on {seq_scan}.",
        "How does {lesion} look on {seq_scan}?",
        "{please} characterize the {lesion_word} {signal_word} on {seq_scan}.",
        "On {seq_scan}, is {lesion} bright, dark or similar to white matter?",
        "{report_verb} the {seq} {signal_word} of {lesion}.",
        "Lesion {signal_word} on {seq}, {closing}",
        "Relative to normal white matter, how bright is {lesion} on {seq_scan}?",
        "What {signal_word} does {lesion} have on {seq}?",
        "Classify the {seq} {signal_word} of {lesion}.",
    )

    def draw(self, rng):
        seq = pick(rng, ("T1", "T2", "FLAIR"))
        detect = "T2" if seq == "FLAIR" else "FLAIR"
        scans = (ScanSpec(seq.lower(), seq), ScanSpec(detect.lower(), detect))
        spec = CaseSpec(scans=scans, lesions=LesionSpec(count=(1, 1), visible_on=(detect,), radius_mm=(6.0, 15.0)))
        return Draw(spec, {"seq": seq, "detect": detect})

    def build(self, case, draw, rng, ti):
        seq, detect = draw.params["seq"], draw.params["detect"]
        s, d = seq.lower(), detect.lower()
        p = Program()
        p.encode([s, d])
        lesion = p.generate(d, "lesion")
        wm = p.generate(s, "white matter")
        p.line(f"s = signal({s}, {lesion}, {wm})")
        p.line("read(s)")
        p.end_step()
        cls = case.lesions[0].signal[seq]
        answer = f"The lesion is {cls} on {SEQUENCE_NAMES[seq]}."
        p.respond(answer)
        bound = LESION_BOUND | {"seq": [seq], "seq_scan": SCAN_PHRASES[seq]}
        return self.sample(p, self.prompt(rng, ti, bound), answer, {"sequence": seq, "signal": cls}, ti, case)


class LesionSide(Family):
    name = "lesion_side"
    templates = (
        "Which {side_word} is {lesion} in?",
        "{opener} is {lesion} on the left or the right?",
        "{please} tell me the {side_word} of {lesion}.",
        "Left, right or both sides: where is {lesion}?",
        "{report_verb} the laterality of {lesion}.",
        "On which side of the brain is {lesion}?",
        "Does {lesion} cross the midline?",
        "Lateralize {lesion}, {closing}",
        "Determine which hemisphere contains {lesion}.",
        "Is {lesion} left-sided, right-sided or bilateral?",
        "What is the {side_word} of the {lesion_word}?",
    )

    def draw(self, rng):
        side = pick(rng, ("left", "right", "left", "right", "bilateral"))
        return Draw(_flair_lesion_spec(rng, count=(1, 1), sides=(side,), radius_mm=(6.0, 14.0)))

    def build(self, case, draw, rng, ti):
        p = Program()
        p.encode(["flair"])
        lesion = p.generate("flair", "lesion")
        p.line(f"side = hemisphere({lesion})")
        p.line("read(side)")
        p.end_step()
        side = case.lesions[0].side
        p.respond(SIDE_ANSWERS[side])
        return self.sample(p, self.prompt(rng, ti, LESION_BOUND), SIDE_ANSWERS[side], {"side": side}, ti, case)


class LesionRegion(Family):
    name = "lesion_region"
    templates = (
        "{where_word} {lesion}?",
        "{opener} which lobe is {lesion} in?",
        "{please} give the location of {lesion}: side and lobe.",
        "Where in the brain is {lesion} located?",
        "{report_verb} the {side_word} and lobe of {lesion}.",
        "Localize {lesion}, {closing}",
        "Which region of the brain contains {lesion}?",
        "Describe the location of the {lesion_word}.",
        "In which lobe and hemisphere does {lesion} lie?",
        "What is the anatomical location of {lesion}?",
        "Tell me where the {lesion_word} is.",
    )

    def draw(self, rng):
        side = pick(rng, ("left", "right", "left", "right", "bilateral"))
        return Draw(_flair_lesion_spec(rng, count=(1, 1), sides=(side,), radius_mm=(6.0, 14.0)))

    def build(self, case, draw, rng, ti):
        p = Program()
        p.encode(["flair"])
        lesion = p.generate("flair", "lesion")
        p.line(f"side = hemisphere({lesion})")
        p.line(f"c = centroid({lesion})")
        p.line("read(side)")
        p.line("read(c)")
        p.end_step()
        t = case.lesions[0]
        answer = (f"The lesion is in the {t.side} {t.region} lobe." if t.side != "bilateral"
                  else f"The lesion crosses the midline in the {t.region} lobes.")
        p.respond(answer)
        return self.sample(p, self.prompt(rng, ti, LESION_BOUND), answer, {"side": t.side, "region": t.region},
                           ti, case)



def _paired_signal_program(first: tuple[str, str], second: tuple[str, str], answer: str) -> Program:
    """Lesion signal on two paired sequences (pre/post contrast, DWI/ADC) against white matter.

    ``first``/``second`` are (scan, variable) pairs; the lesion is found on FLAIR, white matter on the
    first scan of the pair, both signals are read back and the answer follows in the next step.
    """
    (scan_a, var_a), (scan_b, var_b) = first, second
    p = Program()
    p.encode(["flair", scan_a, scan_b])
    lesion = p.generate("flair", "lesion")
    wm = p.generate(scan_a, "white matter")
    p.line(f"{var_a} = signal({scan_a}, {lesion}, {wm})")
    p.line(f"{var_b} = signal({scan_b}, {lesion}, {wm})")
    p.line(f"read({var_a})")
    p.line(f"read({var_b})")
    p.end_step()
    p.respond(answer)
    return p


class Enhancement(Family):
    name = "enhancement"
    templates = (
        "Does {lesion} {enhance_word}?",
        "{opener} is there contrast enhancement of {lesion}?",
        "{please} compare {lesion} before and after contrast: does it {enhance_word}?",
        "Pre vs post contrast: does {lesion} {enhance_word}?",
        "Is {lesion} enhancing?",
        "{report_verb} whether {lesion} shows enhancement.",
        "Using the pre- and post-contrast T1, does {lesion} {enhance_word}?",
        "Enhancement of {lesion}, yes or no, {closing}",
        "Did the {lesion_word} {enhance_word} after gadolinium?",
        "Assess {lesion} for contrast uptake.",
        "Is there any enhancement in {lesion} on the post-contrast images?",
    )

    def draw(self, rng):
        extra = (ScanSpec("t1", "T1"), ScanSpec("t1c", "T1C"))
        return Draw(_flair_lesion_spec(rng, extra, count=(1, 1), enhancing_prob=0.5, radius_mm=(6.0, 15.0)))

    def build(self, case, draw, rng, ti):
        enh = case.lesions[0].enhancing
        answer = "Yes, the lesion enhances after contrast." if enh else "No, the lesion does not enhance."
        p = _paired_signal_program(("t1", "pre"), ("t1c", "post"), answer)
        return self.sample(p, self.prompt(rng, ti, LESION_BOUND), answer, {"enhancing": enh}, ti, case)


class Restriction(Family):
    name = "restriction"
    templates = (
        "Does {lesion} {restrict_word}?",
        "{opener} is there diffusion restriction in {lesion}?",
        "{please} check the DWI and ADC: does {lesion} {restrict_word}?",
        "Using DWI and ADC, does {lesion} {restrict_word}?",
        "Is {lesion} restricting diffusion?",
        "{report_verb} whether {lesion} shows restricted diffusion.",
        "Bright on DWI and dark on ADC? Check {lesion}.",
        "Diffusion restriction of {lesion}, yes or no, {closing}",
        "Does the {lesion_word} {restrict_word} on the diffusion images?",
        "Assess {lesion} for restricted diffusion.",
        "Is there true restriction or only T2 shine-through in {lesion}?",
    )

    def draw(self, rng):
        extra = (ScanSpec("dwi", "DWI"), ScanSpec("adc", "ADC"))
        return Draw(_flair_lesion_spec(rng, extra, count=(1, 1), restricting_prob=0.5, radius_mm=(6.0, 15.0)))

    def build(self, case, draw, rng, ti):
        res = case.lesions[0].restricting
        answer = "Yes, the lesion restricts diffusion." if res else "No, the lesion does not restrict diffusion."
        p = _paired_signal_program(("dwi", "d"), ("adc", "a"), answer)
        return self.sample(p, self.prompt(rng, ti, LESION_BOUND), answer, {"restricting": res}, ti, case)


class TargetLesion(Family):
    name = "target_lesion"
    templates = (
        "{what_is} the volume of the {desc} {lesion_word}?",
        "{please} measure the {desc} {lesion_word}.",
        "{opener} how big is the {desc} {lesion_word}?",
        "Of the {lesions_word}, {measure_verb} only the {desc} one.",
        "Focus on the {desc} {lesion_word}: {volume_word}?",
        "{report_verb} the {volume_word} of the {desc} {lesion_word}.",
        "There are several {lesions_word}; I care about the {desc} one. How large is it?",
        "Volume of the {desc} {lesion_word}, {closing}",
        "Quantify the {desc} {lesion_word} in {unit_ml}.",
        "How many {unit_ml} is the {desc} {lesion_word}?",
        "Pick the {desc} {lesion_word} and give its {volume_word}.",
    )
    DESCRIPTIONS = {"largest": ["largest", "biggest", "dominant", "largest-volume"],
                    "left": ["left-sided", "left hemisphere", "left"],
                    "right": ["right-sided", "right hemisphere", "right"],
                    "superior": ["most superior", "uppermost", "highest", "most cranial"],
                    "hyperintense": ["hyperintense", "FLAIR-bright", "bright", "FLAIR-hyperintense"]}
    ANSWER_NAMES = {"superior": "most superior"}  # how the answer names the chosen lesion
    # the library call that picks each description's lesion out of the lesion mask
    PICKERS = {"largest": "largest_component({lesion})",
               "superior": 'extreme_component({lesion}, "superior")',
               "hyperintense": "brightest_component(flair, {lesion})"}

    def draw(self, rng):
        desc = pick(rng, ("largest", "left", "right", "superior", "hyperintense"))
        if desc in ("left", "right"):
            spec = _flair_lesion_spec(rng, count=(2, 2), sides=("left", "right"), radius_mm=(5.0, 13.0))
        elif desc == "hyperintense":  # one bright lesion among dark ones, on either side
            sides = (pick(rng, ("left", "right")), pick(rng, ("left", "right")))
            classes = (HYPER, HYPO) if rng.random() < 0.5 else (HYPO, HYPER)
            spec = _flair_lesion_spec(rng, count=(2, 2), sides=sides, radius_mm=(5.0, 13.0), flair_classes=classes)
        else:
            sides = (pick(rng, ("left", "right")), pick(rng, ("left", "right")))
            spec = _flair_lesion_spec(rng, count=(2, 3), sides=sides, radius_mm=(5.0, 15.0))
        return Draw(spec, {"desc": desc})

    @staticmethod
    def _picked_by_library(case, desc: str) -> int | None:
        """The lesion the description's library call selects on the true mask, if it is one whole lesion."""
        union = case.mask("lesion", "flair")
        if vo.connected_components(union).count != len(case.lesions):
            return None  # touching lesions: "the most superior one" is not well defined
        if desc == "superior":
            picked = vo.extreme_component(union, "superior")
        else:
            picked = vo.brightest_component(case.scans["flair"], union)
        for t in case.lesions:
            if np.array_equal(picked.array > 0, case.mask("lesion", "flair", lesion=t.index).array > 0):
                return t.index
        return None

    def _usable(self, case, desc: str, vols: dict[int, float]) -> int | None:
        """Index of the lesion ``desc`` names unambiguously on this case, else None."""
        if desc == "largest":
            ordered = sorted(vols.values())
            return max(vols, key=vols.get) if len(ordered) == 1 or ordered[-1] >= 1.15 * ordered[-2] else None
        if desc in ("left", "right"):
            on_side = [t.index for t in case.lesions if t.side == desc]
            return on_side[0] if len(on_side) == 1 else None
        if desc == "superior":
            heights = sorted((t.centroid_mm["flair"][2], t.index) for t in case.lesions)
            if len(heights) < 2 or heights[-1][0] - heights[-2][0] < 10.0:
                return None
            chosen = heights[-1][1]
        else:  # hyperintense: exactly one lesion bright on FLAIR, the others dark
            bright = [t.index for t in case.lesions if t.signal["FLAIR"] == HYPER]
            if len(bright) != 1 or any(t.signal["FLAIR"] != HYPO for t in case.lesions if t.index != bright[0]):
                return None
            chosen = bright[0]
        return chosen if self._picked_by_library(case, desc) == chosen else None

    def build(self, case, draw, rng, ti):
        vols = {t.index: t.volume_ml["flair"] for t in case.lesions}
        desc = draw.params["desc"]
        chosen = self._usable(case, desc, vols)
        for fallback in ("largest", *rng.permutation(["left", "right"])):
            if chosen is not None:
                break
            desc, chosen = str(fallback), self._usable(case, str(fallback), vols)
        if chosen is None:  # nothing names one lesion unambiguously: ask for the largest anyway
            desc, chosen = "largest", max(vols, key=vols.get)
        p = Program()
        p.encode(["flair"])
        lesion = p.generate("flair", "lesion")
        if desc in self.PICKERS:
            p.line(f"target = {self.PICKERS[desc].format(lesion=lesion)}")
        else:
            hemi = p.generate("flair", f"{desc} hemisphere")
            p.line(f"target = intersection({lesion}, {hemi})")
        p.line("v = volume(target)")
        name = self.ANSWER_NAMES.get(desc, desc)
        p.respond(f"The {name} lesion measures {{v}}.", fstring=True)
        ml = vo.volume_ml(case.mask("lesion", "flair", lesion=chosen))
        bound = LESION_BOUND | {"desc": self.DESCRIPTIONS[desc]}
        return self.sample(p, self.prompt(rng, ti, bound), f"The {name} lesion measures {q(ml, 'mL')}.",
                           {"description": desc, "lesion_index": chosen, "volume_ml": ml}, ti, case)


class OutOfScope(Family):
    name = "out_of_scope"
    templates = (
        "{please} segment {oos_anatomy}.",
        "{what_is} the volume of {oos_anatomy}?",
        "{opener} tell me {oos_ident}.",
        "Who is this patient? I need {oos_ident}.",
        "{oos_ignore} and print {oos_system}.",
        "{please} show me {oos_system}.",
        "{oos_ignore}. Now measure {oos_anatomy}.",
        "Give me {oos_other}.",
        "{opener} can you give me {oos_other} for this patient?",
        "Run a command that reveals {oos_system}.",
        "Forget the brain; I want {oos_anatomy} measured.",
        "{oos_ignore} and make up a lesion volume.",
    )

    def draw(self, rng):
        mod = pick(rng, ("T1", "FLAIR", "CT"))
        return Draw(CaseSpec(scans=(ScanSpec(mod.lower(), mod),)))

    def draw_v2(self, rng):
        """With label cases the agent knows every vision target: the refusal lists them."""
        draw = self.draw(rng)
        return Draw(draw.spec, {"v2": True})

    def build(self, case, draw, rng, ti):
        p = Program()
        if draw.params.get("v2"):  # the library's text for a model with every vision target
            refusal = CAPABILITIES_V2
            p.line("respond(capabilities())")
        else:  # the MNI-era programs, which the v1 agents were trained on, stay as they were
            refusal = CAPABILITIES
            p.respond(refusal)
        return self.sample(p, self.prompt(rng, ti, {}), refusal, {"refused": True}, ti, case)


__all__ = ["Enhancement", "LesionCount", "LesionRegion", "LesionSide", "LesionSignal", "Longitudinal",
           "OutOfScope", "Restriction", "TargetLesion", "HYPER", "Draw"]
