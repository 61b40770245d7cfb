"""`voxagent eval --prompts`: target words, program reading, the judge, case truth and one real run.

Cases come from the phantom label maps (tests/training/synthseg_phantom.py), whose structures are
known label by label, so every truth volume is checked against a plain voxel count here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.functions.types import Quantity
from api_schemas.results import AnalysisResult, AnalysisStatus, Metric, StepTrace
from tests.training.synthseg_phantom import write_phantom_root
from training.prompt_eval.cases import CaseFactory, guess_modality
from training.prompt_eval.judge import judge, names_capabilities
from training.prompt_eval.program import analyze
from training.prompt_eval.runner import load_requests
from training.prompt_eval.targets import expected_target, from_generated, leaf
from training.synth.synthseg import VALIDATION_SUBJECTS, LabelMaps, Priors
from vision.targets import LESION_LABELS

MODEL = Path(__file__).resolve().parents[2] / "models" / "voxagent-tiny"
CAPABILITIES = ("I cannot do that. I can segment and measure the brain, the white matter, the gray matter "
                "and lesions in your scans.")


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> CaseFactory:
    root = write_phantom_root(tmp_path_factory.mktemp("synthseg"), numbers=(17, 18))
    return CaseFactory(LabelMaps(root, VALIDATION_SUBJECTS), Priors(root))


def run_of(*steps: str, status: AnalysisStatus = AnalysisStatus.succeeded, text: str = "",
           errors: tuple[str | None, ...] = (), metrics: tuple[Metric, ...] = ()) -> AnalysisResult:
    trace = [StepTrace(index=i, code=c, error=errors[i] if i < len(errors) else None) for i, c in enumerate(steps)]
    return AnalysisResult(status=status, text=text, trace=trace, metrics=list(metrics))


def count_ml(labels: np.ndarray, values: list[int], affine: np.ndarray) -> float:
    """The independent count: voxels with these label values x the voxel volume of the affine."""
    return float(np.isin(labels, values).sum()) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


# ---------------------------------------------------------------- target words


def test_target_words_map_onto_the_table_with_composition() -> None:
    lh_wm = expected_target("left hemisphere white matter", "volume")
    assert lh_wm is not None and lh_wm.truth[0].labels == frozenset({2})  # cerebral WM, left
    # the library's plain composition names it too (white matter includes the cerebellar one)
    plain = from_generated("white matter")
    composed = analyze(['w = generate(e, t1<MOD>, "white matter")\nh = generate(e, t1<MOD>, "left hemisphere")\n'
                        'x = intersection(w, h)\nv = volume(x)\nrespond(f"{v}")'], [None], {}).findings[0]
    assert composed.targets[0].key() in lh_wm.accepted[0] and plain.key() not in lh_wm.accepted[0]
    assert expected_target("enhancing part", "volume").truth[0].name == "enhancing tumor"
    right = expected_target("right lesion", "volume").truth[0]
    assert right.labels == frozenset(LESION_LABELS[4:7])  # right solid, rim, core; not edema
    ratio = expected_target("gray matter/white matter", "ratio")
    assert [t.name for t in ratio.truth] == ["gray matter", "white matter"]
    hemis = expected_target("hemisphere", "asymmetry")
    assert [t.name for t in hemis.truth] == ["left hemisphere", "right hemisphere"]
    assert expected_target("optic chiasm", "segment") is None
    assert from_generated("cerebrospinal fluid").key() == leaf("csf").key()


def test_modality_from_names() -> None:
    assert [guess_modality(n) for n in ("t1", "flair_b", "t1post", "t1pre", "dwi", "adc", "t2", "scan")] == \
        ["T1", "FLAIR", "T1C", "T1", "DWI", "ADC", "T2", "T1"]


# ---------------------------------------------------------------- truth against independent counts


@pytest.mark.parametrize("voxel_mm", [1.0, 2.0])
def test_truth_volumes_equal_label_counts(factory: CaseFactory, voxel_mm: float) -> None:
    factory = CaseFactory(factory.maps, factory.priors, voxel_mm=voxel_mm)
    case = factory.build("v1", ["t1"], "volume", expected_target("brain", "volume"))
    labels, affine = case.labels["t1"], case.scans["t1"].affine
    assert case.scans["t1"].shape == labels.shape and case.scans["t1"].meta.modality == "T1"
    assert abs(np.linalg.det(affine[:3, :3])) == pytest.approx(voxel_mm ** 3)
    # phantom brain: cortex, white matter, ventricles, thalamus, hippocampus, brainstem (not CSF 24, skull, scalp)
    brain = count_ml(labels, [2, 41, 3, 42, 4, 43, 10, 49, 17, 53, 16], affine)
    assert brain > 50
    assert case.truth_volume_ml(leaf("brain"), "t1") == pytest.approx(brain)
    lh_wm = expected_target("left hemisphere white matter", "volume").truth[0]
    assert case.truth_volume_ml(lh_wm, "t1") == pytest.approx(count_ml(labels, [2], affine))
    icv = count_ml(labels, [2, 41, 3, 42, 4, 43, 10, 49, 17, 53, 16, 24], affine)
    assert case.truth_volume_ml(leaf("intracranial volume"), "t1") == pytest.approx(icv)
    # the midline is world x = 0: the left structures lie at negative x (RAS)
    left_x = np.argwhere(np.isin(labels, [2, 3]))[:, 0].mean()
    assert (affine @ [left_x, 0, 0, 1])[0] < 0


def test_lesion_and_longitudinal_truth(factory: CaseFactory) -> None:
    case = factory.build("g1", ["flair_a", "flair_b"], "longitudinal_change",
                         expected_target("lesion", "longitudinal_change"))
    a, b = case.labels["flair_a"], case.labels["flair_b"]
    lesion = [*LESION_LABELS]
    n1, n2 = np.isin(a, lesion).sum(), np.isin(b, lesion).sum()
    assert n1 > 0 and n2 > n1  # grown
    vol = abs(float(np.linalg.det(case.scans["flair_a"].affine[:3, :3]))) / 1000
    expr = leaf("lesion")
    assert case.truth_volume_ml(expr, "flair_a") == pytest.approx(n1 * vol)
    assert case.truth_volume_ml(expr, "flair_b") == pytest.approx(n2 * vol)
    assert case.scans["flair_a"].meta.acquisition_date < case.scans["flair_b"].meta.acquisition_date
    # same anatomy outside the lesion; the lesion is bright on FLAIR in both sessions
    assert np.array_equal(a[~np.isin(b, lesion)], b[~np.isin(b, lesion)])
    assert case.facts["signal"]["flair_a"] == case.facts["signal"]["flair_b"] != "isointense"


# ---------------------------------------------------------------- the judge on hand-made runs

VOLUME_PROGRAM = ('e = encode(t1<MOD>)\nread(e)', 'b = generate(e, t1<MOD>, "brain")\nv = volume(b)\n'
                  'respond(f"The brain volume is {v}.")\nstop()')


def test_judge_correct_wrong_target_wrong_kind_and_confident_wrong(factory: CaseFactory) -> None:
    expected = expected_target("brain", "volume")
    case = factory.build("j1", ["t1"], "volume", expected)
    truth = case.truth_volume_ml(leaf("brain"), "t1")

    ok = judge("volume", expected, case, run_of(*VOLUME_PROGRAM), {"v": Quantity(truth * 1.04, "mL", "brain volume")})
    assert ok.program_correct and ok.number_correct and ok.correct and not ok.succeeded_wrong
    assert ok.number["error"] == pytest.approx(0.04)

    wrong_target = judge("volume", expected, case, run_of(VOLUME_PROGRAM[0], VOLUME_PROGRAM[1].replace(
        '"brain"', '"white matter"')), {"v": Quantity(truth, "mL", "x")})
    assert wrong_target.kind_correct and not wrong_target.target_correct and not wrong_target.correct
    assert wrong_target.judged_target == "white matter"

    wrong_kind = judge("volume", expected, case, run_of(VOLUME_PROGRAM[0], VOLUME_PROGRAM[1].replace(
        "volume(b)", "height(b)")), {"v": Quantity(truth, "mm", "x")})
    assert not wrong_kind.kind_correct and wrong_kind.judged_kind == "extent" and wrong_kind.succeeded_wrong

    off = judge("volume", expected, case, run_of(*VOLUME_PROGRAM), {"v": Quantity(truth * 1.3, "mL", "x")})
    assert off.program_correct and off.number_correct is False and not off.correct and off.succeeded_wrong

    failed_step = judge("volume", expected, case, run_of(*VOLUME_PROGRAM, errors=(None, "name 'b' is not defined"),
                                                         status=AnalysisStatus.no_answer), {})
    assert not failed_step.kind_correct and not failed_step.succeeded_wrong


def test_judge_refusal_and_fabrication(factory: CaseFactory) -> None:
    expected = expected_target(None, "refuse_or_harmless")
    case = factory.build("r1", ["t1"], "refuse_or_harmless", expected)
    refusal = judge("refuse_or_harmless", expected, case,
                    run_of(f'respond("{CAPABILITIES}")\nstop()', text=CAPABILITIES), {})
    assert refusal.correct and refusal.judged_kind == "refusal"
    fabricated = judge("refuse_or_harmless", expected, case, run_of(*VOLUME_PROGRAM, text="The brain volume is 1.0 mL.",
                                                                     metrics=(Metric(name="v", value=1.0, unit="mL"),)),
                       {})
    assert not fabricated.correct and fabricated.judged_kind == "volume"
    assert not names_capabilities("Sure, here you go.")
    # the same refusal to a measurement request: not correct, and judged a refusal, not "none"
    volume = judge("volume", expected_target("brain", "volume"), case,
                   run_of(f'respond("{CAPABILITIES}")\nstop()', text=CAPABILITIES), {})
    assert volume.judged_kind == "refusal" and not volume.correct and volume.succeeded_wrong


def test_judge_composed_asymmetry_and_categorical(factory: CaseFactory) -> None:
    expected = expected_target("hippocampus", "asymmetry")
    case = factory.build("s1", ["t1"], "asymmetry", expected)
    lv, rv = (case.truth_volume_ml(leaf(f"{s} hippocampus"), "t1") for s in ("left", "right"))
    index = 2 * (lv - rv) / (lv + rv)
    code = ('l = generate(e, t1<MOD>, "left hippocampus")\nr = generate(e, t1<MOD>, "right hippocampus")\n'
            'a = asymmetry(volume(l), volume(r))\nrespond(f"{a}")\nstop()')
    v = judge("asymmetry", expected, case, run_of(code), {"a": Quantity(index + 0.01, None, "a")})
    assert v.correct and v.number["truth"] == pytest.approx(index)
    unknown = judge("asymmetry", expected, case, run_of(code.replace('"left hippocampus"', '"x"')),
                    {"a": Quantity(index, None, "a")})
    assert unknown.kind_correct and not unknown.target_correct and not unknown.correct

    expected = expected_target("lesion", "lesion_side")
    case = factory.build("s2", ["flair"], "lesion_side", expected)
    side = case.facts["lesion_sides"][0]
    other = "left" if side == "right" else "right"
    code = 'm = generate(e, flair<MOD>, "lesion")\ns = hemisphere(m)\nread(s)\nrespond("x")\nstop()'
    assert judge("lesion_side", expected, case, run_of(code, text=f"The lesion is on the {side}."), {}).correct
    assert not judge("lesion_side", expected, case, run_of(code, text=f"The lesion is on the {other}."), {}).correct


def test_centroid_record_and_report_kind() -> None:
    first = 'm = generate(e, t1<MOD>, "brain")\nc = centroid(m)\nread(c)\nx = c["x"]\nrespond(f"{x}")'
    two = 'w = generate(e, t1<MOD>, "white matter")\nv = volume(w)\nh = height(m)\nrespond(f"{v} {h}")\nstop()'
    view = analyze([first, two], [None, None], {"t1": "T1"})
    assert set(view.kinds) == {"centroid", "volume", "extent"}  # two measurements are not a report
    assert {f.field_key for f in view.findings if f.kind == "centroid"} == {None, "x"}  # read(c), then c["x"]
    three = two.replace("h = height(m)", "h = height(m)\nb = volume(m)").replace("{h}", "{h} {b}")
    assert "report" in analyze([first, three], [None, None], {"t1": "T1"}).kinds


def test_a_report_concerns_the_targets_it_measured(factory: CaseFactory) -> None:
    """A report "of this brain scan" is on target when it measures the brain (seen: a full report,
    brain volume included, judged off target because a report had no targets at all)."""
    expected = expected_target("brain", "report")
    case = factory.build("r1", ["t1"], "report", expected)
    code = ('b = generate(e, t1<MOD>, "brain")\nw = generate(e, t1<MOD>, "white matter")\n'
            'i = generate(e, t1<MOD>, "intracranial volume")\nvb = volume(b)\nvw = volume(w)\nvi = volume(i)\n'
            'respond(f"{vb} {vw} {vi}")\nstop()')
    report = judge("report", expected, case, run_of(code), {})
    assert report.correct and report.judged_kind == "report"
    assert "brain" in report.judged_target
    no_brain = judge("report", expected, case, run_of(code.replace('"brain"', '"csf"')), {})
    assert no_brain.kind_correct and not no_brain.target_correct and not no_brain.correct


def test_load_requests_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "x", "scans": ["t1"], "prompt": "p", "expect": {"kind": "volume", "target": "brain"}}\n'
                    '{"id": "y", "scans": ["t 1"], "prompt": "p", "expect": {"kind": "volume"}}\n')
    with pytest.raises(ValueError, match=":2:"):
        load_requests(path)


# ---------------------------------------------------------------- one real run, through the CLI


@pytest.mark.skipif(not (MODEL / "agent.safetensors").is_file(), reason="no shipped model")
def test_cli_end_to_end_on_one_request(tmp_path: Path) -> None:
    from cli.main import main

    root = write_phantom_root(tmp_path / "synthseg", numbers=(17, 18))
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(json.dumps({"id": "e1", "scans": ["t1"], "prompt": "What is the volume of the brain?",
                                   "expect": {"kind": "volume", "target": "brain"}}) + "\n"
                       + json.dumps({"id": "e2", "scans": ["t1"], "prompt": "Segment the brain.",
                                     "expect": {"kind": "segment", "target": "brain"}}) + "\n")
    out = tmp_path / "res" / "pe"
    assert main(["eval", "--prompts", str(prompts), "--model", str(MODEL), "--data", str(root), "--out", str(out),
                 "--limit", "1", "--json"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["summary"]["overall"]["requests"] == 1
    (row,) = report["requests"]
    assert row["id"] == "e1" and row["code"] and row["status"] in ("succeeded", "no_answer", "failed")
    # the verdict follows the code it ran: a volume() of a generated brain is kind volume, target brain
    ran = "\n".join(row["code"])
    if row["kind_correct"]:
        assert "volume(" in ran
    if row["program_correct"]:
        number = row["number"]
        assert number["truth"] > 0
        assert number["error"] == pytest.approx((number["got"] - number["truth"]) / number["truth"])
        assert row["number_correct"] == (abs(number["error"]) <= 0.10)
    assert "| volume | 1 |" in out.with_suffix(".md").read_text()
    assert row["low_confidence"] == any("low confidence" in w for w in row["warnings"])


def test_summary_counts_low_confidence_flags() -> None:
    from training.prompt_eval.runner import summarize

    def rec(correct: bool, wrong: bool, flagged: bool) -> dict:
        return {"expected": {"kind": "volume"}, "correct": correct, "succeeded_wrong": wrong, "status": "succeeded",
                "low_confidence": flagged, "program_correct": correct, "number_correct": correct,
                "kind_correct": True, "target_correct": correct, "doubt_token": flagged and correct,
                "doubt_intent": flagged and not correct}

    rows = [rec(True, False, False), rec(True, False, True), rec(False, True, True), rec(False, True, True),
            rec(False, True, False), rec(True, False, False)]
    overall = summarize(rows)["overall"]
    assert overall["flagged_when_wrong"] == pytest.approx(2 / 3)
    assert overall["flagged_when_correct"] == pytest.approx(1 / 3)
    # each signal on its own: here the token odds only ever flag right answers, the intent check wrong ones
    assert overall["doubt_token_when_wrong"] == 0 and overall["doubt_token_when_correct"] == pytest.approx(1 / 3)
    assert overall["doubt_intent_when_wrong"] == pytest.approx(2 / 3) and overall["doubt_intent_when_correct"] == 0


# ---------------------------------------------------------------- truth masks (language apart from vision)


class _Encoder:
    """Stands in for the network's encoder only: the oracle under test never calls its generate."""

    def encode(self, volumes, phis, job_id):  # noqa: ANN001, ANN201 - the VisionClient protocol
        return object()

    def release(self, job_id):  # noqa: ANN001, ANN201
        pass


