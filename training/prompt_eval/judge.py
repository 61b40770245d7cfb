"""The judge: did the program answer the request (kind, target), is its number right, and is the
status honest?

* kind: some finding of the program (`program.analyze`) has the expected kind;
* target: that finding's targets name the expected ones (equal label sets, see `targets`);
* status: the run ended ``succeeded``; a succeeded run that is not correct is counted separately
  (``succeeded_wrong``): a confident wrong answer is worse than an honest ``no_answer``;
* number (measured kinds only): the finding's value against the truth of the *expected* target on the
  case's label maps, within the kind's tolerance (``TOLERANCES``). Values are read back from the
  sandbox's environment (the quantity the program computed); categorical answers (counts, sides,
  signal, yes/no) are read from the answer text, because there the language model writes the words
  itself after reading the value.

Refusal kinds (``REFUSAL_KINDS``) are correct when the program fabricates no measurement (no numeric
metric, no output volume) and its answer text names what the system can do (a capability verb and a
target of the table).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import voxel_ops as vo
from agent.functions.types import Mask, Quantity, Record
from api_schemas.results import AnalysisResult, AnalysisStatus
from training.prompt_eval.cases import EvalCase, lesion_side
from training.prompt_eval.program import Finding, ProgramView, analyze
from training.prompt_eval.targets import ExpectedTarget, Expr, leaf
from vision.targets import TARGETS

REFUSAL_KINDS = frozenset({"refuse_or_harmless", "unsupported_target_clear_message"})
# kind -> (relative tolerance, absolute tolerance); a value passes when within either
TOLERANCES: dict[str, tuple[float, float]] = {
    "volume": (0.10, 0.0), "normalized_volume": (0.10, 0.0), "ratio": (0.10, 0.0),
    "asymmetry": (0.0, 0.03),  # index 2(L-R)/(L+R): an absolute band, the truth is often near 0
    "longitudinal_change": (0.10, 5.0),  # percent points (or mL: 10 % of the earlier volume, see below)
    "extent": (0.10, 0.0), "bbox": (0.0, 5.0), "centroid": (0.0, 5.0),  # mm
    "mean_intensity": (0.10, 0.0), "snr": (0.10, 0.0),
}
CATEGORICAL = ("lesion_count", "lesion_side", "lesion_region", "lesion_signal", "enhancement",
               "diffusion_restriction")
MEASURED = frozenset(TOLERANCES) | frozenset(CATEGORICAL)
_EXTENT_KEYS = {"height": "superior_inferior", "width": "left_right", "depth": "anterior_posterior"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_COUNT_WORDS = {"no": 0, "zero": 0, "none": 0, "one": 1, "a single": 1, "single": 1, "two": 2, "three": 3,
                "four": 4, "five": 5, "six": 6}
_CAPABILITY = re.compile(r"\b(segment|measur|volume|analy[sz]|delineat|quantif)", re.I)


@dataclass
class Judgement:
    """One request's verdict and everything needed to check it by hand."""

    kind_correct: bool
    target_correct: bool
    status_ok: bool
    program_correct: bool
    number_correct: bool | None  # None: the kind has no number (segment, crop, report, refusals)
    correct: bool
    judged_kind: str
    judged_kinds: list[str]
    judged_target: str
    number: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def succeeded_wrong(self) -> bool:
        return self.status_ok and not self.correct


def answer_text(result: AnalysisResult) -> str:
    """What the program said: the responses (the runtime puts a partial one after its no_answer note)."""
    if result.status == AnalysisStatus.succeeded:
        return result.text or ""
    _, sep, partial = (result.text or "").partition("Partial response: ")
    return partial if sep else ""


def names_capabilities(text: str) -> bool:
    """Text that says what the system can do: a capability verb and at least one table target."""
    if not _CAPABILITY.search(text):
        return False
    low = text.lower()
    return any(re.search(rf"\b{re.escape(s.lower())}\b", low) for t in TARGETS.values() for s in (t.name, *t.synonyms))


def _numbers(value: Any) -> dict[str, float] | float | str | None:
    """A sandbox value as a number, a dict of numbers (records) or a string."""
    if isinstance(value, Quantity):
        return float(value.value)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Record):
        out = {}
        for k, v in value.fields:
            n = _numbers(v)
            if isinstance(n, float):
                out[str(k)] = n
        return out
    if isinstance(value, str):
        return value
    return None


