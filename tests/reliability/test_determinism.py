"""The same scan and program give bit-identical masks and numbers on every path.

Paths compared against `voxagent exec` at one torch thread: `exec` at two threads, `voxagent run
--code`, and the embedded API with three concurrent analyses (the vision engine's batcher collects
their generate calls together). The modality is spelled differently on each path (T1, T1w, t1):
one modality, one answer. The shipped model (models/voxagent-tiny) on the MNI152 template, one
generate, so the figures are the real ones a user sees (the issue saw 1,723-1,780 mL).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.slow
MNI_T1 = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MODEL = Path(__file__).resolve().parents[2] / "models" / "voxagent-tiny"
PROGRAM = 'e = encode(t1)\nm = generate(e, t1, "brain")\nv = volume(m)\noutput(m, "brain")\nrespond(v)\n'


def mask_digest(path: Path) -> str:
    """sha256 of the mask's voxels, shape and affine: equal digests are equal masks, bit for bit."""
    img = nib.load(path)
    data = np.ascontiguousarray(np.asarray(img.dataobj))
    digest = hashlib.sha256(data.tobytes())
    digest.update(repr((data.shape, str(data.dtype))).encode())
    digest.update(np.ascontiguousarray(img.affine).tobytes())
    return digest.hexdigest()


def cli(tmp_path: Path, name: str, *args: str, threads: int) -> tuple[str, float]:
    """Run a voxagent command with ``threads`` torch threads; the mask digest and the volume."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "VOXAGENT_MODELS_DIR": str(MODEL)}
    env.pop("VOXAGENT_BROKER_URL", None)
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "cli", *args, "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    (metric,) = result["metrics"]
    return mask_digest(out / "brain.nii.gz"), metric["value"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, float]:
    tmp = tmp_path_factory.mktemp("det")
    program = tmp / "prog.txt"
    program.write_text(PROGRAM)
    return cli(tmp, "exec1", "exec", "--scan", f"t1={MNI_T1}", "--modality", "t1=T1", "--code", str(program),
               "--model", str(MODEL), threads=1)


def test_exec_is_independent_of_the_thread_count(reference, tmp_path):
    program = tmp_path / "prog.txt"
    program.write_text(PROGRAM)
    got = cli(tmp_path, "exec2", "exec", "--scan", f"t1={MNI_T1}", "--modality", "t1=T1", "--code", str(program),
              "--model", str(MODEL), threads=2)
    assert got == reference
    assert 1000 < reference[1] < 2500  # a brain-sized volume in mL: the model really ran


def test_run_gives_what_exec_gives(reference, tmp_path):
    program = tmp_path / "prog.txt"
    program.write_text(PROGRAM)
    assert cli(tmp_path, "run", "run", f"t1={MNI_T1}", "--modality", "T1w", "--code", str(program),
               threads=2) == reference


def test_concurrent_api_analyses_give_what_exec_gives(reference, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", broker_url=None, models_dir=MODEL, workers=3,
                        tenant_concurrency=6)
    app = create_app(settings)
    with TestClient(app) as client:
        h = {"X-API-Key": auth.create_key(app.state.service.records, "acme")[0]}
        with open(MNI_T1, "rb") as fh:
            up = client.post("/v1/volumes", files={"file": (MNI_T1.name, fh)}, headers=h)
        assert up.status_code == 201, up.text
        body = {"code": PROGRAM, "volumes": [{"id": up.json()["id"], "name": "t1", "modality": "t1"}], "wait": 30}
        jobs: list[dict] = [{} for _ in range(3)]
        barrier = threading.Barrier(3)

        def submit(i: int) -> None:
            barrier.wait()
            r = client.post("/v1/analyses", json=body, headers=h)
            assert r.status_code in (200, 202), r.text
            jobs[i] = r.json()

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, job in enumerate(jobs):
            while job.get("status") not in ("succeeded", "failed"):
                job = client.get(f"/v1/jobs/{job['id']}", headers=h).json()
            assert job["status"] == "succeeded", job
            mask = tmp_path / f"api{i}.nii.gz"
            mask.write_bytes(client.get(job["links"]["output:brain"], headers=h).content)
            assert (mask_digest(mask), job["result"]["metrics"][0]["value"]) == reference


def test_spellings_of_one_modality_are_one_input():
    from agent.phi_bank import PhiBank
    from agent.state import ScanInfo
    from api_schemas.modalities import canonical_modality

    bank = PhiBank.for_model_dir(MODEL)
    for spellings, name in ((("T1", "t1", " T1w ", "MPRAGE", "t1-weighted"), "T1"),
                            (("FLAIR", "t2_flair"), "FLAIR"), (("T1c", "t1ce", "T1+C"), "T1c")):
        assert {canonical_modality(s) for s in spellings} == {name}
        assert all(np.array_equal(bank.encode_phi(s), bank.encode_phi(name)) for s in spellings)
        assert {ScanInfo("t1", s).line() for s in spellings} == {ScanInfo("t1", name).line()}
    assert canonical_modality("  ") is None and canonical_modality("Mystery") == "Mystery"
