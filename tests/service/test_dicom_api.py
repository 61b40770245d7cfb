"""DICOM through the API (embedded app on loopback): a series zip as a volume, SEG/SR downloads,
STOW-RS in, routing rules (validation, unmatched studies, push with retries and dead letters).

The series come from the fixture writer (tests/voxel_ops/dicom_writer.py), whose headers carry
patient identifiers (PHI) that must never appear in a response."""
from __future__ import annotations

import email
import email.policy
import io
import json
import logging
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.dicom.dicomweb import multipart_related
from service.dicom.routing import RoutingRulesError, parse_rules
from service.settings import Settings
from tests.service.procs import free_port
from tests.voxel_ops.dicom_writer import PHI, affine_from, rotation, write_series

PROBLEM = "application/problem+json"
STUDY = "1.2.826.0.1.3680043.8.498.1"  # the fixture writer's study
AFFINE = affine_from(rotation(0.1, 0.0, 0.2), (1.1, 0.9, 2.5), (10.0, -20.0, 5.0))
CODE = ('m = threshold(scan, 50)\nv = volume(m)\nread(v)\noutput(m, "bright")\n'
        'respond(f"bright volume {v}")')
ROUTED_CODE = 'm = threshold(flair, 50)\nv = volume(m)\noutput(m, "bright")\nrespond(f"bright volume {v}")'


def stored_array(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 40, size=(14, 16, 9)).astype(np.int16)
    arr[3:8, 4:10, 2:6] = 120
    return arr


def series_files(folder: Path, description: str = "t1_mprage", seed: int = 0, **extra) -> tuple[list[Path], str]:
    uid = pydicom.uid.generate_uid()
    files = write_series(stored_array(seed), AFFINE, folder, description=description, series_uid=uid, **extra)
    return files, uid


def zip_of(paths: list[Path], target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for p in paths:
            zf.write(p, f"{p.parent.name}/{p.name}")
    return target


def no_phi(text: str) -> None:
    for value in PHI.values():
        assert value not in text, value


def make_api(tmp_path: Path, **settings) -> TestClient:
    s = Settings(data_dir=tmp_path / "data", broker_url=None, max_upload_bytes=5_000_000, workers=2,
                 webhook_allow_loopback=True, **settings)
    return TestClient(create_app(s))


@pytest.fixture
def api(tmp_path):
    with make_api(tmp_path) as client:
        store = client.app.state.service.records
        client.h = {t: {"X-API-Key": auth.create_key(store, t)[0]} for t in ("acme", "other")}  # type: ignore[attr-defined]  # headers per tenant
        yield client


def upload_zip(client, path: Path, tenant="acme", **data):
    with open(path, "rb") as fh:
        return client.post("/v1/volumes", files={"file": (path.name, fh, "application/zip")}, data=data,
                           headers=client.h[tenant])


def test_zip_upload_metadata_job_and_dicom_downloads(api, tmp_path):
    files, uid = series_files(tmp_path / "t1", description="t1_mprage", SeriesNumber=4)
    r = upload_zip(api, zip_of(files, tmp_path / "t1.zip"))
    assert r.status_code == 201, r.text
    info = r.json()
    no_phi(r.text)
    assert info["modality"] == "T1" and info["date"] == "2024-03-02" and info["series_description"] == "t1_mprage"
    assert info["dicom"]["series_instance_uid"] == uid and info["dicom"]["study_instance_uid"] == STUDY
    assert info["dicom"]["instances"] == 9 and info["shape"] == [14, 16, 9]
    vid = info["id"]

    r = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 20}, headers=api.h["acme"])
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    job = r.json()
    (metric,) = job["result"]["metrics"]

    seg_r = api.get(f"/v1/analyses/{job['id']}/dicom/seg", headers=api.h["acme"])
    sr_r = api.get(f"/v1/analyses/{job['id']}/dicom/sr", headers=api.h["acme"])
    assert seg_r.status_code == 200 and sr_r.status_code == 200, (seg_r.text, sr_r.text)
    assert seg_r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(seg_r.content))
    sr = pydicom.dcmread(io.BytesIO(sr_r.content))
    assert seg.StudyInstanceUID == STUDY == sr.StudyInstanceUID
    assert seg.PatientID == PHI["PatientID"]  # linked to the patient, in the objects only
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["bright"]
    # the SEG, frame by source instance, is exactly the threshold of the stored pixels
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).pixel_array for p in files}
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    seen = 0
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(frames[i] != 0, by_uid[src] > 50)
        seen += int((by_uid[src] > 50).sum())
    total = sum(int((a > 50).sum()) for a in by_uid.values())
    assert seen == total
    # the SR carries the metric with its unit, referencing the SEG
    text = str(sr)
    assert sr.VerificationFlag == "UNVERIFIED" and "ml" in text and f"{metric['value']:.6g}"[:5] in text
    assert seg.SOPInstanceUID in text
    # a second download is the same instance (UIDs derive from the job)
    again = pydicom.dcmread(io.BytesIO(api.get(f"/v1/analyses/{job['id']}/dicom/sr", headers=api.h["acme"]).content))
    assert again.SOPInstanceUID == sr.SOPInstanceUID

    # tenant isolation: another tenant's analysis does not exist for this one
    r = api.get(f"/v1/analyses/{job['id']}/dicom/seg", headers=api.h["other"])
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)
    # delete takes the headers with the volume; the cached results stay downloadable
    assert api.delete(f"/v1/volumes/{vid}", headers=api.h["acme"]).status_code == 204
    tenant_dir = tmp_path / "data" / "artifacts" / "acme"
    assert not list(tenant_dir.glob("*.dcmhdr.zip")) and not list(tenant_dir.glob("*.upload"))


