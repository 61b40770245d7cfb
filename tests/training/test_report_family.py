"""The report family: its program runs in the real sandbox with the oracle vision client and writes the
recorded report, whose every number is grounded in a metric and the step that computed it.

Label cases come from the phantom label maps (tests/training/synthseg_phantom.py; CI has no
../shared/data); MNI cases from the template. The truth is the family's own voxel_ops computation on
the true masks, checked here against an independent label count and against the lesion design.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from agent.phi_bank import PhiBank
from agent.runtime import RuntimeLimits
from agent.sandbox import Sandbox
from agent.state import StepRecord, build_training_sequence, scan_infos_from_volumes
from agent.tokenizer import AgentTokenizer
from tests.training.synthseg_phantom import write_phantom_root
from tests.training.test_tasks_v2 import _independent_ml
from training.oracle import OracleVisionClient
from training.synth.label_case import LabelCase, LabelCaseSource
from training.tasks import FAMILIES, HELD_OUT_TEMPLATE_START, STEP, sample_task
from training.tasks.families_report import SIGN_NOTE
from training.tasks.rename import rename_scans
from training.trainer import TRAIN_TEMPLATES
from vision.targets import TARGETS as VISION_TARGETS
from vision.targets import canonical_target

TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "voxagent-tiny" / "tokenizer.model"
MAX_EPISODE_TOKENS = 1000
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> LabelCaseSource:
    return LabelCaseSource(write_phantom_root(tmp_path_factory.mktemp("synthseg"), subjects=3))


@pytest.fixture(scope="module")
def v2_bank() -> PhiBank:
    return PhiBank.default(targets=list(VISION_TARGETS))


def _run(sample, case, bank: PhiBank) -> Sandbox:
    client = OracleVisionClient(case, bank)
    box = Sandbox(case.scans, client=client, phi_bank=bank)
    for step in sample.steps:
        outcome = box.execute_step(step)
        assert outcome.error is None, (step, outcome.error)
    assert box.stopped
    assert [(s, canonical_target(t)) for s, t in client.calls] == [(s, canonical_target(t))
                                                                   for s, t in sample.generate_calls]
    return box


def _find(labels, want_lesions: bool, seeds=range(60)):
    for seed in seeds:
        sample, case = sample_task(seed, "report", labels=labels)
        if bool(sample.expected["lesion_count"]) == want_lesions:
            return sample, case
    raise AssertionError(f"no report case with lesions={want_lesions}")


def _check_grounding(box: Sandbox, sample) -> None:
    """Every number of the answer is linked; first-part sentences to step 1, the rest to step 2."""
    result = box.result()
    assert result.status == "succeeded" and result.text == sample.answer
    assert [s.text for s in result.report] and " ".join(s.text for s in result.report) == sample.answer
    for sentence in result.report:
        assert not sentence.unlinked, sentence
        if NUMBER.search(sentence.text):
            assert sentence.metrics and sentence.step in (1, 2), sentence
            assert all(result.metrics[i].name == n for i, n in zip(sentence.metric_indices, sentence.metrics))
        else:
            assert (sentence.metrics, sentence.step) == ([], None), sentence
    by_text = {s.text.split(":")[0]: s for s in result.report}
    assert by_text["Lesions"].step == (2 if sample.expected["lesion_count"] else 1)
    assert "lesion component count" in by_text["Lesions"].metrics
    assert [s.text for s in result.report if s.text == SIGN_NOTE]


@pytest.mark.parametrize("lesions", [False, True])
def test_label_case_report_gives_the_recorded_truth(source, v2_bank, lesions):
    sample, case = _find(source, lesions)
    assert isinstance(case, LabelCase) and sample.expected["v2"]
    box = _run(sample, case, v2_bank)
    assert box.responses == [sample.answer]
    assert len(sample.steps) == 3 and sample.steps[1].splitlines()[-1] == "read(n)"
    values = sample.expected["values"]
    for var, value in values.items():
        assert box.env[var].value == pytest.approx(value, rel=1e-9), var
    scan = next(iter(case.scans))
    for var, target in (("vi", "intracranial volume"), ("hl", "left hippocampus"), ("hr", "right hippocampus"),
                        ("vv", "lateral ventricles"), ("vc", "cerebral cortex")):
        if var in values:  # a hippocampus lost between thick slices drops its sentence
            assert values[var] == pytest.approx(_independent_ml(case, scan, target), rel=1e-12), target
    assert {"vi", "vb", "vc", "vw", "fb", "fc", "fw"} <= set(values)
    assert sample.answer.startswith("Intracranial volume: ") and "of ICV" in sample.answer
    assert box.env["n"].value == sample.expected["lesion_count"]
    if lesions:
        assert f"side: {sample.expected['side']}" in sample.answer
        assert sample.expected["side"] in (*sample.expected["design_sides"], "bilateral")
        assert "signal(" not in sample.code  # label cases have no lesion contrast design to check
    else:
        assert sample.answer.endswith("Lesions: 0 found.")
    _check_grounding(box, sample)


def test_mni_lesion_case_report_characterizes_the_lesions():
    bank = PhiBank.default()
    sample, case = _find(None, True)
    assert not isinstance(case, LabelCase) and not sample.expected["v2"]
    box = _run(sample, case, bank)
    assert box.responses == [sample.answer]
    assert "intracranial" not in sample.code and "of brain" in sample.answer  # only the targets MNI cases have
    assert box.trace[1].feedback == [str(sample.expected["lesion_count"])]
    assert box.env["side"] == sample.expected["side"] and box.env["sig"] == sample.expected["signal"]
    assert box.env["lv"].value == pytest.approx(sample.expected["lesion_volume_ml"], rel=1e-9)
    assert f"{sample.expected['signal']} on " in sample.answer
    _check_grounding(box, sample)
    healthy, healthy_case = _find(None, False)
    box = _run(healthy, healthy_case, bank)
    assert box.responses == [healthy.answer] and healthy.answer.endswith("Lesions: 0 found.")
    assert "signal(" not in healthy.code
    _check_grounding(box, healthy)


def test_truth_signal_agrees_with_the_lesion_design():
    checked = 0
    for seed in range(1, 24):
        sample, _ = sample_task(seed, "report")
        if sample.expected["lesion_count"] and sample.expected["design_signal"] is not None:
            assert sample.expected["signal"] == sample.expected["design_signal"], seed
            checked += 1
        if checked == 5:
            break
    assert checked == 5


def test_templates_hold_out_their_own_wording(source):
    fam = FAMILIES["report"]
    assert len(fam.templates) >= HELD_OUT_TEMPLATE_START + 2 and len(set(fam.templates)) == len(fam.templates)
    assert not set(fam.templates[:HELD_OUT_TEMPLATE_START]) & set(fam.templates[HELD_OUT_TEMPLATE_START:])
    prompts = set()
    for seed in range(24):
        sample, _ = sample_task(2000 + seed, "report", templates=TRAIN_TEMPLATES, labels=source)
        assert sample.template_index not in fam.template_indices("held_out")
        assert "{" not in sample.prompt and sample.prompt.strip()
        prompts.add(sample.prompt)
    assert len(prompts) >= 20
    held = {sample_task(3000 + s, "report", templates="held_out")[0].template_index for s in range(12)}
    assert held and held <= set(range(HELD_OUT_TEMPLATE_START, len(fam.templates)))


def test_episodes_fit_the_token_budgets(source, v2_bank):
    """Whole episode under ~1000 tokens with the shipped tokenizer, every step under max_step_tokens."""
    tok = AgentTokenizer.load(TOKENIZER)
    step_limit = RuntimeLimits().max_step_tokens
    for seed in range(4):
        for labels, bank in ((source, v2_bank), (None, PhiBank.default())):
            sample, case = sample_task(4000 + seed, "report", labels=labels)
            renamed, rcase = rename_scans(sample, case, np.random.default_rng(seed))  # longer scan names
            for s, c in ((sample, case), (renamed, rcase)):
                box = Sandbox(c.scans, client=OracleVisionClient(c, bank), phi_bank=bank)
                records = []
                for code in s.steps:
                    outcome = box.execute_step(code)
                    records.append(StepRecord(code=code, feedback=outcome.feedback, error=outcome.error))
                seq = build_training_sequence(tok, s.prompt, scan_infos_from_volumes(c.scans), records, 256)
                assert len(seq) < MAX_EPISODE_TOKENS, (seed, len(seq))
                for code in s.steps:
                    assert len(tok.encode(code)) + 1 < step_limit, (seed, code)
                assert s.code.count(STEP) == 3
