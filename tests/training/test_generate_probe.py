"""generate_probe: statistics of a generate call, and a teacher-forced probe of the shipped checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.generate_probe import generate_stats, main, summarize

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "voxagent-tiny"


def test_stats_separate_inside_outside_and_threshold_at_half():
    truth = torch.zeros(1, 1, 4, 4, 4)
    truth[0, 0, :2, :2, :2] = 1  # 8 of 64 voxels
    logits = torch.full_like(truth, -10.0)
    logits[0, 0, :2, :2, :] = -12.0  # the half not found ranks below the background
    logits[0, 0, :2, :2, :1] = 10.0  # half the target found
    logits[0, 0, 3, 3, 3] = 0.0  # p 0.5 outside: not above the threshold
    s = generate_stats("segment", 1, "lesion", logits, truth)
    assert s.target_fraction == pytest.approx(8 / 64)
    assert s.p_inside == pytest.approx(0.5, abs=1e-3)
    assert s.p_outside_max == pytest.approx(0.5)
    assert s.predicted_fraction == pytest.approx(4 / 64)
    assert s.dice == pytest.approx(2 * 4 / (4 + 8))
    assert s.dice_at_true_volume == pytest.approx(4 / 8)  # top 8: the 4 found, the p-0.5 voxel, 3 background
    assert s.dice_best_threshold == pytest.approx(s.dice)  # no threshold finds the half at logit -12
    assert summarize([s, s])["lesion"]["calls"] == 2


def test_empty_prediction_scores_zero_and_keeps_the_ranking():
    truth = torch.zeros(1, 1, 8, 8, 8)
    truth[0, 0, 4, 4, 4] = 1
    logits = torch.full_like(truth, -6.0)
    logits[0, 0, 4, 4, 4] = -3.0  # ranked first, still below 0.5: the "empty" failure
    s = generate_stats("lesion_count", 2, "lesion", logits, truth)
    assert s.dice == 0.0 and s.predicted_fraction == 0.0
    assert s.p_inside > 10 * s.p_outside
    assert s.dice_at_true_volume == 1.0  # the ranking alone would find it
    assert s.dice_best_threshold == 0.0  # p 0.047 inside: below the lowest fixed threshold (0.1)


def test_over_segmentation_keeps_a_perfect_ranking_apart_from_a_wrong_one():
    truth = torch.zeros(1, 1, 8, 8, 8)
    truth[0, 0, 1:3, 1:3, 1:3] = 1  # 8 voxels
    logits = torch.full_like(truth, 1.0)  # p 0.73 everywhere: over-segmented
    logits[0, 0, 1:3, 1:3, 1:3] = 4.0
    ranked = generate_stats("segment", 3, "lesion", logits, truth)
    assert ranked.predicted_fraction == 1.0 and ranked.dice < 0.04
    assert ranked.dice_at_true_volume == 1.0
    assert ranked.dice_best_threshold == 1.0  # p 0.98 inside, 0.73 outside: a 0.9 threshold cuts it exactly
    elsewhere = logits.clone()
    elsewhere[0, 0, 1:3, 1:3, 1:3] = 1.0
    elsewhere[0, 0, 5:7, 5:7, 5:7] = 4.0  # the same volume, the wrong place
    assert generate_stats("segment", 3, "lesion", elsewhere, truth).dice_at_true_volume == 0.0


@pytest.mark.slow
def test_probe_of_the_shipped_checkpoint_writes_rows_per_generate(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["--model", str(SHIPPED), "--families", "segment", "--seeds", "2", "--threads", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["rows"]) >= 2
    for row in report["rows"]:
        assert 0 < row["target_fraction"] < 1 and 0 <= row["dice"] <= 1
        assert 0 <= row["dice_at_true_volume"] <= 1
        assert not math.isnan(row["p_inside"])
    assert "| target |" in capsys.readouterr().out


def test_cli_refuses_unknown_families_and_missing_checkpoints(tmp_path):
    with pytest.raises(SystemExit) as bad_family:
        main(["--model", str(SHIPPED), "--families", "hippocampus"])
    assert bad_family.value.code == 2
    with pytest.raises(SystemExit) as no_model:
        main(["--model", str(tmp_path)])
    assert no_model.value.code == 2