def test_dicom_refusals_are_problems_without_patient_identifiers(api, tmp_path):
    a, uid_a = series_files(tmp_path / "a", description="t1_mprage", SeriesNumber=2)
    b, _ = series_files(tmp_path / "b", description="flair_ax", SeriesNumber=3, seed=1)
    both = zip_of(a + b, tmp_path / "both.zip")
    r = upload_zip(api, both)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    body = r.json()
    assert body["error_class"] == "MixedSeriesError" and "both.zip" in body["detail"]
    no_phi(r.text)
    r = upload_zip(api, both, series=uid_a)
    assert r.status_code == 201 and r.json()["series_description"] == "t1_mprage", r.text

    gap = zip_of([p for p in a if pydicom.dcmread(p).InstanceNumber != 5], tmp_path / "gap.zip")  # a middle slice
    r = upload_zip(api, gap)
    assert r.status_code == 422 and r.json()["error_class"] == "MissingSliceError", r.text
    no_phi(r.text)
    r = upload_zip(api, a[0].parent.parent / "a" / a[0].name)  # one single-frame file: not a series zip
    assert r.status_code == 201 or r.status_code == 422
    no_phi(r.text)
    r = api.post("/v1/volumes", files={"file": ("x.zip", b"PK\x03\x04 not really a zip")}, headers=api.h["acme"])
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    tenant_dir = tmp_path / "data" / "artifacts" / "acme"
    assert not list(tenant_dir.glob("*.upload"))


def test_nifti_analysis_has_no_dicom_results(api, tmp_path):
    from tests.service.conftest import write_scan

    write_scan(tmp_path / "s.nii.gz")
    with open(tmp_path / "s.nii.gz", "rb") as fh:
        vid = api.post("/v1/volumes", files={"file": ("s.nii.gz", fh)}, headers=api.h["acme"]).json()["id"]
    job = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 20},
                   headers=api.h["acme"]).json()
    r = api.get(f"/v1/analyses/{job['id']}/dicom/sr", headers=api.h["acme"])
    assert r.status_code == 409 and "DICOM" in r.json()["detail"]


def stow_body(paths: list[Path]) -> tuple[bytes, str]:
    return multipart_related([p.read_bytes() for p in paths])


