"""Tasks on real anatomy (label cases) over every `vision.targets` target, and the wider wording.

Runs on the phantom label-map folder (tests/training/synthseg_phantom.py): CI has no ../shared/data.
Every family's ground-truth program runs in the real sandbox with the oracle vision client, whose
masks come from the case's labels; the answer must be the recorded one, and volumes must equal an
independent count of label values times the voxel volume of the affine.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from agent.phi_bank import DEFAULT_TARGETS, PhiBank
from agent.sandbox import Sandbox
from tests.training.synthseg_phantom import write_phantom_root
from training.oracle import OracleVisionClient
from training.synth.label_case import LabelCase, LabelCaseSource, LabelCaseSpec
from training.tasks import FAMILIES, HELD_OUT_TEMPLATE_START, sample_task
from training.tasks.lexicon import MISSPELLINGS, noisy
from training.tasks.rename import rename_scans
from training.trainer import TRAIN_TEMPLATES
from vision.targets import TARGETS as VISION_TARGETS
from vision.targets import canonical_target

ANATOMY_FAMILIES = ("segment", "volume", "extents", "bounding_box", "mean_intensity", "snr", "crop", "keep_remove",
                    "compare", "asymmetry", "icv_normalized", "centroid", "multi_volume")
# FreeSurfer label values, written out here (not read from vision.targets): the independent truth
INDEPENDENT_LABELS = {"left hippocampus": {17}, "right hippocampus": {53}, "hippocampus": {17, 53},
                      "thalamus": {10, 49}, "left thalamus": {10}, "lateral ventricles": {4, 5, 43, 44},
                      "left cerebral white matter": {2}, "cerebral cortex": {3, 42}, "brain-stem": {16}}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> LabelCaseSource:
    return LabelCaseSource(write_phantom_root(tmp_path_factory.mktemp("synthseg"), subjects=3))


@pytest.fixture(scope="module")
def bank() -> PhiBank:
    return PhiBank.default(targets=list(VISION_TARGETS))


def _run(sample, case, bank: PhiBank) -> Sandbox:
    client = OracleVisionClient(case, bank)
    box = Sandbox(case.scans, client=client, phi_bank=bank)
    for step in sample.steps:
        outcome = box.execute_step(step)
        assert outcome.error is None, (sample.family, step, outcome.error)
    assert box.stopped
    assert [(s, canonical_target(t)) for s, t in client.calls] == sample.generate_calls
    return box


def _independent_ml(case: LabelCase, scan: str, target: str) -> float:
    labels = case.labels[scan]
    if target == "intracranial volume":
        inside = labels.array > 0  # every segmentation label is intracranial
    else:
        inside = np.isin(labels.array, sorted(INDEPENDENT_LABELS[target]))
    return float(inside.sum()) * abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_runs_on_label_cases_and_gives_the_recorded_truth(name, source, bank):
    for seed in (0, 1):
        sample, case = sample_task(500 + seed, name, labels=source)
        if name in ANATOMY_FAMILIES and not (name == "segment" and sample.expected["target"] in
                                              ("lesion", "edema", "enhancing tumor")):
            assert isinstance(case, LabelCase), name
        box = _run(sample, case, bank)
        assert box.responses[-1] == sample.answer, (name, seed, box.responses, sample.expected)
        assert "{" not in sample.prompt and sample.prompt.strip()
        for line in sample.code.splitlines():
            if "generate(" in line:
                assert re.search(r'generate\(\w+, \w+<MOD>, "[A-Za-z0-9 -]+"\)', line), line
        if name == "segment":
            (out,) = box.outputs
            assert int(box.output_volumes[out.name].array.sum()) == sample.expected["target_voxels"]
        if name == "multi_volume":
            got = [box.env[f"v{i + 1}"].value for i in range(len(sample.expected["targets"]))]
            assert got == pytest.approx(sample.expected["volumes_ml"], rel=1e-9)


def test_generate_targets_are_canonical_names_of_vision_targets(source):
    for i in range(60):
        name = sorted(FAMILIES)[i % len(FAMILIES)]
        sample, _ = sample_task(700 + i, name, labels=source)
        for _, target in sample.generate_calls:
            assert target in VISION_TARGETS and canonical_target(target) == target, (name, target)


def test_every_v2_ground_truth_step_passes_the_runtime_constraint(source, bank):
    """The decoder's constraint (flat shape, grounded numbers, name-bound targets, argument kinds read
    from the sandbox's environment as the runtime reads them) refuses no v2 program."""
    from agent.constrained import StepConstraint, request_numbers, target_strings, value_kinds
    from agent.functions import default_registry
    from agent.runtime import _step_bindings

    registry, targets = default_registry(), target_strings(bank)
    steps = 0
    for i in range(3 * len(FAMILIES)):
        name = sorted(FAMILIES)[i % len(FAMILIES)]
        sample, case = sample_task(1500 + i, name, labels=source)
        box = Sandbox(case.scans, client=OracleVisionClient(case, bank), phi_bank=bank)
        generated: set[tuple[str, str]] = set()
        for step in sample.steps:
            c = StepConstraint(set(box.env), registry, targets, numbers=request_numbers(sample.prompt), flat=True,
                               generated=generated, kinds={k: value_kinds(v) for k, v in box.env.items()})
            assert c.try_feed(step) and c.complete(), (name, step)
            assert box.execute_step(step).error is None, (name, step)
            generated |= _step_bindings(step)[1]
            steps += 1
    assert steps > 3 * len(FAMILIES)


