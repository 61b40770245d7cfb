"""A newcomer's first steps: a sample scan to try, one readable line (exit 2) for every CLI mistake,
and a blank prompt refused at the API's door (422) as on the command line."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.settings import Settings
from tests.service.test_cli import voxagent


def assert_one_readable_line(proc, command: str, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"voxagent {command}: error: "), line
    for bad in ("Traceback", "errors.pydantic.dev", "validation error for", "input_value=", "vol_"):
        assert bad not in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_sample_writes_the_mni_template_and_prints_its_path(tmp_path):
    out = voxagent("sample", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    path = tmp_path / "mni152_t1.nii.gz"
    assert out.stdout.strip() == str(path.resolve())
    img = nib.load(path)
    assert img.shape == (197, 233, 189) and np.allclose(np.abs(np.diag(img.affine))[:3], 1.0)
    named = voxagent("sample", "--out", str(tmp_path / "t1.nii"))
    assert named.returncode == 0 and nib.load(tmp_path / "t1.nii").shape == img.shape
    assert_one_readable_line(voxagent("sample", "--out", str(tmp_path / "no" / "t1.nii.gz")), "sample",
                             "no such directory")


@pytest.fixture
def scans(tmp_path):
    good = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8), np.eye(4)), good)
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"not an image at all" * 40))
    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), four_d)
    prog = tmp_path / "prog.txt"
    prog.write_text("v = volume(threshold(t1, 10))\nrespond(v)\n")
    return good, text, four_d, prog


def test_cli_mistakes_are_one_line_and_exit_2(scans):
    good, text, four_d, prog = scans
    long_modality = "x" * 40
    assert_one_readable_line(voxagent("run", "--prompt", "   \t ", str(good)), "run", "--prompt is blank")
    assert_one_readable_line(voxagent("run", "--prompt", "measure the brain", "--modality", long_modality, str(good)),
                             "run", f"--modality '{long_modality}'", "at most 32 characters")
    assert_one_readable_line(voxagent("exec", "--scan", f"t1={good}", "--modality", f"t1={long_modality}",
                                      "--code", str(prog)), "exec", "at most 32 characters")
    assert_one_readable_line(voxagent("run", "--code", str(prog), f"t1={text}"), "run", str(text))
    assert_one_readable_line(voxagent("run", "--code", str(prog), f"t1={four_d}"), "run", "4D")
    assert_one_readable_line(voxagent("exec", "--scan", f"t1={text}", "--code", str(prog)), "exec", "scan t1")
    assert_one_readable_line(voxagent("exec", "--scan", "1t=x.nii.gz", "--code", str(prog)), "exec", "NAME=VALUE")


def test_a_blank_prompt_or_program_is_a_422(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "data", broker_url=None, workers=1))
    with TestClient(app) as client:
        h = {"X-API-Key": auth.create_key(app.state.service.records, "acme")[0]}
        scan = tmp_path / "scan.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), scan)
        with open(scan, "rb") as fh:
            vid = client.post("/v1/volumes", files={"file": (scan.name, fh)}, headers=h).json()["id"]
        for body in ({"prompt": "   \n\t"}, {"code": "  \n "}):
            r = client.post("/v1/analyses", json={**body, "volumes": [{"id": vid}]}, headers=h)
            assert r.status_code == 422, r.text
            assert "blank" in r.text and r.headers["content-type"].startswith("application/problem+json")
        r = client.post("/v1/batches", json={"prompt": " ", "items": [{"volumes": [{"id": vid}]}]}, headers=h)
        assert r.status_code == 422 and "blank" in r.text
