"""A frame of a 4D NIfTI series through the user surfaces: `POST /v1/volumes` and the multipart
analysis upload take a `frame` field (a 4D upload without one is a 422 naming the frame count and
the field), and `voxagent exec` / `voxagent run` take `--frame NAME=INDEX` (exit 2 in one line
otherwise). Each frame has its bright block elsewhere, so the answer tells which frame was read."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.service.conftest import CODE, expected_ml, write_scan
from tests.service.test_api import PROBLEM, upload
from tests.service.test_cli import voxagent
from tests.service.test_limits_api import make_api

FRAMES = 3


def write_series(path) -> tuple[np.ndarray, np.ndarray]:
    """A 4D series on write_scan's grid: frame i has a bright block of 2 + 2*i voxels along x."""
    _, aff = write_scan(path)
    rng = np.random.default_rng(7)
    arr = rng.uniform(0, 40, size=(20, 22, 18, FRAMES)).astype(np.float32)
    for i in range(FRAMES):
        arr[3:5 + 2 * i, 6:12, 4:9, i] = 100 + i
    nib.save(nib.Nifti1Image(arr, aff), path)
    return arr, aff


@pytest.fixture
def api(tmp_path):
    client = make_api(tmp_path)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def series(tmp_path):
    path = tmp_path / "bold.nii.gz"
    arr, aff = write_series(path)
    return path, arr, aff


def stored_files(api) -> list[str]:
    tenant_dir = api.app.state.service.settings.artifacts_dir / "acme"
    return sorted(p.name for p in tenant_dir.iterdir() if p.is_file()) if tenant_dir.exists() else []


def test_a_4d_upload_without_a_frame_is_a_422_naming_the_frames_and_the_field(api, series):
    path, _, _ = series
    r = upload(api, path)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    problem = r.json()
    assert f"{FRAMES} frames" in problem["detail"] and "'frame'" in problem["detail"], problem
    assert problem["frames"] == FRAMES and "bold.nii.gz" in problem["detail"] and "vol_" not in problem["detail"]
    assert problem["error_class"] == "DimensionError"  # the same field as every other refused upload
    for bad, message in (("3", "frame 3 requested but the image has 3 frame(s)"), ("-1", "frame index"),
                         ("x", "frame index"), ("1.5", "frame index"), ("", "frame index")):
        r = upload(api, path, frame=bad)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (bad, r.text)
        assert message in r.json()["detail"], (bad, r.json())
    assert stored_files(api) == [] and api.get("/v1/volumes", headers=api.h["acme"]).json() == []


@pytest.mark.parametrize("frame, suffix", [(0, ".nii.gz"), (1, ".nii"), (2, ".nii.gz")])
def test_the_chosen_frame_is_stored_recorded_and_analysed(api, series, tmp_path, frame, suffix):
    path, arr, aff = series
    if suffix == ".nii":  # an uncompressed series: the stored frame stays uncompressed under its .nii name
        path = tmp_path / "bold.nii"
        nib.save(nib.Nifti1Image(arr, aff), path)
    r = upload(api, path, frame=str(frame), modality="T1")
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["frame"] == frame and info["shape"] == [20, 22, 18]
    assert api.get(f"/v1/volumes/{info['id']}", headers=api.h["acme"]).json()["frame"] == frame
    stored = api.get(f"/v1/volumes/{info['id']}/file", headers=api.h["acme"])
    assert stored.status_code == 200
    assert (stored.content[:2] == b"\x1f\x8b") == (suffix == ".nii.gz"), stored.headers
    assert stored.headers["content-disposition"].endswith(f'{info["id"]}{suffix}"')
    assert hashlib.sha256(stored.content).hexdigest() == info["sha256"] and len(stored.content) == info["size_bytes"]
    got = tmp_path / f"stored{suffix}"
    got.write_bytes(stored.content)
    img = nib.load(got)
    assert img.shape == (20, 22, 18) and np.allclose(img.affine, aff)
    assert np.array_equal(np.asarray(img.dataobj), arr[..., frame])  # that frame, voxel for voxel
    job = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": info["id"]}], "wait": 20},
                   headers=api.h["acme"]).json()
    assert job["status"] == "succeeded", job
    assert job["result"]["metrics"][0]["value"] == pytest.approx(expected_ml(arr[..., frame], aff), rel=1e-6)
    assert job["result"]["input_checksums"]["scan"] == info["sha256"]


