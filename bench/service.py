"""Service benchmarks (embedded default, real uvicorn on loopback, real HTTP client).

- api_overhead_ms: median time of POST /v1/analyses (wait) running a trivial program on a small
  volume, minus the median time of the same work called directly (load + sandbox). Goal <= 30 ms.
- e2e_mni_s: median end-to-end time of a prompt on the MNI152 template (upload excluded, models
  already loaded). Goal <= 3 s. With no trained checkpoint the random-init agent decodes until its
  token limit, so this figure then measures that limit, not a trained model.

Run: .venv/bin/python -m bench.service
"""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import httpx  # noqa: E402 - after OMP_NUM_THREADS is set, before numpy reads it
import nibabel as nib  # noqa: E402 - after OMP_NUM_THREADS
import numpy as np  # noqa: E402 - after OMP_NUM_THREADS

from bench.common import report, time_median  # noqa: E402 - after OMP_NUM_THREADS

CODE = "v = volume(threshold(scan, 50))\nread(v)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def main() -> None:
    import nilearn

    from service import auth
    from service.app import create_app
    from service.settings import Settings
    from service.tasks import engines
    from service.tasks.context import LazyLocalVisionClient
    from voxel_ops import load_volume

    tmp = Path(tempfile.mkdtemp(prefix="voxagent-bench-"))
    small = tmp / "small.nii.gz"
    arr = np.random.default_rng(0).uniform(0, 100, (32, 32, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.5, 1.0])), small)
    mni = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

    settings = Settings(data_dir=tmp / "data", broker_url=None, workers=2)
    app = create_app(settings, warm_models=True)
    port = _free_port()
    server, thread = _serve(app, port)
    try:
        key, _ = auth.create_key(app.state.service.records, "bench")
        h = {"X-API-Key": key}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=600) as client:
            vid = client.post("/v1/volumes", files={"file": ("small.nii.gz", small.read_bytes())}).json()["id"]

            def via_api():
                r = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 30})
                assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text

            models_dir = settings.models_dir

            def direct():
                vol = load_volume(small)
                engines.run_program(CODE, {"scan": vol}, client=LazyLocalVisionClient(models_dir),
                                    output_dir=tmp / "direct", models_dir=models_dir, job_id="direct")

            api_s, _ = time_median(via_api, repeats=30, warmup=3)
            direct_s, _ = time_median(direct, repeats=30, warmup=3)

            mni_id = client.post("/v1/volumes", files={"file": ("mni.nii.gz", mni.read_bytes())},
                                 data={"modality": "T1"}).json()["id"]
            info = client.get("/v1/models").json()

            def prompt():
                r = client.post("/v1/analyses", json={"prompt": "What is the white matter volume?",
                                                      "volumes": [{"id": mni_id, "modality": "T1"}], "wait": 30})
                job = r.json()
                while job["status"] not in ("succeeded", "failed", "cancelled"):
                    job = client.get(f"/v1/analyses/{job['id']}", params={"wait": 30}).json()
                assert job["result"] is not None

            e2e_s, _ = time_median(prompt, repeats=3, warmup=0)
    finally:
        server.should_exit = True
        thread.join(10)
    report("service", {
        "api_overhead_ms": round((api_s - direct_s) * 1000, 3),
        "api_analysis_ms": round(api_s * 1000, 3),
        "direct_analysis_ms": round(direct_s * 1000, 3),
        "e2e_mni_s": round(e2e_s, 3),
        "e2e_mni_model": f"{info['name']} ({'trained' if info['trained'] else 'random-init'})",
    }, goals={"api_overhead_ms": "<= 30", "e2e_mni_s": "<= 3"})


if __name__ == "__main__":
    main()
