"""Unit tests: schemas, auth, the SQLite store, signing, PNG, Celery configuration."""
from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from api_schemas.batches import BatchRequest
from api_schemas.requests import AnalysisRequest
from service import auth
from service.settings import Settings
from service.storage.artifacts import ArtifactStore, UploadTooLarge
from service.storage.records import SQLiteRecordStore
from service.webhooks import sign, verify


def test_analysis_request_needs_exactly_one_of_prompt_or_code():
    vols = [{"id": "vol_1"}]
    with pytest.raises(ValidationError):
        AnalysisRequest(volumes=vols)
    with pytest.raises(ValidationError):
        AnalysisRequest(prompt="p", code="c", volumes=vols)
    with pytest.raises(ValidationError):
        AnalysisRequest(prompt="p", volumes=[{"id": "vol_1", "name": "respond"}])  # a function name
    with pytest.raises(ValidationError):
        AnalysisRequest(prompt="p", volumes=vols, wait=31)
    req = AnalysisRequest(prompt="p", volumes=[{"id": "a"}, {"id": "b", "name": "scan"}, {"id": "c"}])
    assert req.scan_names() == ["scan2", "scan", "scan3"]


def test_batch_request_defaults_and_webhook_secret():
    ok = BatchRequest(code="x = 1", items=[{"volumes": [{"id": "v"}]}, {"prompt": "p", "volumes": [{"id": "w"}]}])
    assert len(ok.items) == 2
    with pytest.raises(ValidationError):
        BatchRequest(items=[{"volumes": [{"id": "v"}]}])  # no work anywhere
    with pytest.raises(ValidationError):
        BatchRequest(code="x", items=[{"volumes": [{"id": "v"}]}], webhook_url="http://h/x")  # unsigned


