"""The same scan and program give bit-identical masks and numbers on every path.

Paths compared against `voxagent exec` at one torch thread: `exec` at two threads, `voxagent run
--code`, the embedded API with three concurrent analyses (the vision engine's batcher collects
their generate calls together), and the distributed deployment (a real redis-server, an agent and
a vision Celery worker, `voxagent serve` with the broker) with two concurrent analyses. The
modality is spelled differently on each path (T1, T1w, t1, MPRAGE): one modality, one answer. The
shipped model (models/voxagent-tiny) on the MNI152 template, one generate, so the figures are the
real ones a user sees (the issue saw 1,723-1,780 mL).

A model run (`voxagent run --prompt`) records in its trace the phis the language model gave each
step; `voxagent exec --phis RESULT.json` replays the steps with those phis and gives that run's mask.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import nibabel as nib
import nilearn
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.settings import Settings
from tests.reliability import faults
from tests.service import procs

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


def cli_result(tmp_path: Path, name: str, *args: str, threads: int) -> dict:
    """Run a voxagent command with ``threads`` torch threads; its result document (outputs in tmp_path/name)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "VOXAGENT_MODELS_DIR": str(MODEL)}
    env.pop("VOXAGENT_BROKER_URL", None)
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "cli", *args, "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def cli(tmp_path: Path, name: str, *args: str, threads: int) -> tuple[str, float]:
    """Run a voxagent command with ``threads`` torch threads; the mask digest and the volume."""
    result = cli_result(tmp_path, name, *args, threads=threads)
    (metric,) = result["metrics"]
    return mask_digest(tmp_path / name / "brain.nii.gz"), metric["value"]


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


def test_the_celery_deployment_gives_what_exec_gives(reference, tmp_path):
    """Redis, an agent worker and a vision worker (the model runs there), the API with the broker:
    two concurrent analyses, each mask bit-identical to exec's, each number equal."""
    redis = faults.Redis(tmp_path)
    redis.start()
    env = procs.base_env(tmp_path / "data", VOXAGENT_BROKER_URL=redis.url, VOXAGENT_MODELS_DIR=str(MODEL))
    started: list[procs.Proc] = []
    try:
        started.append(faults.start_worker(env, tmp_path, "agent", "det-agent@localhost"))
        started.append(faults.start_worker(env, tmp_path, "vision", "det-vision@localhost"))
        procs.wait_workers(redis.url, ["det-agent@localhost", "det-vision@localhost"], started, timeout=240)
        api, base = faults.start_api(env, tmp_path, "api")
        started.append(api)

        def logs() -> str:
            return "\n".join(f"--- {p.log.name}\n{p.tail(2500)}" for p in started)

        h = {"X-API-Key": procs.make_key(env, "acme")}
        with httpx.Client(base_url=base, timeout=60) as client:
            with open(MNI_T1, "rb") as fh:
                up = client.post("/v1/volumes", files={"file": (MNI_T1.name, fh)}, headers=h)
            assert up.status_code == 201, up.text
            body = {"code": PROGRAM, "volumes": [{"id": up.json()["id"], "name": "t1", "modality": "MPRAGE"}]}
            ids = []
            for _ in range(2):  # both queued before either finishes: the vision worker serves them together
                r = client.post("/v1/analyses", json=body, headers=h)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            for i, job_id in enumerate(ids):
                job = faults.wait_for(lambda j=job_id: client.get(f"/v1/analyses/{j}", headers=h).json(),
                                      lambda j: j["status"] in ("succeeded", "failed", "cancelled"), 240,
                                      f"job {job_id} finished", logs)
                assert job["status"] == "succeeded", (job, logs())
                mask = tmp_path / f"celery{i}.nii.gz"
                mask.write_bytes(client.get(job["links"]["output:brain"], headers=h).content)
                assert (mask_digest(mask), job["result"]["metrics"][0]["value"]) == reference
    finally:
        for p in reversed(started):
            p.stop()
        redis.stop()


def test_exec_replaying_the_phis_of_a_model_run_gives_that_runs_mask(tmp_path):
    """The language model's own phis (not the bank's) are in the trace; exec --phis replays them."""
    run = cli_result(tmp_path, "model-run", "run", f"t1={MNI_T1}", "--modality", "T1",
                     "--prompt", "output a mask of the brain", threads=1)
    assert run["status"] == "succeeded", run
    (out,) = run["outputs"]
    assert out["kind"] == "mask"
    trace = run["trace"]
    assert sum(step["phi_count"] for step in trace) >= 2 and any("generate(" in step["code"] for step in trace)
    for step in trace:  # one recorded phi per <MOD> marker of the step, each a full vector
        assert len(step["phis"] or []) == step["phi_count"] == step["code"].count("<MOD>"), step
        assert all(len(phi) == len(step["phis"][0]) > 1 for phi in step["phis"] or [])
    program = tmp_path / "steps.txt"
    program.write_text("\n<STEP>\n".join(step["code"] for step in trace))
    recorded = tmp_path / "run.json"
    recorded.write_text(json.dumps(run))
    replay = cli_result(tmp_path, "replay", "exec", "--scan", f"t1={MNI_T1}", "--modality", "t1=T1",
                        "--code", str(program), "--phis", str(recorded), "--model", str(MODEL), threads=1)
    assert replay["status"] == "succeeded", replay
    (again,) = replay["outputs"]
    assert again["name"] == out["name"]
    assert mask_digest(Path(again["path"])) == mask_digest(Path(out["path"]))
    assert replay["metrics"] == run["metrics"]
    # the bank's phis give another mask here: the replay above rests on the recorded phis
    bank = cli_result(tmp_path, "bank", "exec", "--scan", f"t1={MNI_T1}", "--modality", "t1=T1", "--code",
                      str(program), "--model", str(MODEL), threads=1)
    assert mask_digest(Path(bank["outputs"][0]["path"])) != mask_digest(Path(out["path"]))
    # a trace that does not fit the program is refused in one line, exit 2
    program.write_text(trace[0]["code"])
    bad = subprocess.run([sys.executable, "-m", "cli", "exec", "--scan", f"t1={MNI_T1}", "--code", str(program),
                          "--phis", str(recorded), "--model", str(MODEL)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--phis" in bad.stderr, bad.stderr


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