def test_stow_rs_stores_each_series_and_answers_per_standard(api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    t1, uid_t1 = series_files(tmp_path / "t1", description="t1_mprage", SeriesNumber=2)
    flair, uid_fl = series_files(tmp_path / "fl", description="FLAIR ax", SeriesNumber=3, seed=1)
    (tmp_path / "junk.dcm").write_bytes(b"not a DICOM file")
    body, ctype = stow_body(t1 + flair + [tmp_path / "junk.dcm"])
    r = api.post("/dicomweb/studies", content=body, headers={**api.h["acme"], "Content-Type": ctype})
    assert r.status_code == 202, r.text  # the junk part failed, both series were stored
    assert r.headers["content-type"].startswith("application/dicom+json")
    ds = pydicom.Dataset.from_json(r.json())
    assert len(ds.ReferencedSOPSequence) == 18 and len(ds.FailedSOPSequence) == 1
    assert ds.FailedSOPSequence[0].FailureReason == 0xC000
    no_phi(r.text)
    vols = {v["dicom"]["series_instance_uid"]: v for v in api.get("/v1/volumes", headers=api.h["acme"]).json()}
    assert vols[uid_t1]["modality"] == "T1" and vols[uid_fl]["modality"] == "FLAIR"
    (study,) = api.get("/v1/studies", headers=api.h["acme"]).json()
    assert study["study_instance_uid"] == STUDY and study["status"] == "stored" and len(study["series"]) == 2
    assert api.get(f"/v1/studies/{study['id']}", headers=api.h["other"]).status_code == 404
    assert api.get("/v1/volumes", headers=api.h["other"]).json() == []

    # into another study's URI: every instance fails, nothing stored (409)
    one, one_type = stow_body(t1)
    r = api.post("/dicomweb/studies/1.2.3.4", content=one, headers={**api.h["acme"], "Content-Type": one_type})
    assert r.status_code == 409 and len(pydicom.Dataset.from_json(r.json()).FailedSOPSequence) == 9
    r = api.post("/dicomweb/studies", content=b"--x\r\n\r\n--x--", headers={**api.h["acme"],
                                                                              "Content-Type": "multipart/form-data"})
    assert r.status_code == 415 and r.headers["content-type"].startswith(PROBLEM)
    r = api.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 401

    # a series that cannot be read fails as a whole, named without the patient; the others are stored
    gap = [p for p in t1 if pydicom.dcmread(p).InstanceNumber != 5]
    sr_like = tmp_path / "sr.dcm"
    ds = pydicom.dcmread(t1[0])
    ds.Modality, ds.SeriesInstanceUID, ds.SOPInstanceUID = "SR", pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    del ds.PixelData
    ds.save_as(sr_like, enforce_file_format=True)
    body, ctype = stow_body(gap + flair + [sr_like])
    r = api.post("/dicomweb/studies", content=body, headers={**api.h["acme"], "Content-Type": ctype})
    assert r.status_code == 202, r.text
    reasons = sorted({item.FailureReason for item in pydicom.Dataset.from_json(r.json()).FailedSOPSequence})
    assert reasons == [0x0110, 0x0122]  # processing failure (missing slice), SOP class not supported (SR)
    study = api.get("/v1/studies", headers=api.h["acme"]).json()[0]
    errors = [s["error"] for s in study["series"] if s["error"]]
    assert len(errors) == 2 and any("MissingSliceError" in e for e in errors), errors
    no_phi(r.text + json.dumps(study) + caplog.text)


# --------------------------------------------------------------------------- routing


class StowReceiver:
    """A DICOMweb STOW-RS endpoint on loopback: parses each request with the stdlib email parser
    (independently of voxagent's writer), fails the first ``fail_first`` with 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.instances: list[pydicom.Dataset] = []
        self.attempts = 0
        self.event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.attempts += 1
                if outer.attempts <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                msg = email.message_from_bytes(b"Content-Type: " + self.headers["Content-Type"].encode()
                                               + b"\r\n\r\n" + body, policy=email.policy.HTTP)
                for part in msg.iter_parts():
                    assert part.get_content_type() == "application/dicom"
                    outer.instances.append(pydicom.dcmread(io.BytesIO(part.get_payload(decode=True))))
                out = json.dumps({}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                outer.event.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rules_yaml(url: str, attempts: int = 3) -> str:
    return f"""
destinations:
  acme: {{url: "{url}", attempts: {attempts}, backoff_s: 0.01, timeout_s: 5}}
rules:
  - name: ct-only
    scans: {{scan: {{modality: CT}}}}
    code: "respond('ct')"
  - name: flair-bright
    tenants: [acme]
    scans:
      flair: {{modality: MR, sequence: FLAIR}}
      t1: {{description: "re:^t1_"}}
    dicom_out: flair
    code: {json.dumps(ROUTED_CODE)}
"""


def wait_study(client, tenant: str, done, timeout_s: float = 60.0):
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        studies = client.get("/v1/studies", headers=client.h[tenant]).json()
        if studies and done(studies[0]):
            return studies[0]
        assert time.monotonic() < deadline, studies
        time.sleep(0.05)


@pytest.mark.parametrize("fail_first", [1])
def test_routing_runs_rule_and_pushes_seg_and_sr_with_retries(tmp_path, fail_first):
    receiver = StowReceiver(fail_first=fail_first)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(receiver.url))
    try:
        with make_api(tmp_path, routing_rules=rules) as api:
            store = api.app.state.service.records
            api.h = {t: {"X-API-Key": auth.create_key(store, t)[0]} for t in ("acme", "other")}  # type: ignore[attr-defined]
            t1, _ = series_files(tmp_path / "t1", description="t1_mprage", SeriesNumber=2)
            flair, uid_fl = series_files(tmp_path / "fl", description="FLAIR ax", SeriesNumber=3, seed=1)
            body, ctype = stow_body(t1 + flair)
            r = api.post("/dicomweb/studies", content=body, headers={**api.h["acme"], "Content-Type": ctype})
            assert r.status_code == 200, r.text
            study = wait_study(api, "acme", lambda s: (s.get("delivery") or {}).get("status") not in (None,))
            assert study["rule"] == "flair-bright" and study["delivery"]["status"] == "delivered", study
            assert study["delivery"]["attempts"] == fail_first + 1
            job = api.get(f"/v1/analyses/{study['job_id']}", headers=api.h["acme"]).json()
            assert job["status"] == "succeeded" and [v["name"] for v in job["volumes"]] == ["flair", "t1"]
            mods = sorted(ds.Modality for ds in receiver.instances)
            assert mods == ["SEG", "SR"]
            assert all(ds.StudyInstanceUID == STUDY for ds in receiver.instances)
            seg = next(ds for ds in receiver.instances if ds.Modality == "SEG")
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid_fl  # the dicom_out scan's series

            # the other tenant matches no rule (flair-bright is acme's; ct-only wants CT): recorded, not dropped
            r = api.post("/dicomweb/studies", content=body, headers={**api.h["other"], "Content-Type": ctype})
            assert r.status_code == 200
            (other,) = api.get("/v1/studies", headers=api.h["other"]).json()
            assert other["status"] == "unmatched" and other["job_id"] is None
    finally:
        receiver.close()


def test_unreachable_destination_ends_in_a_dead_letter(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(f"http://127.0.0.1:{free_port()}/dicom-web", attempts=2))
    with make_api(tmp_path, routing_rules=rules) as api:
        store = api.app.state.service.records
        api.h = {"acme": {"X-API-Key": auth.create_key(store, "acme")[0]}}  # type: ignore[attr-defined]
        t1, _ = series_files(tmp_path / "t1", description="t1_mprage")
        flair, _ = series_files(tmp_path / "fl", description="FLAIR ax", seed=1)
        body, ctype = stow_body(t1 + flair)
        assert api.post("/dicomweb/studies", content=body,
                        headers={**api.h["acme"], "Content-Type": ctype}).status_code == 200
        study = wait_study(api, "acme", lambda s: s.get("delivery") is not None)
        assert study["delivery"]["status"] == "dead_letter" and study["delivery"]["attempts"] == 2
        assert "127.0.0.1" not in (study["delivery"]["last_error"] or "")
        from service.storage.models import DeliveryRecord

        (dead,) = store.list_records(DeliveryRecord, "acme")
        assert dead.status == "dead_letter" and dead.job_id == study["job_id"] and len(dead.instances) == 2


@pytest.mark.parametrize("text, expected", [
    ("rules: [{name: a, scans: {scan: {modality: MR}}}]", "exactly one of 'prompt' or 'code'"),
    ("rules: [{name: a, code: x, scans: {scan: {modaliti: MR}}}]", "rules[0] (name 'a').scans.scan.modaliti"),
    ("rules: [{name: a, code: x, scans: {scan: {description: 're:('}}}]", "invalid regular expression"),
    ("rules: [{name: a, code: x, scans: {scan: {}}}]", "at least one of modality"),
    ("rules: [{name: a, code: x, scans: {volume: {modality: MR}}}]", "volume"),
    ("rules: [{name: a, code: x, dicom_out: t2, scans: {t1: {modality: MR}}}]", "dicom_out 't2'"),
    ("destinations: {acme: {url: 'http://10.0.0.5/dicom-web'}}", "refused: private address"),
    ("destinations: {acme: {url: 'http://127.0.0.1:8042/dicom-web'}}", "refused: private address"),
    ("destinations: {acme: {url: 'ftp://pacs/'}}", "http or https"),
    ("rules: {", "not valid YAML"),
])
def test_rules_are_validated_with_the_place_named(text, expected):
    with pytest.raises(RoutingRulesError) as err:
        parse_rules(text, "rules.yaml")
    assert expected in str(err.value) and str(err.value).startswith("rules.yaml: ")


def test_bad_rules_stop_the_start(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: a, scans: {scan: {modality: MR}}}]")
    with pytest.raises(RoutingRulesError, match="rules.yaml"):
        create_app(Settings(data_dir=tmp_path / "d", broker_url=None, routing_rules=rules))
    assert parse_rules("destinations: {acme: {url: 'http://127.0.0.1:8042/x'}}", allow_loopback=True)


def test_serve_refuses_bad_rules_with_exit_2(tmp_path):
    import subprocess

    from tests.service import procs

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{name: a, code: x, scans: {t1: {sequence: 're:(['}}}]")
    env = procs.base_env(tmp_path / "data", VOXAGENT_ROUTING_RULES=str(rules))
    out = subprocess.run([*procs.VOXAGENT, "serve", "--no-warm", "--port", str(free_port())], env=env,
                         cwd=procs.REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "rules.yaml: rules[0] (name 'a').scans.t1.sequence" in out.stderr and "regular expression" in out.stderr


def test_push_to_a_name_that_resolves_to_loopback_is_refused_without_the_setting(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(f"http://localhost:{free_port()}/dicom-web", attempts=3))
    s = Settings(data_dir=tmp_path / "data", broker_url=None, workers=1, routing_rules=rules)
    with TestClient(create_app(s)) as api:
        store = api.app.state.service.records
        h = {"X-API-Key": auth.create_key(store, "acme")[0]}
        t1, _ = series_files(tmp_path / "t1", description="t1_mprage")
        flair, _ = series_files(tmp_path / "fl", description="FLAIR ax", seed=1)
        body, ctype = stow_body(t1 + flair)
        assert api.post("/dicomweb/studies", content=body, headers={**h, "Content-Type": ctype}).status_code == 200
        api.h = {"acme": h}  # type: ignore[attr-defined]
        study = wait_study(api, "acme", lambda s: s.get("delivery") is not None)
        assert study["delivery"]["status"] == "dead_letter" and study["delivery"]["attempts"] == 1
        assert study["delivery"]["last_error"] == "destination refused: private address"


@pytest.mark.integration
@pytest.mark.slow
def test_routing_under_celery_pushes_from_the_worker(tmp_path, redis_url):
    """Distributed: the API stores and routes, a real Celery worker runs the job and pushes the results."""
    import httpx

    from tests.service import procs

    receiver = StowReceiver()
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(receiver.url))
    env = procs.base_env(tmp_path / "data", VOXAGENT_BROKER_URL=redis_url, VOXAGENT_ROUTING_RULES=str(rules),
                         VOXAGENT_WEBHOOK_ALLOW_LOOPBACK="true")
    started: list[procs.Proc] = []
    try:
        worker = procs.start_worker(env, tmp_path, "agent")
        started.append(worker)
        procs.wait_workers(redis_url, ["agent-test@localhost"], [worker])
        api, base = procs.start_api(env, tmp_path, "api-routing")
        started.append(api)
        h = {"X-API-Key": procs.make_key(env, "acme")}
        t1, _ = series_files(tmp_path / "t1", description="t1_mprage")
        flair, _ = series_files(tmp_path / "fl", description="FLAIR ax", seed=1)
        body, ctype = stow_body(t1 + flair)
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.post("/dicomweb/studies", content=body, headers={**h, "Content-Type": ctype})
            assert r.status_code == 200, r.text
            assert receiver.event.wait(120), worker.tail()
            study = client.get("/v1/studies", headers=h).json()[0]
            assert study["rule"] == "flair-bright"
        assert sorted(ds.Modality for ds in receiver.instances) == ["SEG", "SR"]
    finally:
        for p in reversed(started):
            p.stop()
        receiver.close()