def test_api_keys_are_stored_hashed_and_revocable(tmp_path):
    store = SQLiteRecordStore(tmp_path / "db.sqlite3")
    key, record = auth.create_key(store, "acme", "ci")
    assert key not in str(store.get("apikey", record["id"]))  # only the digest is kept
    assert auth.authenticate(store, key) == auth.Principal("acme", record["id"])
    assert auth.authenticate(store, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert auth.authenticate(store, "nonsense") is None
    assert [k["id"] for k in auth.list_keys(store, "acme")] == [record["id"]]
    assert "sha256" not in auth.list_keys(store)[0]
    assert auth.revoke_key(store, record["id"])
    assert auth.authenticate(store, key) is None
    with pytest.raises(ValueError):
        auth.create_key(store, "bad tenant!")


def test_sqlite_store_guards_status_and_counts_active(tmp_path):
    store = SQLiteRecordStore(tmp_path / "db.sqlite3")
    for i, tenant in enumerate(["a", "a", "b"]):
        store.put("job", {"id": f"j{i}", "tenant": tenant, "status": "queued", "created_at_ts": time.time() + i})
    assert store.count_active("a") == 2 and store.count_active(None) == 3
    assert store.update("job", "j0", {"status": "running"}, only_if_status=("queued",))["status"] == "running"
    assert store.update("job", "j0", {"status": "running"}, only_if_status=("queued",)) is None
    store.update("job", "j0", {"status": "succeeded"})
    assert store.count_active("a") == 1
    assert [d["id"] for d in store.list("job", "a")] == ["j1", "j0"]  # newest first
    assert store.get_for("job", "j2", "a") is None and store.get_for("job", "j2", "b")["id"] == "j2"
    assert store.put_if_absent("idem", {"id": "k", "tenant": "a", "v": 1}) is None
    assert store.put_if_absent("idem", {"id": "k", "tenant": "a", "v": 2})["v"] == 1
    assert store.delete("job", "j1") and not store.delete("job", "j1")


def test_typed_records_round_trip_and_refuse_a_wrong_status(tmp_path):
    from api_schemas.jobs import JobStatus
    from service.storage import BatchRecord, JobRecord

    store = SQLiteRecordStore(tmp_path / "db.sqlite3")
    job = JobRecord(id="j1", tenant="a", status=JobStatus.queued, created_at="2026-01-01T00:00:00+00:00",
                    created_at_ts=time.time(), code="read(1)", scan_names=["scan"], legacy_field=7)
    store.put_record(job)
    assert store.get("job", "j1")["status"] == "queued"  # stored as plain JSON
    got = store.get_record(JobRecord, "j1")
    assert got == job and got.status is JobStatus.queued and got.model_extra == {"legacy_field": 7}
    assert store.get_record(JobRecord, "j1", tenant="b") is None  # other tenants: absent
    running = store.update_record(JobRecord, "j1", {"status": JobStatus.running}, only_if_status=("queued",))
    assert running is not None and running.status is JobStatus.running
    assert store.update_record(JobRecord, "j1", {"status": JobStatus.failed}, only_if_status=("queued",)) is None
    assert [j.id for j in store.list_records(JobRecord, "a")] == ["j1"]
    with pytest.raises(ValidationError):
        JobRecord(id="j2", tenant="a", status="finished", created_at="x", created_at_ts=0.0)
    with pytest.raises(ValidationError):  # a batch needs its job ids
        BatchRecord(id="b1", tenant="a", status="running", created_at="x", created_at_ts=0.0)


def test_artifact_writer_enforces_limit_while_streaming(tmp_path):
    store = ArtifactStore(tmp_path)
    w = store.writer("acme", "f.bin", max_bytes=10)
    w.write(b"12345")
    with pytest.raises(UploadTooLarge):
        w.write(b"123456")
    assert not store.exists("acme", "f.bin") and not list((tmp_path / "acme").iterdir())
    with pytest.raises(ValueError):
        store.path("../etc", "passwd")


def test_webhook_signature_round_trip():
    ts = str(int(time.time()))
    sig = sign("s" * 16, ts, b'{"a":1}')
    assert verify("s" * 16, ts, b'{"a":1}', sig)
    assert not verify("s" * 16, ts, b'{"a":2}', sig)
    assert not verify("t" * 16, ts, b'{"a":1}', sig)
    stale = str(int(time.time()) - 3600)
    assert not verify("s" * 16, stale, b'{"a":1}', sign("s" * 16, stale, b'{"a":1}'))


def test_png_snapshot_is_a_valid_png_with_an_outline():
    """Three planes and a legend (tests/web/test_snapshot.py checks them); here: a PNG with outline pixels."""
    from service.png import OUTLINE_RGB, overlay_snapshot

    scan = np.random.default_rng(0).uniform(0, 1, (16, 12, 10)).astype(np.float32)
    mask = np.zeros_like(scan)
    mask[4:8, 3:6, 4:7] = 1
    png = overlay_snapshot(scan, np.eye(4), mask, name="m")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert w > 3 * 16 and h > 16
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert (np.abs(rgb - np.array(OUTLINE_RGB)).sum(axis=2) < 30).sum() > 0


def test_settings_env_prefix_and_celery_reliability(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXAGENT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOXAGENT_TASK_TIME_LIMIT_S", "100")
    s = Settings()
    assert s.data_dir == tmp_path and s.host == "127.0.0.1" and not s.distributed
    from service.workers.celery_app import make_celery

    conf = make_celery(s).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > s.task_time_limit_s
    assert {q.name for q in conf.task_queues} == {"agent", "vision"}


def test_celery_vision_client_sends_stored_inputs_by_reference(tmp_path):
    """An input read from the artifact store goes to the vision worker as its path and checksum (the
    worker verifies it); only a volume derived in the program is written out for the worker."""
    import nibabel as nib

    from service.storage.artifacts import sha256_file
    from service.workers.celery_vision_client import CeleryVisionClient
    from service.workers.vision_tasks import _read
    from voxel_ops import Volume, load_volume

    stored_path = tmp_path / "vol_1.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4)), stored_path)
    stored = load_volume(stored_path)
    derived = Volume(np.ones((2, 3, 4), np.float32), np.eye(4))
    sent = []

    class Reply:
        def get(self, timeout, disable_sync_subtasks):
            np.save(tmp_path / "v.npy", np.zeros((2, 8), np.float32))
            return {"key": "k", "job_id": "j", "stream_count": 2, "vectors_path": str(tmp_path / "v.npy"),
                    "queue": "vision.w1"}

    class App:
        def send_task(self, name, args, queue):
            sent.append((name, args, queue))
            return Reply()

    client = CeleryVisionClient(App(), tmp_path / "exchange")
    digest = sha256_file(stored_path)
    client.register_stored(stored, stored_path, digest)
    client.encode([stored, derived], [np.zeros(32), np.zeros(32)], "j")
    (name, (job_id, paths, _phis, checksums), queue) = sent[0]
    assert name == "vision.encode" and queue == "vision"
    assert paths[0] == str(stored_path) and checksums == [digest, None]
    assert Path(paths[1]).parent == tmp_path / "exchange" / "j"  # only the derived volume was written
    assert np.array_equal(_read(paths[0], digest).array, stored.array)
    with pytest.raises(ValueError, match="checksum"):
        _read(paths[0], "0" * 64)


def test_webhook_delivery_checks_the_resolved_address_and_never_connects(monkeypatch):
    import socket

    import httpx

    from service import netguard, webhooks

    def resolves_private(host, port, *a, **k):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    def no_connection(*a, **k):
        raise AssertionError("a refused destination must not be connected to")

    monkeypatch.setattr(netguard.socket, "getaddrinfo", resolves_private)
    monkeypatch.setattr(httpx.Client, "send", no_connection)
    ok, attempts, error = webhooks.deliver("https://hooks.example.com/x", "k" * 16, {"a": 1}, backoff_s=0)
    assert (ok, attempts, error) == (False, 1, "refused: private address")
    with pytest.raises(netguard.DestinationRefused):
        netguard.check_url("https://hooks.example.com/x")
    # allowing loopback allows loopback only, never a private network
    with pytest.raises(netguard.DestinationRefused):
        netguard.check_url("https://hooks.example.com/x", allow_loopback=True)
    monkeypatch.setattr(netguard.socket, "getaddrinfo", lambda h, p, *a, **k: [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", p, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", p))])
    with pytest.raises(netguard.DestinationRefused):  # one private address among public ones
        netguard.check_url("http://mixed.example.com/")
    monkeypatch.setattr(netguard.socket, "getaddrinfo", lambda h, p, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", p))])
    dest = netguard.check_url("https://public.example.com:8443/x")
    assert (dest.address, dest.port, dest.host) == ("93.184.216.34", 8443, "public.example.com")


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::1]", "[::ffff:7f00:1]",
                                  "169.254.169.254", "[fe80::1]", "[fd00::1]", "100.64.0.1", "0.0.0.0", "[ff02::1]",
                                  "240.0.0.1", "255.255.255.255"])
def test_every_spelling_of_a_non_public_address_is_refused(host):
    from service import netguard

    with pytest.raises(netguard.DestinationRefused, match="private address"):
        netguard.check_url(f"http://{host}/hook", resolve=False)


def test_webhook_errors_name_no_socket_detail():
    import socket as _socket

    from service import webhooks

    with _socket.socket() as s:  # a port nothing listens on, on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, attempts, error = webhooks.deliver(f"http://127.0.0.1:{port}/", "k" * 16, {}, attempts=1,
                                           allow_loopback=True)
    assert not ok and error == "delivery failed"  # not "ConnectError: [Errno 111] Connection refused"
    ok, _, error = webhooks.deliver(f"http://127.0.0.1:{port}/", "k" * 16, {}, attempts=1)
    assert not ok and error == "refused: private address"
