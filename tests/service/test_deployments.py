"""The same end-to-end flow against both deployments, all real processes and a real HTTP client:

- embedded: `voxagent serve` under uvicorn (thread pool, SQLite, files in a data dir);
- distributed: redis-server + `voxagent worker --queues agent` + `voxagent worker --queues vision`
  (Celery) + `voxagent serve` with VOXAGENT_BROKER_URL.
"""
from __future__ import annotations

import json
import time

import httpx
import nibabel as nib
import numpy as np
import pytest

from api_schemas.results import AnalysisResult
from service.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.service import procs
from tests.service.conftest import CODE, expected_ml, write_scan
from tests.service.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def deployment(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    started: list[procs.Proc] = []
    # the webhook receiver listens on loopback, which webhooks may only reach with the switch on
    extra = {"VOXAGENT_AGENT_MAX_WALL_S": "3", "VOXAGENT_AGENT_MAX_STEPS": "2",
             "VOXAGENT_WEBHOOK_ALLOW_LOOPBACK": "true"}
    try:
        if request.param == "distributed":
            redis_proc, url = procs.start_redis(tmp)
            started.append(redis_proc)
            env = procs.base_env(tmp / "data", VOXAGENT_BROKER_URL=url, **extra)
            workers = [procs.start_worker(env, tmp, "agent"), procs.start_worker(env, tmp, "vision")]
            started += workers
            procs.wait_workers(url, ["agent-test@localhost", "vision-test@localhost"], workers)
        else:
            env = procs.base_env(tmp / "data", **extra)
        api, base = procs.start_api(env, tmp)
        started.append(api)
        keys = {t: procs.make_key(env, t) for t in ("acme", "other")}
        with httpx.Client(base_url=base, timeout=60) as client:
            yield request.param, client, {t: {"X-API-Key": k} for t, k in keys.items()}, tmp
    finally:
        for p in reversed(started):
            p.stop()


def upload(client, h, path):
    with open(path, "rb") as fh:
        r = client.post("/v1/volumes", files={"file": (path.name, fh)}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()


def finish(client, h, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/analyses/{job_id}", params={"wait": 5}, headers=h)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed", "cancelled"):
            return r.json()
    raise AssertionError(f"job {job_id} did not finish")


def test_code_analysis_end_to_end(deployment, tmp_path):
    mode, client, h, _ = deployment
    p = tmp_path / "scan.nii.gz"
    arr, aff = write_scan(p)
    vol = upload(client, h["acme"], p)
    r = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vol["id"], "modality": "T1"}]},
                    headers=h["acme"])
    assert r.status_code == 202, r.text
    job = finish(client, h["acme"], r.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["metrics"][0]["value"] == pytest.approx(expected_ml(arr, aff), rel=1e-6)
    mask = client.get(job["links"]["output:bright"], headers=h["acme"])
    assert mask.status_code == 200
    (tmp_path / "m.nii.gz").write_bytes(mask.content)
    img = nib.load(tmp_path / "m.nii.gz")
    assert np.allclose(img.affine, aff) and np.array_equal(np.asarray(img.dataobj) > 0, arr > 50)
    # tenant isolation over the wire
    assert client.get(f"/v1/analyses/{job['id']}", headers=h["other"]).status_code == 404
    assert client.get(job["links"]["output:bright"], headers=h["other"]).status_code == 404
    assert client.get(f"/v1/volumes/{vol['id']}", headers=h["other"]).status_code == 404


def test_vision_calls_return_masks_on_the_input_grid(deployment, tmp_path):
    """encode/generate go through the vision path (Celery queue `vision` when distributed)."""
    mode, client, h, _ = deployment
    p = tmp_path / "scan.nii.gz"
    arr, aff = write_scan(p, seed=3)
    vol = upload(client, h["acme"], p)
    code = ('e = encode(scan)\nwm = generate(e, scan, "white matter")\nv = volume(wm)\nread(v)\n'
            'output(wm, "white matter")')
    r = client.post("/v1/analyses", json={"code": code, "volumes": [{"id": vol["id"], "modality": "T1"}]},
                    headers=h["acme"])
    job = finish(client, h["acme"], r.json()["id"])
    assert job["status"] == "succeeded", job
    m = client.get(job["links"]["output:white matter"], headers=h["acme"])
    (tmp_path / "wm.nii.gz").write_bytes(m.content)
    img = nib.load(tmp_path / "wm.nii.gz")
    assert img.shape == arr.shape and np.allclose(img.affine, aff)
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1}


