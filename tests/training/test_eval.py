"""`voxagent eval` with the shipped checkpoint: the contract keys, and the issue's figures.

The figures test asserts the targets of issue 6 on a CI-sized held-out set. It is a strict xfail while
the shipped checkpoint misses them (see models/voxagent-tiny/MODEL_CARD.md): it still runs the full
evaluation on every CI run, and turns red as soon as the figures are met without the marker removed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.evaluate import FLAT_KEYS, answer_matches, dice, generated_masks

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "voxagent-tiny"
GOALS = {"code_exact_match": 0.95, "task_success": 0.90, "dice_brain": 0.90, "dice_gm": 0.80, "dice_wm": 0.80,
         "dice_lesion": 0.75, "mni_dice_brain": 0.90, "mni_dice_gm": 0.80, "mni_dice_wm": 0.80,
         "characterization_accuracy": 0.89}
MAX_VOLUME_ERROR = 0.05


def _eval(*args: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "cli", "eval", "--model", str(SHIPPED), "--json", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_answer_matching_tolerates_ten_percent_and_nothing_else():
    assert answer_matches("The brain volume is 1050.0 mL.", "The brain volume is 1000.0 mL.")
    assert not answer_matches("The brain volume is 1200.0 mL.", "The brain volume is 1000.0 mL.")
    assert not answer_matches("The lesion is hypointense on T1.", "The lesion is hyperintense on T1.")
    assert answer_matches("No, the lesion does not enhance.", "No, the lesion does not enhance.")


def test_generated_masks_follow_code_order_and_dice():
    import numpy as np

    from voxel_ops import Volume

    a = Volume(np.ones((2, 2, 2), np.float32), np.eye(4))
    b = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
    codes = ['e = encode(t1<MOD>)\nread(e)',
             'gm = generate(e, t1<MOD>, "grey matter")\nb = generate(e, t1<MOD>, "brain")']
    masks = generated_masks(codes, [a, b])
    assert masks[("t1", "gray matter")] is a and masks[("t1", "brain")] is b
    assert dice(a.array, a.array) == 1.0 and dice(a.array, b.array) == 0.0


@pytest.mark.slow
def test_eval_with_shipped_checkpoint_prints_every_key_in_unit_interval(tmp_path):
    figures = _eval("--cases", "2", "--report", str(tmp_path))
    assert set(FLAT_KEYS) <= set(figures)
    for key in FLAT_KEYS:
        assert 0.0 <= figures[key] <= 1.0, (key, figures[key])
    # the report separates the agent's program from the network on the real T1
    mni = json.loads((tmp_path / "eval.json").read_text())["mni"]
    assert set(mni) == {"brain", "gray matter", "white matter"}
    assert mni["brain"]["agent"] == figures["mni_dice_brain"] and mni["brain"]["code"]
    assert mni["brain"]["program"] > 0.85  # the shipped network finds the brain on real anatomy
    assert "## Real MNI152 T1" in (tmp_path / "eval.md").read_text()
    # every generated target also gets the working grid's own ceiling, a Dice in (0, 1]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["dice_grid_ceiling"]) == set(report["dice_all_targets"])
    assert all(0.0 < c <= 1.0 for c in report["dice_grid_ceiling"].values())
    assert "grid ceiling" in (tmp_path / "eval.md").read_text()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 6 is open: the shipped tiny checkpoint does not reach these figures yet "
                   "(models/voxagent-tiny/MODEL_CARD.md). strict: once a checkpoint meets them this XPASSes and "
                   "fails, so the marker must be removed together with shipping it.")
def test_shipped_checkpoint_meets_issue_figures():
    figures = _eval("--cases", "20", "--seed", "1")
    misses = {k: figures[k] for k, goal in GOALS.items() if figures[k] < goal}
    if figures["volume_error_median"] > MAX_VOLUME_ERROR:
        misses["volume_error_median"] = figures["volume_error_median"]
    assert not misses, f"figures below the issue's targets: {misses}"


def _saved_report(directory: Path, seed: int, wm: float, mni: bool) -> Path:
    from training.report import write_report

    figures = {k: 0.5 for k in FLAT_KEYS} | {"dice_wm": wm}
    report = {"figures": figures, "counts": {"cases": 4}, "seed": seed, "by_family": {},
              "dice_all_targets": {"white matter": wm, "left hemisphere": 0.8},
              "dice_grid_ceiling": {"white matter": 0.89, "left hemisphere": 0.99},
              "mni": {"white matter": {"agent": 0.5, "program": 0.5}} if mni else {},
              "phi_separation": {"mean_cosine": 0.6, "max_cosine": 0.9, "targets": [], "closest_pair": ["a", "b"]}}
    write_report(report, directory)
    return directory


def test_eval_compare_prints_saved_reports_side_by_side(tmp_path):
    a = _saved_report(tmp_path / "run_a", 1, 0.412, mni=True)
    b = _saved_report(tmp_path / "run_b", 2, 0.734, mni=False)
    proc = subprocess.run([sys.executable, "-m", "cli", "eval", "--compare", str(a), str(b)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in proc.stdout.splitlines()}
    assert "run_a (seed 1, 4 cases)" in proc.stdout and "run_b (seed 2, 4 cases)" in proc.stdout
    assert rows["dice_wm"] == [">= 0.8", "0.412", "0.734"]
    assert rows["mni_dice_wm"][1:] == ["0.500", "-"]  # run_b skipped the MNI T1: absent, not 0
    assert rows["grid ceiling white matter"][1:] == ["0.890", "0.890"]
    assert rows["Dice left hemisphere"][1:] == ["0.800", "0.800"]


def test_eval_compare_refuses_a_directory_without_a_report(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eval.json").write_text("[1, 2]")
    for d in ("empty", "bad"):
        proc = subprocess.run([sys.executable, "-m", "cli", "eval", "--compare", str(tmp_path / d)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "voxagent eval: error:" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_mni_truth_volumes_are_the_template_maps_at_half_probability():
    """The MNI truths in mL, pinned by an independent count straight from the nilearn files.

    The GM/WM maps are stored as uint8 0..255; thresholding the raw values at 0.5 (the old bug)
    gave GM 1,962 mL, WM 1,679 mL, brain 2,053 mL. At probability (value / 255) > 0.5 they are
    GM ~1,080 mL, WM ~632 mL; brain = GM + WM > 0.5 with holes filled ~1,749 mL.
    """
    import nibabel as nib
    import nilearn
    import numpy as np

    from training.evaluate import mni_t1_and_truths

    t1, truths = mni_t1_and_truths()
    base = Path(nilearn.__file__).parent / "datasets" / "data"
    raw = {k: nib.load(base / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz") for k in ("gm", "wm")}
    voxel_ml = abs(np.linalg.det(raw["gm"].affine[:3, :3])) / 1000.0
    independent = {"gray matter": np.asarray(raw["gm"].dataobj).astype(np.int64) > 127,  # value / 255 > 0.5
                   "white matter": np.asarray(raw["wm"].dataobj).astype(np.int64) > 127}
    ml = {t: float(m.sum()) * voxel_ml for t, m in truths.items()}
    for target, mask in independent.items():
        assert np.array_equal(truths[target], mask), target
    assert abs(ml["gray matter"] - 1079.6) < 5, ml
    assert abs(ml["white matter"] - 632.0) < 5, ml
    assert abs(ml["brain"] - 1749.0) < 5, ml
    assert ml["brain"] >= ml["gray matter"] + ml["white matter"]
    assert truths["gray matter"].shape == t1.shape


def test_oracle_masks_make_the_expert_program_exact_on_label_cases(tmp_path):
    """Truth masks in place of the network's (language judged alone): the expert program of a held-out
    label-case task, run through the oracle, generates exactly the truth of each of its targets."""
    import numpy as np

    from agent.phi_bank import PhiBank
    from tests.training.synthseg_phantom import write_phantom_root
    from training.agent_episodes import label_source
    from training.evaluate import Evaluator, generate_truth, held_out_task
    from vision.targets import TARGETS

    root = write_phantom_root(tmp_path / "synthseg", numbers=(17, 18))
    ev = Evaluator(SHIPPED, labels=label_source(root, validation=True), oracle_masks=True)
    ev.bank = PhiBank.default(targets=list(TARGETS))  # a bank with every v2 target, as the v2 models ship
    sample, case = held_out_task(10**9 + 7, "multi_volume", ev.labels)
    assert len(sample.generate_calls) >= 2
    masks = generated_masks(sample.steps, ev.run_program(sample.steps, case.scans, case).generated)
    for scan, target in sample.generate_calls:
        truth = generate_truth(case, scan, target).array
        assert truth.any()
        got = masks[(scan, target)].array
        assert np.array_equal(got > 0.5, truth > 0), target
