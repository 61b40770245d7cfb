"""`python -m training.lesion_contrast`: the measurement behind the new networks' intensity ceiling."""
from __future__ import annotations

import json

import pytest

from training.lesion_contrast import main


def test_a_higher_ceiling_clips_fewer_lesion_voxels(tmp_path, capsys):
    out = tmp_path / "contrast.json"
    assert main(["--cases", "3", "--ceilings", "1", "3", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert set(figures) == {"1", "3"} and figures["1"]["scans"] == figures["3"]["scans"] > 0
    assert figures["3"]["clipped_share_mean"] <= figures["1"]["clipped_share_mean"]
    assert figures["3"]["contrast_median"] >= figures["1"]["contrast_median"]
    assert "| 3 |" in capsys.readouterr().out


def test_bad_arguments_exit_2_without_measuring():
    with pytest.raises(SystemExit) as exc:
        main(["--ceilings", "0.5"])
    assert exc.value.code == 2