def test_a_frame_of_a_3d_volume(api, scan_file):
    path, _, _ = scan_file
    r = upload(api, path, frame="0")  # a 3D image is its only frame: stored as it came
    assert r.status_code == 201 and r.json()["frame"] is None and r.json()["sha256"] == hashlib.sha256(
        path.read_bytes()).hexdigest(), r.text
    r = upload(api, path, frame="1")
    assert r.status_code == 422 and "frame 1 requested but the image has 1 frame(s)" in r.json()["detail"]


def test_the_multipart_analysis_upload_takes_a_frame_per_file(api, series):
    path, arr, aff = series

    def analyse(meta):
        with open(path, "rb") as fh:
            return api.post("/v1/analyses/upload", headers=api.h["acme"], files=[("files", ("bold.nii.gz", fh))],
                            data={"code": CODE.replace("scan", "t1"), "wait": "20", "metadata": json.dumps(meta)})

    r = analyse([{"name": "t1"}])
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert f"{FRAMES} frames" in r.json()["detail"] and "'frame'" in r.json()["detail"]
    for bad in ("1", -1, 1.0, True):
        r = analyse([{"name": "t1", "frame": bad}])
        assert r.status_code == 422 and "'frame' must be a frame index" in r.json()["detail"], (bad, r.text)
    assert api.get("/v1/analyses", headers=api.h["acme"]).json() == []
    r = analyse([{"name": "t1", "frame": 1}])
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "succeeded", job
    assert job["result"]["metrics"][0]["value"] == pytest.approx(expected_ml(arr[..., 1], aff), rel=1e-6)
    assert api.get(f"/v1/volumes/{job['volumes'][0]['id']}", headers=api.h["acme"]).json()["frame"] == 1


def _one_line_refusal(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_cli_exec_and_run_pick_a_frame(series, tmp_path):
    path, arr, aff = series
    prog = tmp_path / "prog.txt"
    prog.write_text(CODE.replace("scan", "t1"))
    for command in (["exec", "--scan", f"t1={path}"], ["run", f"t1={path}"]):
        _one_line_refusal(voxagent(*command, "--code", str(prog)), f"{FRAMES} volumes", "--frame t1=INDEX")
        _one_line_refusal(voxagent(*command, "--frame", "t1=x", "--code", str(prog)), "--frame t1=x")
        _one_line_refusal(voxagent(*command, "--frame", "t1=3", "--code", str(prog)),
                          "frame 3 requested but the image has 3 frame(s)")
        _one_line_refusal(voxagent(*command, "--frame", "flair=1", "--code", str(prog)), "--frame", "flair")
        out = voxagent(*command, "--frame", "t1=2", "--code", str(prog), "--json", "--out",
                       str(tmp_path / command[0]))
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["metrics"][0]["value"] == pytest.approx(expected_ml(arr[..., 2], aff), rel=1e-6), command
        mask = nib.load(tmp_path / command[0] / "bright.nii.gz")
        assert np.array_equal(np.asarray(mask.dataobj) > 0, arr[..., 2] > 50)
    unnamed = voxagent("run", str(path), "--code", str(prog))
    _one_line_refusal(unnamed, "NAME=PATH", "--frame NAME=INDEX")
    assert subprocess.run([sys.executable, "-m", "cli", "run", "--help"], capture_output=True, text=True,
                          timeout=60).stdout.count("--frame") >= 1