def test_new_targets_appear_in_a_good_share_of_anatomy_draws(source):
    old = set(DEFAULT_TARGETS) | {"csf"}
    new_share, seen = [], set()
    for i in range(60):
        name = ANATOMY_FAMILIES[i % len(ANATOMY_FAMILIES)]
        sample, _ = sample_task(900 + i, name, labels=source)
        targets = {t for _, t in sample.generate_calls}
        seen |= targets
        new_share.append(bool(targets - old))
    assert np.mean(new_share) >= 0.5, np.mean(new_share)
    assert {"intracranial volume"} & seen and any("hippocampus" in t for t in seen), seen


def test_truth_volumes_equal_an_independent_label_count(source, bank):
    case = source.case(3, LabelCaseSpec())
    scan = next(iter(case.scans))
    import voxel_ops as vo

    for target in (*INDEPENDENT_LABELS, "intracranial volume"):
        assert vo.volume_ml(case.mask(target, scan)) == pytest.approx(_independent_ml(case, scan, target), rel=1e-12)
        assert _independent_ml(case, scan, target) > 0, target
    checked = 0
    for seed in range(40):  # the volume family's program, run in the sandbox, against the count
        sample, case = sample_task(seed, "volume", labels=source)
        target = sample.expected["target"]
        if target not in INDEPENDENT_LABELS and target != "intracranial volume":
            continue
        box = _run(sample, case, bank)
        scan = next(iter(case.scans))
        assert box.env["v"].value == pytest.approx(_independent_ml(case, scan, target), rel=1e-9), target
        checked += 1
    assert checked >= 2


def test_held_out_templates_are_never_drawn_for_training_and_are_worded_apart(source):
    for fam in FAMILIES.values():
        assert len(fam.templates) >= HELD_OUT_TEMPLATE_START + 2, fam.name
        assert not set(fam.templates[:HELD_OUT_TEMPLATE_START]) & set(fam.templates[HELD_OUT_TEMPLATE_START:])
    for i in range(44):
        name = sorted(FAMILIES)[i % len(FAMILIES)]
        sample, _ = sample_task(1200 + i, name, templates=TRAIN_TEMPLATES, labels=source)
        assert sample.template_index not in FAMILIES[name].template_indices("held_out")
    drawn = {sample_task(1300 + i, "volume", templates=TRAIN_TEMPLATES, labels=source)[0].template_index
             for i in range(60)}
    assert drawn & set(range(len(FAMILIES["volume"].templates), len(FAMILIES["volume"].all_templates))), \
        "training never drew an extra template"


