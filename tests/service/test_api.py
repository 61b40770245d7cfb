"""The API in-process (embedded default): behaviour of every resource, errors as problem+json."""
from __future__ import annotations

import csv
import gzip
import io
import json
import time

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.settings import Settings
from service.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.service.conftest import CODE, expected_ml, write_scan
from tests.service.webhook_receiver import Receiver

PROBLEM = "application/problem+json"


@pytest.fixture
def api(tmp_path):
    # webhook_allow_loopback: the tests' webhook receiver listens on 127.0.0.1 (off by default)
    settings = Settings(data_dir=tmp_path / "data", broker_url=None, max_upload_bytes=200_000,
                        tenant_concurrency=6, webhook_backoff_s=0.05, workers=2, webhook_allow_loopback=True)
    app = create_app(settings)
    with TestClient(app) as client:
        store = app.state.service.records
        keys = {t: auth.create_key(store, t)[0] for t in ("acme", "other")}
        client.h = {t: {"X-API-Key": k} for t, k in keys.items()}  # type: ignore[attr-defined]  # headers per tenant, for the tests
        yield client


def wait_until(fetch, done, timeout_s: float = 60.0):
    """``fetch()`` until ``done(value)``: waits on a state, never for a guessed time (the bound only
    turns a hang into a failure)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"condition not reached in {timeout_s} s: {value}"
        time.sleep(0.01)


def upload(client, path, tenant="acme", **data):
    with open(path, "rb") as fh:
        return client.post("/v1/volumes", files={"file": (path.name, fh)}, data=data, headers=client.h[tenant])


def run_code(client, vid, tenant="acme", code=CODE, wait=20.0, **extra):
    r = client.post("/v1/analyses", json={"code": code, "volumes": [{"id": vid, **extra}], "wait": wait},
                    headers=client.h[tenant])
    return r


def test_code_analysis_returns_exact_mask_on_input_grid_and_metric(api, scan_file, tmp_path):
    path, arr, aff = scan_file
    r = upload(api, path, modality="T1", date="2024-03-01")
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["shape"] == [20, 22, 18] and info["orientation"] == "LSA" and info["modality"] == "T1"
    r = run_code(api, info["id"])
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    (metric,) = result["metrics"]
    assert metric["unit"] == "mL" and metric["value"] == pytest.approx(expected_ml(arr, aff), rel=1e-6)
    assert metric["step"] == 0
    assert "bright volume" in result["text"]
    assert result["input_checksums"]["scan"] == info["sha256"]
    assert {"load_s", "analysis_s", "total_s"} <= set(result["timings_s"])
    (out,) = result["outputs"]
    tenant_dir = tmp_path / "data" / "artifacts" / "acme"
    assert (tenant_dir / out["path"]).is_file() and not (tenant_dir / job["id"]).exists()  # written once
    r = api.get(job["links"]["output:bright"], headers=api.h["acme"])
    assert r.status_code == 200
    got = tmp_path / "mask.nii.gz"
    got.write_bytes(r.content)
    img = nib.load(got)
    assert np.allclose(img.affine, aff)
    assert np.array_equal(np.asarray(img.dataobj) > 0, arr > 50)
    png = api.get(job["links"]["snapshot:bright"], headers=api.h["acme"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert out["snapshot"] and (tenant_dir / out["snapshot"]).read_bytes() == png.content  # stored with the result


def test_upload_in_the_same_request_as_the_analysis(api, scan_file):
    path, arr, aff = scan_file
    with open(path, "rb") as fh:
        r = api.post("/v1/analyses/upload", headers=api.h["acme"],
                     files=[("files", ("t1.nii.gz", fh))],
                     data={"code": CODE.replace("scan", "t1"), "wait": "20",
                           "metadata": json.dumps([{"name": "t1", "modality": "T1"}])})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "succeeded" and job["volumes"][0]["name"] == "t1"
    assert job["result"]["metrics"][0]["value"] == pytest.approx(expected_ml(arr, aff), rel=1e-6)


@pytest.mark.parametrize("metadata, message", [
    ([{"modality": 5}], "'modality' must be a string"),
    ([{"date": 20240301}], "'date' must be a string"),
    ([{"name": ["t1"]}], "'name' must be a string"),
    ([{"modality": {"a": 1}}], "'modality' must be a string"),
    ("[" * 5000, "nested too deeply"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ([{"date": "2024-03-01\n"}], "ISO date"),
])
def test_upload_metadata_of_the_wrong_type_is_a_422(api, scan_file, metadata, message):
    path, _, _ = scan_file
    body = metadata if isinstance(metadata, str) else json.dumps(metadata)
    with open(path, "rb") as fh:
        r = api.post("/v1/analyses/upload", headers=api.h["acme"], files=[("files", ("t1.nii.gz", fh))],
                     data={"code": CODE, "metadata": body})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert message in r.json()["detail"], r.json()
    with open(path, "rb") as fh:  # the same on the stored-volumes field
        r = api.post("/v1/analyses/upload", headers=api.h["acme"], files=[("files", ("t1.nii.gz", fh))],
                     data={"code": CODE, "volumes": "[" * 5000})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text


def test_multipart_analyses_leave_no_upload_temp_files(api, scan_file, tmp_path):
    path, _, _ = scan_file
    data = path.read_bytes()
    artifacts = tmp_path / "data" / "artifacts"

    def temp_files():
        return sorted(p.name for p in artifacts.rglob("*") if p.name.endswith((".upload", ".part")))

    assert temp_files() == []
    stored_before = len(list(artifacts.rglob("vol_*.nii*")))
    cases = [  # (files, form fields, expected status)
        ([("files", ("t1.nii.gz", data))], {"code": CODE, "wait": "20"}, 200),
        ([("files", ("t1.nii.gz", data)), ("other", ("x.bin", b"abc"))], {"code": CODE, "wait": "20"}, 200),
        ([("files", ("t1.nii.gz", data)), ("metadata", ("m.json", b"[]"))], {"code": CODE, "wait": "20"}, 200),
        ([("files", ("t1.nii.gz", data))], {"code": CODE, "metadata": "not json"}, 422),
        ([("files", ("t1.nii.gz", data))], {"metadata": "[]"}, 422),  # neither prompt nor code
        ([("files", ("t1.nii.gz", b"junk"))], {"code": CODE}, 422),  # an unreadable volume
        ([("files", ("t1.nii.gz", data))] * 2, {"code": CODE, "metadata": json.dumps([{"modality": 5}])}, 422),
        ([("files", ("t1.nii.gz", data))] * 20, {"code": CODE}, 422),  # too many volumes
    ]
    for files, fields, status in cases:
        r = api.post("/v1/analyses/upload", headers=api.h["acme"], files=files, data=fields)
        assert r.status_code == status, (fields, r.text)
        assert temp_files() == [], (fields, temp_files())
    assert len(list(artifacts.rglob("vol_*.nii*"))) >= stored_before + 3  # the successes' volumes are kept


def test_errors_are_problem_json(api, scan_file, tmp_path):
    r = api.get("/v1/volumes/vol_nope", headers=api.h["acme"])
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM and r.json()["status"] == 404
    r = api.post("/v1/analyses", json={"prompt": "x", "volumes": []}, headers=api.h["acme"])
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and r.json()["errors"]
    r = api.post("/v1/analyses", content=b"{not json", headers={**api.h["acme"], "Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    for listing in ("/v1/volumes", "/v1/analyses"):  # past the stores' 64-bit integers: refused, not a 500
        r = api.get(listing, params={"offset": 2**63}, headers=api.h["acme"])
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        assert api.get(listing, params={"offset": 10**9}, headers=api.h["acme"]).json() == []
    r = api.get("/v1/volumes")
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    r = api.get("/v1/volumes", headers={"X-API-Key": "vxa_000000000000_" + "x" * 43})
    assert r.status_code == 401
    r = api.post("/v1/analyses", json={"code": "x = 1", "volumes": [{"id": "vol_missing"}]}, headers=api.h["acme"])
    assert r.status_code == 422 and "not found" in r.json()["detail"]


def test_requests_the_sandbox_would_fail_are_422_at_the_door(api, scan_file):
    """What the sandbox refuses for its size or a scan name is refused before a job exists."""
    from api_schemas.limits import MAX_CODE_CHARS

    path, _, _ = scan_file
    vid = upload(api, path).json()["id"]
    too_long = CODE + "\n" + "#" * (4723 - len(CODE) - 1)
    assert len(too_long) == 4723 > MAX_CODE_CHARS
    refusals = [
        api.post("/v1/analyses", json={"code": too_long, "volumes": [{"id": vid}]}, headers=api.h["acme"]),
        api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid, "name": "volume"}]},
                 headers=api.h["acme"]),
        api.post("/v1/analyses", json={"prompt": "x" * 4001, "volumes": [{"id": vid}]}, headers=api.h["acme"]),
        api.post("/v1/batches", json={"code": too_long, "items": [{"volumes": [{"id": vid}]}]},
                 headers=api.h["acme"]),
        api.post("/v1/batches", json={"code": CODE, "items": [{"volumes": [{"id": vid, "name": "threshold"}]}]},
                 headers=api.h["acme"]),
    ]
    with open(path, "rb") as fh:
        refusals.append(api.post("/v1/analyses/upload", headers=api.h["acme"], files={"files": (path.name, fh)},
                                 data={"code": too_long}))
    with open(path, "rb") as fh:
        refusals.append(api.post("/v1/analyses/upload", headers=api.h["acme"], files={"files": (path.name, fh)},
                                 data={"code": CODE, "metadata": json.dumps([{"name": "volume"}])}))
    for r in refusals:
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert api.get("/v1/analyses", headers=api.h["acme"]).json() == []  # no job was created
    # the longest program the door accepts runs to the end
    longest = CODE + "\n" + "#" * (MAX_CODE_CHARS - len(CODE) - 1)
    r = run_code(api, vid, code=longest)
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text


def test_hostile_and_oversized_uploads_are_refused(api, tmp_path):
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\x00" * 400)
    r = upload(api, bad)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "bad.nii" in r.json()["detail"] and "vol_" not in r.json()["detail"]
    bomb = tmp_path / "bomb.nii.gz"  # header says 1024^3 voxels; the body is tiny
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 1024))
    hdr.set_data_dtype(np.float32)
    bomb.write_bytes(gzip.compress(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000))
    r = upload(api, bomb)
    assert r.status_code == 422, r.text
    big = tmp_path / "big.nii"
    big.write_bytes(b"\x00" * 300_000)
    r = upload(api, big)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    data_dir = api.app.state.service.settings.artifacts_dir / "acme"
    assert not [p for p in data_dir.iterdir() if p.is_file()]  # nothing left behind


def test_tenant_isolation(api, scan_file):
    path, _, _ = scan_file
    vid = upload(api, path).json()["id"]
    job = run_code(api, vid).json()
    other = api.h["other"]
    assert api.get(f"/v1/volumes/{vid}", headers=other).status_code == 404
    assert api.delete(f"/v1/volumes/{vid}", headers=other).status_code == 404
    assert api.get(f"/v1/analyses/{job['id']}", headers=other).status_code == 404
    assert api.post(f"/v1/analyses/{job['id']}/cancel", headers=other).status_code == 404
    assert api.get(job["links"]["output:bright"], headers=other).status_code == 404
    assert run_code(api, vid, tenant="other").status_code == 422  # cannot reference it either
    assert api.get("/v1/analyses", headers=other).json() == []
    assert api.get(f"/v1/volumes/{vid}", headers=api.h["acme"]).status_code == 200
    assert api.delete(f"/v1/volumes/{vid}", headers=api.h["acme"]).status_code == 204
    assert api.get(f"/v1/volumes/{vid}", headers=api.h["acme"]).status_code == 404


def test_idempotency_key_replays_the_first_answer(api, scan_file):
    path, _, _ = scan_file
    vid = upload(api, path).json()["id"]
    h = {**api.h["acme"], "Idempotency-Key": "k-1"}
    body = {"code": CODE, "volumes": [{"id": vid}]}
    a = api.post("/v1/analyses", json=body, headers=h)
    b = api.post("/v1/analyses", json=body, headers=h)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers["Idempotent-Replayed"] == "true"
    c = api.post("/v1/analyses", json={**body, "wait": 1}, headers=h)
    assert c.status_code == 422
    d = api.post("/v1/analyses", json=body, headers={**api.h["other"], "Idempotency-Key": "k-1"})
    assert d.status_code == 422  # the other tenant cannot see acme's volume; keys are per tenant


def test_backpressure_429_with_retry_after(api, scan_file):
    path, _, _ = scan_file
    vid = upload(api, path).json()["id"]
    store = api.app.state.service.records
    for i in range(6):  # fill the tenant's slots with jobs that are still queued
        store.put("job", {"id": f"job_fake{i}", "tenant": "acme", "status": "queued", "created_at_ts": time.time()})
    r = run_code(api, vid, wait=0)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert r.headers["content-type"] == PROBLEM
    assert run_code(api, vid, tenant="other", wait=0).status_code in (202, 422)  # other tenants unaffected


def test_cancel_a_queued_job(api, scan_file):
    path, _, _ = scan_file
    vid = upload(api, path).json()["id"]
    store = api.app.state.service.records
    # a job the pool has not picked up yet: cancelled before it starts, so it never runs
    from api_schemas.requests import AnalysisRequest
    from service.jobs import new_job_record
    from service.storage import JobRecord

    job = new_job_record(store, "acme", AnalysisRequest(code=CODE, volumes=[{"id": vid}]))
    store.put_record(job)
    r = api.post(f"/v1/analyses/{job.id}/cancel", headers=api.h["acme"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    from service.tasks.analysis import run_analysis

    assert run_analysis(api.app.state.service.ctx, job.id) == "cancelled"
    stored = store.get_record(JobRecord, job.id)
    assert stored is not None and stored.result is None and stored.status == "cancelled"
    assert api.post(f"/v1/analyses/{job.id}/cancel", headers=api.h["acme"]).status_code == 409


def test_batch_with_signed_webhook_and_csv(api, tmp_path):
    receiver = Receiver(fail_first=1)  # the first delivery fails: the retry must succeed
    try:
        ids, expected = [], []
        for i in range(5):
            p = tmp_path / f"case{i}.nii.gz"
            arr, aff = write_scan(p, seed=i)
            ids.append(upload(api, p).json()["id"])
            expected.append(expected_ml(arr, aff))
        secret = "s3cret-s3cret-s3cret"
        r = api.post("/v1/batches", headers=api.h["acme"], json={
            "code": CODE, "webhook_url": receiver.url, "webhook_secret": secret,
            "items": [{"volumes": [{"id": v}], "label": f"case{i}"} for i, v in enumerate(ids)]})
        assert r.status_code == 202, r.text
        batch = r.json()
        assert receiver.event.wait(60), "webhook never delivered"
        headers, body = receiver.deliveries[0]
        assert verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        payload = json.loads(body)
        assert payload["batch_id"] == batch["id"] and payload["counts"]["succeeded"] == 5
        assert receiver.attempts == 2 and len(receiver.deliveries) == 1
        # the receiver answers before the sender records the delivery: wait for the record
        state = wait_until(lambda: api.get(f"/v1/batches/{batch['id']}", headers=api.h["acme"]).json(),
                           lambda b: b["webhook"]["delivered"])
        assert state["status"] == "completed" and state["webhook"]["attempts"] == 2
        results = api.get(f"/v1/batches/{batch['id']}/results", headers=api.h["acme"]).json()
        assert [j["status"] for j in results["items"]] == ["succeeded"] * 5
        r = api.get(f"/v1/batches/{batch['id']}/metrics.csv", headers=api.h["acme"])
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert [row["label"] for row in rows] == [f"case{i}" for i in range(5)]
        assert [float(row["value"]) for row in rows] == pytest.approx(expected, rel=1e-6)
        assert {row["unit"] for row in rows} == {"mL"}
        assert api.get(f"/v1/batches/{batch['id']}", headers=api.h["other"]).status_code == 404
    finally:
        receiver.close()


def test_an_overflowing_metric_is_a_clear_failure_not_a_500(api, scan_file):
    path, _, _ = scan_file
    vid = upload(api, path).json()["id"]
    code = "v = volume(threshold(scan, 50))\nd = difference(1e308, -1e308)\nrespond(f'{v} {d}')\nstop()"
    r = run_code(api, vid, code=code)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "failed" and "finite" in (job["result"]["error"] or job.get("error") or ""), job
    r = api.get(f"/v1/analyses/{job['id']}", headers=api.h["acme"])
    assert r.status_code == 200 and "Infinity" not in r.text and "NaN" not in r.text


SSRF_URLS = ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:6379/", "http://10.0.0.1/",
             "http://172.16.5.4/", "http://192.168.1.1/", "http://0.0.0.0/", "http://224.0.0.1/",
             "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/",
             "http://[::1]:22/", "http://[fc00::1]/", "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/",
             "http://[::]/", "http://user@example.com/", "http://user:pw@8.8.8.8/", "ftp://example.com/",
             "file:///etc/passwd", "gopher://8.8.8.8/", "http://localhost:6379/"]


@pytest.mark.parametrize("allow_loopback", [False, True])
def test_batch_webhook_to_private_addresses_is_refused_at_the_door(tmp_path, allow_loopback):
    settings = Settings(data_dir=tmp_path / "data", broker_url=None, webhook_allow_loopback=allow_loopback)
    app = create_app(settings)
    with TestClient(app) as client:
        h = {"X-API-Key": auth.create_key(app.state.service.records, "acme")[0]}
        urls = SSRF_URLS if not allow_loopback else [u for u in SSRF_URLS if "127." not in u and "::1" not in u
                                                      and "localhost" not in u and "0x7f" not in u
                                                      and "2130706433" not in u and "0177" not in u]
        for url in urls:
            r = client.post("/v1/batches", headers=h, json={
                "code": CODE, "webhook_url": url, "webhook_secret": "s3cret-s3cret-s3cret",
                "items": [{"volumes": [{"id": "vol_x"}]}]})
            assert r.status_code == 422, (url, r.text)
            assert r.headers["content-type"].startswith(PROBLEM) and "webhook_url" in r.text, url
        r = client.get("/v1/analyses", headers=h)
        assert r.status_code == 200 and r.json() == [], r.text  # no job was made


class InlineDispatcher:
    """Runs each job to the end inside submit(): the fastest worker there can be. A batch's first job
    finishes before the next item is submitted, which is when an early completion would show."""

    mode = "embedded"

    def __init__(self, ctx):
        self.ctx = ctx

    def submit(self, job_id):
        from service.tasks.analysis import run_analysis

        run_analysis(self.ctx, job_id)

    def cancel(self, job_id):
        pass

    def ping(self):
        return True, "inline"

    def shutdown(self):
        pass


def test_batch_completes_once_after_its_last_job_even_with_an_instant_worker(api, tmp_path):
    service_state = api.app.state.service
    service_state.dispatcher = InlineDispatcher(service_state.ctx)
    receiver = Receiver()
    try:
        ids = []
        for i in range(3):
            p = tmp_path / f"case{i}.nii.gz"
            write_scan(p, seed=i)
            ids.append(upload(api, p).json()["id"])
        r = api.post("/v1/batches", headers=api.h["acme"], json={
            "code": CODE, "webhook_url": receiver.url, "webhook_secret": "s3cret-s3cret-s3cret",
            "items": [{"volumes": [{"id": v}]} for v in ids]})
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "completed"  # every job ran inside the request
        assert receiver.event.wait(60)
        assert len(receiver.deliveries) == 1
        payload = json.loads(receiver.deliveries[0][1])
        assert payload["counts"]["succeeded"] == 3 and payload["counts"]["failed"] == 0
    finally:
        receiver.close()


def test_models_health_and_metrics(api):
    m = api.get("/v1/models", headers=api.h["acme"]).json()
    assert "threshold" in {f["name"] for f in m["functions"]} and "white matter" in m["targets"]
    assert m["trained"] in (True, False) and (m["trained"] or "random-init" in m["note"])
    r = api.get("/readyz")
    assert r.status_code == 200 and {c["name"] for c in r.json()["components"]} >= {"job_store", "dispatcher"}
    assert api.get("/metrics").status_code == 401  # every tenant's counts: a key is needed
    text = api.get("/metrics", headers=api.h["acme"]).text
    assert "voxagent_http_request_seconds" in text and "voxagent_queue_depth" in text