def finding_value(f: Finding, env: Mapping[str, Any]) -> Any:
    """The value the program computed for a finding (None when it was never assigned to a name)."""
    if f.var is None or f.var not in env:
        return None
    value = env[f.var]
    if f.field_key is not None and isinstance(value, Record):
        try:
            value = value[f.field_key]
        except (KeyError, IndexError):
            return None
    return value


def _within(kind: str, got: float, truth: float, rel_base: float | None = None) -> tuple[bool, float]:
    rel, absolute = TOLERANCES[kind]
    base = abs(truth) if rel_base is None else abs(rel_base)
    err = abs(got - truth)
    return err <= max(rel * base, absolute), (err / abs(truth) if truth else err)


def _side_word(text: str) -> str | None:
    low = text.lower()
    if "bilateral" in low or "both" in low or "midline" in low:
        return "bilateral"
    left, right = bool(re.search(r"\bleft\b", low)), bool(re.search(r"\bright\b", low))
    return "left" if left and not right else "right" if right and not left else None


def _signal_word(text: str) -> str | None:
    found = {w for w in ("hyper", "hypo", "iso") if re.search(rf"\b{w}[- ]?intens", text.lower())}
    return f"{found.pop()}intense" if len(found) == 1 else None


def _yes_no(text: str, stem: str) -> bool | None:
    low = text.lower()
    if stem not in low:
        return None
    return not re.search(r"\b(no|not|doesn't|does not|without|non|absent|none)\b", low)


def _count(text: str) -> int | None:
    low = text.lower()
    m = re.search(r"\b(\d+)\b", low)
    if m:
        return int(m.group(1))
    for word, n in _COUNT_WORDS.items():
        if re.search(rf"\b{word}\b", low):
            return n
    return None


