"""The working-grid ceiling: what the 4 mm grid leaves of a target, whatever the training."""
from __future__ import annotations

import numpy as np

from training.grid_ceiling import grid_ceiling_dice, through_working_grid
from vision.config import get_config


def _tiny(min_spacing: float):
    return get_config("tiny", min_spacing=min_spacing)


def test_large_block_survives_a_coarse_grid():
    mask = np.zeros((64, 64, 64), bool)
    mask[8:56, 8:56, 8:56] = True
    assert grid_ceiling_dice(mask, (1.0, 1.0, 1.0), _tiny(4.0)) > 0.97


def test_one_voxel_sheet_vanishes_at_4mm_but_not_at_1mm():
    mask = np.zeros((32, 32, 32), bool)
    mask[:, :, 16] = True  # 1 mm thick: a quarter of each 4 mm cell, below 0.5 after averaging
    assert grid_ceiling_dice(mask, (1.0, 1.0, 1.0), _tiny(4.0)) < 0.2
    assert grid_ceiling_dice(mask, (1.0, 1.0, 1.0), _tiny(1.0)) == 1.0


def test_grid_no_finer_than_min_spacing_is_left_alone():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 20, 12)) > 0.7  # speckle: any resampling would change it
    out = through_working_grid(mask, (4.0, 4.0, 5.0), _tiny(4.0))
    assert np.array_equal(out, mask)
    assert grid_ceiling_dice(np.zeros((8, 8, 8)), (1.0, 1.0, 1.0), _tiny(4.0)) == 1.0


def test_cli_reports_held_out_and_mni_ceilings_per_spacing(capsys):
    import json

    from training.grid_ceiling import main

    assert main(["--cases", "2", "--spacings", "4", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["synthetic"]) == {"4", "2"} and set(out["mni"]["4"]) == {"brain", "gray matter", "white matter"}
    for spacing in ("4", "2"):
        for row in out["synthetic"][spacing].values():
            assert row["calls"] >= 1 and 0.0 < row["mean"] <= 1.0
    # a finer grid never loses more of the real template's cortex than a coarser one
    assert out["mni"]["2"]["gray matter"] >= out["mni"]["4"]["gray matter"] > 0.85  # 0.897 at 4 mm


def test_cli_refuses_a_non_positive_spacing(capsys):
    import pytest

    from training.grid_ceiling import main

    with pytest.raises(SystemExit) as exc:
        main(["--spacings", "0"])
    assert exc.value.code == 2 and "spacing" in capsys.readouterr().err