def test_extra_templates_expand_and_are_new_shapes(source):
    """Every training-only extra builds a prompt with its family's placeholders, and none repeats a
    template of its family (least of all a held-out one, which would leak the held-out wording)."""
    from training.tasks.templates_extra import EXTRA_TEMPLATES

    def shape(t: str) -> str:
        return " ".join(t.lower().replace(",", " ").replace(".", " ").replace("?", " ").split())

    assert set(EXTRA_TEMPLATES) <= set(FAMILIES)
    for name, extras in EXTRA_TEMPLATES.items():
        fam = FAMILIES[name]
        assert len(extras) >= 10 and len(set(extras)) == len(extras), name
        assert not {shape(t) for t in extras} & {shape(t) for t in fam.templates}, name
        for ti in range(len(fam.templates), len(fam.all_templates)):
            try:
                built, _ = sample_task(77, name, templates=[ti], labels=source)
            except Exception as exc:  # noqa: BLE001 - name the template that failed
                raise AssertionError(f"{name} extra template {ti} ({fam.all_templates[ti]!r}): {exc}") from exc
            assert built.template_index == ti
            assert built.prompt.strip() and "{" not in built.prompt, (name, ti)


def test_misspelling_noise_is_seeded_and_small():
    text = "What is the volume of the left hippocampus and the lateral ventricles in the brain?"
    a = [noisy(text, np.random.default_rng(s)) for s in range(400)]
    assert a == [noisy(text, np.random.default_rng(s)) for s in range(400)]  # deterministic
    assert noisy(text, np.random.default_rng(0), rate=0.0) == text
    wrong = {m for alts in MISSPELLINGS.values() for m in alts}
    misspelled = [t for t in a if set(re.findall(r"[a-z]+", t.lower())) & wrong]
    assert 0.05 < len(misspelled) / len(a) < 0.5
    assert sum(t == text for t in a) / len(a) > 0.4  # most prompts keep their wording


def test_label_cases_are_deterministic_cheap_and_keep_validation_subjects_out(tmp_path):
    root = write_phantom_root(tmp_path, numbers=(1, 2, 17, 18))
    src = LabelCaseSource(root)
    assert set(src.subjects) == {"training_seg_01", "training_seg_02"}
    assert set(LabelCaseSource(root, subjects=["training_seg_17", "training_seg_18"]).subjects) == {
        "training_seg_17", "training_seg_18"}
    src.case(0)  # load
    start = time.perf_counter()
    a = src.case(5, LabelCaseSpec(lesions=(1, 2)))
    assert time.perf_counter() - start < 2.0
    b = src.case(5, LabelCaseSpec(lesions=(1, 2)))
    assert a.subject == b.subject and np.array_equal(a.scans["t1"].array, b.scans["t1"].array)
    assert np.array_equal(a.labels["t1"].array, b.labels["t1"].array)
    for t in a.lesions:
        m = a.mask("lesion", "t1", lesion=t.index)
        import voxel_ops as vo

        assert vo.volume_ml(m) == pytest.approx(t.volume_ml["t1"]) and t.volume_ml["t1"] > 0


def test_sample_task_with_labels_is_deterministic_and_survives_renaming(source, bank):
    a, case_a = sample_task(77, "multi_volume", labels=source)
    b, _ = sample_task(77, "multi_volume", labels=source)
    assert (a.prompt, a.code, a.answer) == (b.prompt, b.code, b.answer)
    renamed, rcase = rename_scans(a, case_a, np.random.default_rng(0))
    box = _run(renamed, rcase, bank)
    assert box.responses[-1] == a.answer
