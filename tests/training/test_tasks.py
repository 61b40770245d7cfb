"""Task families: template expansion coverage, program conventions, and ground-truth programs run in the
real sandbox (with the case's true masks as vision output) giving the recorded ground truth."""
from __future__ import annotations

import re

import numpy as np
import pytest

import voxel_ops as vo
from agent.phi_bank import DEFAULT_TARGETS, PhiBank
from agent.sandbox import Sandbox
from training.oracle import OracleVisionClient
from training.tasks import FAMILIES, MOD, STEP, case_for, sample_task
from training.tasks.grammar import expand, placeholders
from training.tasks.lexicon import LEXICON
from training.tasks.targets import SCAN_PHRASES, TARGETS

# names each family binds per task (everything else must come from the shared lexicon)
BOUND = {"target", "target2", "scan", "scan_in", "which", "adj", "margin", "verb", "how", "structure", "lesion",
         "seen", "seq", "seq_scan", "desc"}


def _reachable(text: str, seen: set[str]) -> None:
    for name in placeholders(text):
        if name in seen:
            continue
        seen.add(name)
        for alt in LEXICON.get(name, []):
            _reachable(alt, seen)


def test_at_least_18_families_with_10_templates_each():
    assert len(FAMILIES) >= 18
    for fam in FAMILIES.values():
        assert len(fam.templates) >= 10, fam.name
        assert len(set(fam.templates)) == len(fam.templates), fam.name


def test_every_placeholder_is_defined_and_every_lexicon_entry_is_used():
    used: set[str] = set()
    for fam in FAMILIES.values():
        for template in fam.all_templates:
            _reachable(template, used)
    for alts in (BOUND_ALTS := {"scan_in": ["in {scan}", "on {scan}", "using {scan}", "from {scan}"],
                                "which": ["{extent_word}", "{height_word}", "{width_word}", "{depth_word}"],
                                "verb": ["{keep_verb}", "{remove_verb}"], "how": ["{ratio_word}", "{diff_word}"],
                                "lesion": ["the {lesion_word} {seen}"],
                                "margin_phrase": LEXICON["margin_phrase"]}).values():
        for alt in alts:
            _reachable(alt, used)
    del BOUND_ALTS
    undefined = {n for n in used if n not in LEXICON and n not in BOUND}
    assert not undefined, f"placeholders without alternatives: {sorted(undefined)}"
    unused = set(LEXICON) - used
    assert not unused, f"lexicon entries no template reaches: {sorted(unused)}"
    for name, alts in LEXICON.items():
        assert alts, name


def test_expansion_is_recursive_and_complete():
    rng = np.random.default_rng(0)
    for _ in range(200):
        text = expand("{please} {segment_verb} the brain {closing}", rng, LEXICON)
        assert "{" not in text and "}" not in text
    with pytest.raises(KeyError):
        expand("{no_such_placeholder}", rng, LEXICON)


def test_targets_and_scan_phrases_are_supported():
    for t in TARGETS.values():
        assert len(t.phrases) >= 5
        for g in t.generated:
            assert g in DEFAULT_TARGETS
    assert all(len(v) >= 4 for v in SCAN_PHRASES.values())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_prompts_vary_and_programs_follow_conventions(name):
    prompts = set()
    for seed in range(6):
        sample, case = sample_task(seed, name)
        assert "{" not in sample.prompt and sample.prompt.strip()
        prompts.add(sample.prompt)
        assert sample.code.endswith(STEP) and sample.code.count(STEP) == len(sample.steps)
        assert sample.steps[-1].endswith("stop()")
        for step in sample.steps[:-1]:
            assert step.splitlines()[-1].startswith("read("), step  # a step ends where a value is read back
        for line in sample.code.replace(STEP, "\n").splitlines():
            if "encode(" in line:
                args = re.search(r"encode\((.*)\)", line).group(1).split(", ")
                assert all(a.endswith(MOD) for a in args), line
            if "generate(" in line:
                assert re.search(r"generate\(\w+, \w+<MOD>, \"[a-z ]+\"\)", line), line
        assert len(sample.generate_calls) == sample.code.count("generate(")
        assert all(scan in case.scans for scan, _ in sample.generate_calls)
    assert len(prompts) >= 3


def _run(sample, case):
    bank = PhiBank.default()
    client = OracleVisionClient(case, bank)
    box = Sandbox(case.scans, client=client, phi_bank=bank)
    for step in sample.steps:
        outcome = box.execute_step(step)
        assert outcome.error is None, (sample.family, step, outcome.error)
    assert box.stopped
    assert client.calls == sample.generate_calls
    return box


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_ground_truth_program_runs_in_the_sandbox_and_gives_the_recorded_truth(name):
    for seed in (0, 1):
        sample, case = sample_task(100 + seed, name)
        box = _run(sample, case)
        assert box.responses[-1] == sample.answer, (name, seed, box.responses, sample.expected)
        if name == "crop":
            assert box.output_volumes["cropped"].shape == sample.expected["shape"]
        if name == "keep_remove":
            got = float(np.sum(box.output_volumes["edited"].array, dtype=np.float64))
            assert got == pytest.approx(sample.expected["edited_sum"], rel=1e-6)
        if name == "segment":
            (out,) = box.outputs
            assert int(box.output_volumes[out.name].array.sum()) == sample.expected["target_voxels"]
        if name in READ_CHECKS:
            # the answer is literal text in the program; what must agree with the truth is what was read
            read_back = box.trace[-2].feedback
            assert READ_CHECKS[name](read_back, sample.expected), (name, seed, read_back, sample.expected)


