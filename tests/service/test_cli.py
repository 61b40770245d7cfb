"""`voxagent run` prints the same result document as the API; `voxagent keys` round trip."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from api_schemas.results import AnalysisResult
from tests.service.conftest import CODE, expected_ml, write_scan


def voxagent(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_run_with_code_prints_the_result_document_and_writes_outputs(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    arr, aff = write_scan(scan)
    prog = tmp_path / "prog.txt"
    prog.write_text(CODE.replace("scan", "t1"))
    out = voxagent("run", f"t1={scan}", "--code", str(prog), "--json", "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    result = AnalysisResult.model_validate(json.loads(out.stdout))
    assert result.metrics[0].value == pytest.approx(expected_ml(arr, aff), rel=1e-6)
    img = nib.load(result.outputs[0].path)
    assert np.allclose(img.affine, aff) and np.array_equal(np.asarray(img.dataobj) > 0, arr > 50)
    snapshot = Path(result.outputs[0].snapshot or "")  # the mask over its scan, written beside it
    assert snapshot == tmp_path / "out" / "bright.png" and snapshot.read_bytes()[:4] == b"\x89PNG"
    bad = voxagent("run", str(tmp_path / "missing.nii.gz"), "--code", str(prog))
    assert bad.returncode == 2 and "no such scan" in bad.stderr


def test_keys_create_list_revoke(tmp_path):
    import os

    env = {**os.environ, "VOXAGENT_DATA_DIR": str(tmp_path)}
    env.pop("VOXAGENT_BROKER_URL", None)
    created = json.loads(voxagent("keys", "create", "--tenant", "acme", "--json", env=env).stdout)
    listed = json.loads(voxagent("keys", "list", "--json", env=env).stdout)
    assert [k["id"] for k in listed] == [created["id"]] and created["key"] not in json.dumps(listed)
    assert voxagent("keys", "revoke", created["id"], env=env).returncode == 0
    assert json.loads(voxagent("keys", "list", "--json", env=env).stdout)[0]["revoked"] is True
    assert voxagent("keys", "revoke", "nope", env=env).returncode == 2