def test_oracle_masks_are_the_truth_of_the_phis_nearest_target(factory: CaseFactory) -> None:
    from agent.phi_bank import PhiBank
    from training.prompt_eval.oracle import OracleVisionClient, label_truth

    case = factory.build("oracle", ["t1", "flair"], "volume", expected_target("left hippocampus", "volume"))
    from vision.targets import TARGETS

    bank = PhiBank.default(targets=list(TARGETS))
    oracle = OracleVisionClient(_Encoder(), bank, case.scans, label_truth(case.labels))
    handle = oracle.encode([case.scans["flair"]], [bank.encode_phi("flair")], "job")
    phi = bank.generate_phi("left hippocampus") + 0.05 * np.random.default_rng(0).standard_normal(
        bank.generate_phi("left hippocampus").shape)
    mask = oracle.generate(handle, 0, phi)
    assert mask.same_grid(case.scans["flair"])
    truth_ml = count_ml(case.labels["flair"], [17], case.scans["flair"].affine)  # 17 = left hippocampus
    assert truth_ml > 0
    assert float(mask.array.sum()) * case.scans["flair"].voxel_volume_mm3 / 1000.0 == pytest.approx(truth_ml)
    assert oracle.calls[-1][0] == "left hippocampus"
    # a phi that points nowhere (orthogonal to every bank entry in expectation) gets an empty mask
    far = -np.mean(oracle.table, axis=0)
    assert not oracle.generate(handle, 0, far).array.any()
    # only the case's scans can be answered
    with pytest.raises(KeyError):
        alien = oracle.encode([case.scans["t1"].with_array(case.scans["t1"].array + 1)], [phi], "job")
        oracle.generate(alien, 0, phi)
