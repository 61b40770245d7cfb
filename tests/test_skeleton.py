import subprocess
import sys

import numpy as np
import pytest

from api_schemas import AnalysisResult, Metric
from voxel_ops import Volume


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "serve" in out.stdout


def test_volume_geometry_is_derived_from_affine():
    aff = np.diag([0.7, 0.9, 3.0, 1.0])
    aff[:3, 3] = [-10, 5, 2]
    v = Volume(np.zeros((4, 5, 6), np.float32), aff)
    assert v.spacing == pytest.approx((0.7, 0.9, 3.0))
    assert v.orientation == ("R", "A", "S")
    assert np.allclose(v.world_to_voxel(v.voxel_to_world([1, 2, 3])), [1, 2, 3])
    with pytest.raises(ValueError):
        Volume(np.zeros((4, 5)), aff)


def test_result_schema_round_trip():
    r = AnalysisResult(text="ok", metrics=[Metric(name="brain volume", value=1234.5, unit="mL", step=2)])
    assert AnalysisResult.model_validate_json(r.model_dump_json()) == r