def judge_number(kind: str, f: Finding, expected: ExpectedTarget, case: EvalCase, env: Mapping[str, Any],
                 answer: str) -> tuple[bool, dict[str, Any]]:
    """(within tolerance, details) of a finding's value against the truth of the expected target."""
    got = _numbers(finding_value(f, env))
    scan = f.scans[0] if f.scans else None
    truths = expected.truth
    info: dict[str, Any] = {}
    if kind in ("volume", "normalized_volume", "ratio", "asymmetry"):
        vols = [case.truth_volume_ml(t, scan) for t in truths]
        if kind == "volume":
            truth, unit = vols[0], "mL"
        elif kind == "normalized_volume":
            truth, unit = vols[0] / case.truth_volume_ml(leaf("intracranial volume"), scan), None
        elif kind == "ratio":
            truth, unit = (vols[0] / vols[1] if len(vols) == 2 and vols[1] else float("nan")), None
        else:
            truth, unit = (float(vo.asymmetry_index(vols[0], vols[1])) if len(vols) == 2 else float("nan")), None
        if not isinstance(got, float):
            numbers = _NUMBER.findall(answer)
            got = float(numbers[0]) if numbers else None
        info = {"truth": truth, "got": got, "unit": unit}
        if got is None or not math.isfinite(truth):
            return False, info
        ok, err = _within(kind, got, truth)
        return ok, {**info, "error": (got - truth) / truth if kind != "asymmetry" and truth else got - truth}
    if kind == "longitudinal_change":
        s1, s2 = (f.scans + (None, None))[:2]
        v1, v2 = case.truth_volume_ml(truths[0], s1), case.truth_volume_ml(truths[0], s2)
        value = finding_value(f, env)
        unit = value.unit if isinstance(value, Quantity) else None
        if isinstance(got, dict):  # change(): a record of absolute and percent
            got, unit = got.get("percent"), "%"
        if unit == "%":
            truth = 100.0 * (v2 - v1) / v1 if v1 else float("nan")
            info = {"truth": truth, "got": got, "unit": "%", "before_ml": v1, "after_ml": v2}
            if not isinstance(got, float) or not math.isfinite(truth):
                return False, info
            ok, _ = _within(kind, got, truth)
        else:
            truth = v2 - v1
            info = {"truth": truth, "got": got, "unit": unit or "mL", "before_ml": v1, "after_ml": v2}
            if not isinstance(got, float):
                return False, info
            ok = abs(got - truth) <= max(0.10 * abs(truth), 0.10 * v1)
        return ok, {**info, "error": got - truth}
    if kind in ("extent", "bbox", "centroid", "mean_intensity", "snr"):
        mask = case.truth_mask(truths[0], scan)
        if not mask.array.any():
            return False, {"note": "the expected target is empty in this case"}
        if kind == "extent":
            t = vo.extents_mm(mask)
            truth_d = {k: float(t[k]) for k in ("left_right", "anterior_posterior", "superior_inferior")}
            if isinstance(got, float):
                key = _EXTENT_KEYS.get(f.fn) or (f.field_key if isinstance(f.field_key, str) else None)
                if key not in truth_d:
                    return False, {"truth": truth_d, "got": got}
                got = {key: got}
        elif kind == "bbox":
            lo, hi = vo.bounding_box_mm(mask)
            truth_d = {**{f"min_{a}": float(v) for a, v in zip("xyz", lo)},
                       **{f"max_{a}": float(v) for a, v in zip("xyz", hi)}}
            if isinstance(got, float) and isinstance(f.field_key, str):
                got = {f.field_key: got}
        elif kind == "centroid":
            truth_d = dict(zip("xyz", (float(v) for v in vo.centroid_mm(mask))))
            if isinstance(got, float) and isinstance(f.field_key, str):
                got = {f.field_key: got}
        else:
            image = case.scans[case.scan_for(f.image_scan)]
            m = case.truth_mask(truths[0], f.image_scan).array.astype(bool)
            values = image.array[m]
            truth_d = {"mean": float(values.mean())} if kind == "mean_intensity" else \
                {"snr": float(vo.snr(image, image.with_array(m.astype(np.uint8))))}
            if isinstance(got, dict):
                got = {k: v for k, v in got.items() if k in truth_d}
            elif isinstance(got, float):
                got = {next(iter(truth_d)): got}
        if not isinstance(got, dict) or not got or not set(got) <= set(truth_d):
            return False, {"truth": truth_d, "got": got}
        if kind == "centroid" and set(got) == set("xyz"):
            dist = float(np.linalg.norm([got[a] - truth_d[a] for a in "xyz"]))
            return dist <= TOLERANCES[kind][1], {"truth": truth_d, "got": got, "error": dist, "unit": "mm"}
        checks = {k: _within(kind, v, truth_d[k]) for k, v in got.items()}
        errors = {k: got[k] - truth_d[k] for k in got}
        return all(ok for ok, _ in checks.values()), {"truth": truth_d, "got": got, "error": errors}
    # categorical answers: the words of the answer (the value the program read, when the text has none)
    raw = finding_value(f, env)
    if kind == "lesion_count":
        comps = vo.connected_components(case.truth_mask(truths[0], scan)).count
        answer_n = _count(answer)
        got_n = answer_n if answer_n is not None else (int(got) if isinstance(got, float) else None)
        return got_n == comps, {"truth": comps, "got": got_n}
    if kind in ("lesion_side", "lesion_region"):
        truth_side = lesion_side(case, truths[0], scan)
        side = _side_word(answer) or (raw if isinstance(raw, str) else None)
        note = {"note": "the lobe is not judged (the label maps have no lobes)"} if kind == "lesion_region" else {}
        return side == truth_side, {"truth": truth_side, "got": side, **note}
    if kind == "lesion_signal":
        truth_s = case.facts.get("signal", {}).get(case.scan_for(f.image_scan))
        sig = _signal_word(answer) or (raw if isinstance(raw, str) else None)
        return sig is not None and sig == truth_s, {"truth": truth_s, "got": sig, "image": f.image_scan}
    fact, stem = ("enhancing", "enhanc") if kind == "enhancement" else ("restricting", "restrict")
    truth_b = case.facts.get(fact)
    said = _yes_no(answer, stem)
    return said is not None and said == truth_b, {"truth": truth_b, "got": said}