READ_CHECKS = {
    "lesion_count": lambda fb, e: fb == [str(e["count"])],
    "lesion_signal": lambda fb, e: fb == [e["signal"]],
    "lesion_side": lambda fb, e: fb == [e["side"]],
    "lesion_region": lambda fb, e: fb[0] == e["side"],
    "enhancement": lambda fb, e: (fb[1] == "hyperintense" and fb[0] != "hyperintense") == e["enhancing"],
    "restriction": lambda fb, e: (fb == ["hyperintense", "hypointense"]) == e["restricting"],
}


def test_longitudinal_trend_is_worded_by_the_library_from_the_measured_change():
    """The agent copies trend(pc); the word must follow the percent the sandbox measured, both ways."""
    seen = set()
    for seed in range(200, 212):
        sample, case = sample_task(seed, "longitudinal")
        box = _run(sample, case)
        pc, word = box.env["pc"].value, box.env["t"]
        assert word == sample.expected["trend"], (seed, pc, word)
        assert word == ("has grown" if pc > 20 else "has shrunk" if pc < -20 else "is stable"), (seed, pc)
        assert pc == pytest.approx(sample.expected["percent_change"], rel=1e-6, abs=1e-6)
        assert box.responses[-1] == sample.answer and word in sample.answer
        seen.add(word)
    assert {"has grown", "is stable"} <= seen


@pytest.mark.parametrize("name", sorted(READ_CHECKS))
def test_read_back_values_decide_the_characterization_answers(name):
    """More cases per characterization family: the read-back value must imply the recorded answer."""
    for seed in range(200, 206):
        sample, case = sample_task(seed, name)
        box = _run(sample, case)
        read_back = box.trace[-2].feedback
        assert READ_CHECKS[name](read_back, sample.expected), (name, seed, read_back, sample.expected)


def test_lesion_targeting_covers_every_description_and_measures_the_named_lesion():
    """Largest, left/right-sided, most superior and hyperintense: the program picks the recorded lesion."""
    seen = {}
    for seed in range(300, 340):
        sample, case = sample_task(seed, "target_lesion")
        seen.setdefault(sample.expected["description"], (sample, case))
        if len(seen) == 5:
            break
    assert set(seen) == {"largest", "left", "right", "superior", "hyperintense"}
    for desc, (sample, case) in seen.items():
        box = _run(sample, case)
        assert box.responses[-1] == sample.answer, (desc, box.responses)
        got = box.env["v"].value
        truth = case.mask("lesion", "flair", lesion=sample.expected["lesion_index"])
        assert got == pytest.approx(vo.volume_ml(truth), rel=1e-6), desc
        others = [t.index for t in case.lesions if t.index != sample.expected["lesion_index"]]
        assert all(abs(vo.volume_ml(case.mask("lesion", "flair", lesion=i)) - got) > 1e-9 for i in others)


def test_sample_task_is_deterministic_and_template_restriction_holds():
    a, case_a = sample_task(42)
    b, case_b = sample_task(42)
    assert (a.family, a.prompt, a.code, a.answer) == (b.family, b.prompt, b.code, b.answer)
    assert all(np.array_equal(case_a.scans[n].array, case_b.scans[n].array) for n in case_a.scans)
    for seed in range(5):
        s, _ = sample_task(seed, "volume", templates=[0, 1])
        assert s.template_index in (0, 1)


def test_a_real_anatomy_draw_without_a_label_source_is_an_error_not_an_mni_case():
    draw = FAMILIES["volume"].draw_v2(np.random.default_rng(3))
    with pytest.raises(ValueError, match="LabelCaseSource"):
        case_for(draw, 3, None)
    mni_draw = FAMILIES["volume"].draw(np.random.default_rng(3))
    assert set(case_for(mni_draw, 3, None).scans)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_renamed_scans_keep_the_program_and_its_truth(name):
    """Neutral scan names (training augmentation): same program up to the names, same recorded answer."""
    from training.tasks.rename import rename_scans

    for seed in (0, 1):
        sample, case = sample_task(300 + seed, name)
        renamed, rcase = rename_scans(sample, case, np.random.default_rng(seed))
        old, new = list(case.scans), list(rcase.scans)
        assert len(set(new)) == len(old) and not set(new) & set(old)
        for before, after in zip(old, new):
            assert rcase.modality(after) == case.modality(before)
            assert rcase.scans[after].meta.source_name == after
            assert np.array_equal(rcase.mask("brain", after).array, case.mask("brain", before).array)
        code = "\n".join(renamed.steps)
        assert not any(re.search(rf"(?<![\w.]){o}(?!\w)", re.sub(r'"[^"]*"', '""', code)) for o in old), code
        assert len(renamed.steps) == len(sample.steps)
        assert (renamed.steps != sample.steps) == (MOD in sample.code)  # refusals name no scan
        box = _run(renamed, rcase)
        assert box.responses[-1] == sample.answer, (name, seed, box.responses)


def test_training_tasks_carry_neutral_scan_names_for_a_share_only():
    from training.tasks.rename import NEUTRAL_NAMES
    from training.trainer import RENAME_PROB, sample_training_task

    named = [set(sample_training_task(0, i)[1].scans) for i in range(40)]
    neutral = sum(bool(names & set(NEUTRAL_NAMES)) for names in named)
    assert 0 < neutral < 40 and abs(neutral / 40 - RENAME_PROB) < 0.25
    assert [set(sample_training_task(0, i)[1].scans) for i in range(5)] == named[:5]  # deterministic
