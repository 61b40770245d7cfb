"""Single-task baselines: each trains on its own stream and lines up next to the joint figures."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from training.baselines import MIN_SPACING, SEG_TARGETS, TRACE_FIELDS, joint_rows, main, train_segmentation
from vision.config import NEW_NETWORK_CEILING


def test_lesion_baseline_trains_on_cases_with_lesions():
    assert "lesion" in SEG_TARGETS
    before = {k: v.clone() for k, v in train_segmentation("lesion", minutes=0.0)[0].state_dict().items()}
    net, steps = train_segmentation("lesion", minutes=0.05)
    assert steps >= 1
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed  # the optimizer stepped on a non-empty lesion mask


def test_joint_rows_pair_every_baseline_figure():
    baselines = {"budget": "4 min", "eval": {"dice": {"brain": 0.9, "lesion": None}, "lesion_side_accuracy": 0.5}}
    report = {"dice_all_targets": {"brain": 0.8}, "by_family": {"lesion_side": {"task_success": 0.25}}}
    rows = joint_rows(baselines, report)["rows"]
    assert [(r["task"], r["joint"], r["baseline"]) for r in rows] == [
        ("Dice brain", 0.8, 0.9), ("lesion side accuracy", 0.25, 0.5)]


def test_baselines_normalize_inputs_as_the_joint_model_they_are_compared_with():
    net, _ = train_segmentation("brain", minutes=0.0, intensity_ceiling=1.0)
    assert net.config.intensity_ceiling == 1.0 and net.config.baseline and net.config.min_spacing == MIN_SPACING
    assert train_segmentation("brain", minutes=0.0)[0].config.intensity_ceiling == NEW_NETWORK_CEILING


def test_baselines_widen_the_network_on_request():
    wide, _ = train_segmentation("brain", minutes=0.0, channels=(16, 32, 32, 32))
    narrow, _ = train_segmentation("brain", minutes=0.0)
    assert wide.config.channels == (16, 32, 32, 32) and narrow.config.channels == (8, 16, 16, 16)
    count = lambda net: sum(p.numel() for p in net.parameters())
    assert count(wide) > 3 * count(narrow)


@pytest.mark.parametrize("bad", ["3,5", "0,8", "a,b"])
def test_baselines_cli_rejects_impossible_channels(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--channels", bad, "--targets", "brain", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2 and "--channels" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_baselines_cli_rejects_a_ceiling_below_one(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--intensity-ceiling", "0.5", "--out", str(tmp_path / "b")])
    assert exc.value.code == 2 and not (tmp_path / "b").exists()


def test_baselines_cli_trains_only_the_named_tasks(tmp_path):
    out = tmp_path / "b"
    assert main(["--targets", "brain", "--minutes", "0.02", "--eval-cases", "2", "--threads", "1",
                 "--intensity-ceiling", "1", "--out", str(out)]) == 0
    result = json.loads((out / "baselines.json").read_text())
    assert set(result["steps"]) == {"brain"} and result["intensity_ceiling"] == 1.0
    assert result["channels"] == [8, 16, 16, 16]  # the record says which network was trained
    assert set(result["eval"]["dice"]) == {"brain"} and result["eval"]["lesion_side_accuracy"] is None
    with (out / "trace_brain.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["steps"]["brain"] >= 1 and tuple(rows[0]) == TRACE_FIELDS
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(0.0 <= float(r[k]) <= 1.0 for r in rows for k in ("dice_loss", "p_inside", "p_outside"))
    with pytest.raises(SystemExit) as exc:
        main(["--targets", "brain,hippocampus", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and not (tmp_path / "c").exists()