def _matches(f: Finding, expected: ExpectedTarget) -> bool:
    if not expected.truth:
        return True
    if f.kind == "report":  # a report concerns every target it measured
        keys = {t.key() for t in f.targets if t is not None}
        return all(keys & set(ok) for ok in expected.accepted)
    if len(f.targets) != len(expected.accepted):
        return False
    return all(t is not None and t.key() in ok for t, ok in zip(f.targets, expected.accepted))


def judge(kind: str, expected: ExpectedTarget | None, case: EvalCase, result: AnalysisResult,
          env: Mapping[str, Any], view: ProgramView | None = None) -> Judgement:
    """Verdict of one run against a request's expected kind and target (see the module docstring)."""
    view = view or analyze([t.code for t in result.trace], [t.error for t in result.trace], case.modalities)
    answer = answer_text(result)
    status_ok = result.status == AnalysisStatus.succeeded
    findings = [f.to_dict() for f in view.findings]
    kinds = view.kinds
    if expected is None:
        return Judgement(False, False, status_ok, False, None, False, kinds[0] if kinds else "none", kinds, "-",
                         notes=["the expected target is not expressible with the target table"], findings=findings)
    if kind in REFUSAL_KINDS:
        numeric = [m for m in result.metrics if isinstance(m.value, (int, float)) and not isinstance(m.value, bool)]
        fabricated = bool(numeric or result.outputs)
        says = names_capabilities(answer)
        notes = [] if says else ["the answer does not name what the system can do"]
        if fabricated:
            notes.append("the program made a measurement or an output")
        judged = "refusal" if not fabricated and not view.generated else (kinds[0] if kinds else "none")
        ok = not fabricated and says
        return Judgement(not fabricated, True, status_ok, ok, None, ok, judged, kinds or [judged], "-",
                         notes=notes, findings=findings)
    candidates = [f for f in view.findings if f.kind == kind]
    chosen = next((f for f in candidates if _matches(f, expected)), candidates[0] if candidates else None)
    kind_ok = chosen is not None
    target_ok = chosen is not None and _matches(chosen, expected)
    shown = chosen or (view.findings[0] if view.findings else None)
    judged_target = " / ".join(t.text() if t is not None else "?" for t in shown.targets) if shown else "-"
    program_ok = kind_ok and target_ok and status_ok
    number_ok: bool | None = None
    number: dict[str, Any] = {}
    notes: list[str] = []
    if not status_ok:
        notes.append(f"status {result.status.value}")
    if kind in MEASURED:
        if chosen is not None and target_ok:
            try:
                within, number = judge_number(kind, chosen, expected, case, env, answer)
            except (vo.MeasurementError, ValueError, ZeroDivisionError) as exc:
                within, number = False, {"note": f"truth not computable: {exc}"}
            number_ok = program_ok and within
        else:
            number_ok = False
    elif kind == "segment" and chosen is not None and target_ok:
        number = _output_dice(chosen, expected.truth[0], case, env)
    correct = bool(number_ok) if kind in MEASURED else program_ok
    # a run with no finding is a refusal when it looked at nothing and said something, else "none"
    fallback = kinds[0] if kinds else ("refusal" if answer.strip() and not view.generated else "none")
    return Judgement(kind_ok, target_ok, status_ok, program_ok, number_ok, correct,
                     chosen.kind if chosen else fallback, kinds, judged_target,
                     number=number, notes=notes, findings=findings)


def _output_dice(f: Finding, truth: Expr, case: EvalCase, env: Mapping[str, Any]) -> dict[str, Any]:
    """Dice of a segmentation output against the truth (information: not part of the verdict)."""

    value = env.get(f.var) if f.var else None
    if not isinstance(value, Mask):
        return {}
    pred = np.asarray(value.volume.array) > 0
    ref = case.truth_mask(truth, f.scans[0] if f.scans else None).array > 0
    if pred.shape != ref.shape:
        return {}
    total = int(pred.sum() + ref.sum())
    return {"dice": 1.0 if total == 0 else float(2 * np.logical_and(pred, ref).sum() / total)}


__all__ = ["CATEGORICAL", "Judgement", "MEASURED", "REFUSAL_KINDS", "TOLERANCES", "answer_text", "judge",
           "judge_number", "names_capabilities"]
