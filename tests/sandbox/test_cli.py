"""`voxagent functions` and `voxagent exec` as a user runs them (subprocess, real files)."""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from cli.commands.exec import split_steps
from tests.sandbox.conftest import phantom

PROGRAM = """e = encode(t1<MOD>)
read(e)

lesion = threshold(t1, 150)
v = volume(lesion)
read(v)

respond(f"The lesion measures {v} on the {hemisphere(lesion)} side.")
output(lesion, "lesion")
stop()
"""


def voxagent(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scans") / "t1.nii.gz"
    vol = phantom()
    nib.save(nib.Nifti1Image(vol.array, vol.affine), path)
    return path


def test_split_steps():
    assert split_steps("a = 1\nread(a)\n\n\nb = 2\n") == ["a = 1\nread(a)", "b = 2"]
    assert split_steps("a = 1\n\nread(a)<STEP>b = 2<STEP>\n") == ["a = 1\n\nread(a)", "b = 2"]


def test_functions_json_lists_the_library():
    result = voxagent("functions", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    names = [f["name"] for f in listing]
    assert names[:6] == ["encode", "generate", "read", "respond", "output", "stop"] and "signal" in names
    assert all(set(f) == {"name", "signature", "description"} for f in listing)
    text = voxagent("functions")
    assert text.returncode == 0 and "volume(mask: mask) -> quantity [mL]" in text.stdout


def test_exec_runs_a_program_and_writes_outputs(scan_file, tmp_path):
    program = tmp_path / "program.txt"
    program.write_text(PROGRAM)
    out_dir = tmp_path / "out"
    result = voxagent("exec", "--scan", f"t1={scan_file}", "--modality", "t1=T1", "--code", str(program),
                      "--out", str(out_dir), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    lesion_ml = float((phantom().array > 150).sum()) * 8 / 1000
    assert doc["status"] == "succeeded"
    assert doc["text"] == f"The lesion measures {lesion_ml:.1f} mL on the left side."
    assert doc["metrics"][0]["unit"] == "mL" and doc["metrics"][0]["value"] == pytest.approx(lesion_ml)
    assert [o["name"] for o in doc["outputs"]] == ["lesion"]
    saved = nib.load(doc["outputs"][0]["path"])
    assert saved.get_data_dtype() == np.uint8 and np.allclose(saved.affine, phantom().affine)
    assert len(doc["trace"]) == 3 and doc["trace"][0]["feedback"] == ["<1 encoding vectors>"]
    # the shipped checkpoint is used by default; without weights the untrained network is announced
    assert "untrained" not in result.stderr and "untrained" not in (doc["model"] or "")
    empty = tmp_path / "no-model"
    empty.mkdir()
    bare = voxagent("exec", "--scan", f"t1={scan_file}", "--modality", "t1=T1", "--code", str(program),
                    "--out", str(tmp_path / "out2"), "--model", str(empty), "--json")
    assert bare.returncode == 0, bare.stderr
    assert "untrained" in bare.stderr and "untrained" in json.loads(bare.stdout)["model"]


def test_exec_reads_stdin_and_reports_code_errors(scan_file, tmp_path):
    result = voxagent("exec", "--scan", f"t1={scan_file}", "--code", "-", "--out", str(tmp_path), "--json",
                      stdin="v = volume(threshold(t1, 150))\nread(v)\n\nx = t1.volume\n")
    assert result.returncode == 2
    assert "voxagent exec: error: step 1: attribute access (a.b) is not allowed" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "failed" and doc["trace"][0]["feedback"][0].endswith(" mL")


@pytest.mark.slow
def test_exec_refuses_bad_scans_clearly(scan_file, tmp_path):
    program = tmp_path / "p.txt"
    program.write_text("read(1)\n")
    missing = voxagent("exec", "--scan", f"t1={tmp_path / 'nope.nii.gz'}", "--code", str(program))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(scan_file.read_bytes()[:300])
    bad = voxagent("exec", "--scan", f"t1={truncated}", "--code", str(program))
    assert bad.returncode == 2 and "scan t1" in bad.stderr and "Traceback" not in bad.stderr
    not_nifti = tmp_path / "x.nii"
    not_nifti.write_bytes(b"hello" * 100)
    bad = voxagent("exec", "--scan", f"t1={not_nifti}", "--code", str(program))
    assert bad.returncode == 2 and "scan t1" in bad.stderr and "Traceback" not in bad.stderr
    clash = voxagent("exec", "--scan", f"read={scan_file}", "--code", str(program))
    assert clash.returncode == 2 and "library function" in clash.stderr
    clash = voxagent("exec", "--scan", f"volume={scan_file}", "--code", str(program))
    assert clash.returncode == 2 and "library function" in clash.stderr
    long_step = tmp_path / "long.txt"
    long_step.write_text("read(1)\n" + "#" * 4715)  # 4,723 characters in one step
    refused = voxagent("exec", "--scan", f"t1={scan_file}", "--code", str(long_step))
    assert refused.returncode == 2 and "4723 characters; the limit is 4000" in refused.stderr