def test_prompt_with_the_shipped_model_gives_a_well_formed_result(deployment, tmp_path):
    mode, client, h, _ = deployment
    p = tmp_path / "scan.nii.gz"
    write_scan(p)
    with open(p, "rb") as fh:
        r = client.post("/v1/analyses/upload", headers=h["acme"], files=[("files", ("t1.nii.gz", fh))],
                        data={"prompt": "How large is the bright region?",
                              "metadata": json.dumps([{"modality": "T1"}])})
    assert r.status_code == 202, r.text
    job = finish(client, h["acme"], r.json()["id"], timeout=180)
    assert job["status"] in ("succeeded", "failed")
    result = AnalysisResult.model_validate(job["result"])
    assert result.model and result.status in ("succeeded", "no_answer", "failed")
    assert result.input_checksums["scan"]


def test_batch_of_five_with_signed_webhook(deployment, tmp_path):
    mode, client, h, _ = deployment
    receiver = Receiver()
    try:
        ids = []
        for i in range(5):
            p = tmp_path / f"c{i}.nii.gz"
            write_scan(p, seed=i)
            ids.append(upload(client, h["acme"], p)["id"])
        secret = "0123456789abcdef-secret"
        body = {"code": CODE, "webhook_url": receiver.url, "webhook_secret": secret,
                "items": [{"volumes": [{"id": v}], "label": f"c{i}"} for i, v in enumerate(ids)]}
        idem = {**h["acme"], "Idempotency-Key": f"batch-{mode}"}
        r = client.post("/v1/batches", headers=idem, json=body)
        assert r.status_code == 202, r.text
        again = client.post("/v1/batches", headers=idem, json=body)  # a retried POST: no second batch
        assert again.json()["id"] == r.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
        assert receiver.event.wait(120), "no webhook"
        headers, body = receiver.deliveries[0]
        assert verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["counts"]["succeeded"] == 5
        csv_text = client.get(f"/v1/batches/{r.json()['id']}/metrics.csv", headers=h["acme"]).text
        assert csv_text.count("\n") == 6 and "mL" in csv_text
    finally:
        receiver.close()


def test_cancel_a_queued_job(deployment, tmp_path):
    mode, client, h, _ = deployment
    p = tmp_path / "scan.nii.gz"
    write_scan(p)
    vid = upload(client, h["acme"], p)["id"]
    # occupy the workers with slow prompt jobs, then cancel one queued behind them
    blockers = [client.post("/v1/analyses", json={"prompt": "describe", "volumes": [{"id": vid}]},
                            headers=h["acme"]).json()["id"] for _ in range(2)]
    target = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}]}, headers=h["acme"]).json()
    r = client.post(f"/v1/analyses/{target['id']}/cancel", headers=h["acme"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # a job queued after the cancelled one: once it has finished, the queue (FIFO) has passed the
    # cancelled job, so a wrongly run job would show by now (no guessed sleep)
    sentinel = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}]}, headers=h["acme"]).json()
    for b in blockers:
        finish(client, h["acme"], b, timeout=180)
    assert finish(client, h["acme"], sentinel["id"], timeout=180)["status"] == "succeeded"
    final = client.get(f"/v1/analyses/{target['id']}", headers=h["acme"]).json()
    assert final["status"] == "cancelled" and final["result"] is None
    assert client.post(f"/v1/analyses/{target['id']}/cancel", headers=h["acme"]).status_code == 409
