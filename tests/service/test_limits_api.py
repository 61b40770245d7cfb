"""Issue 23 through the API (embedded): memory budgets refused before the memory is spent, webhook
deliveries that never stall jobs, fair sharing of job threads between tenants, cancelling a running
job. Every wait is on an event or a state, never a guessed time."""
from __future__ import annotations

import asyncio
import gc
import gzip
import json
import socket
import threading
import weakref

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import auth
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import CODE, write_scan
from tests.service.test_api import PROBLEM, upload, wait_until
from tests.service.webhook_receiver import Receiver

SIXTY_THREE_KEEPS = "m = threshold(scan, 50)\n" + "".join(f"k{i} = keep(scan, m)\n" for i in range(63))


def make_api(tmp_path, **overrides):
    settings = Settings(data_dir=tmp_path / "data", broker_url=None, webhook_backoff_s=0.05,
                        webhook_allow_loopback=True, **overrides)
    app = create_app(settings)
    client = TestClient(app)
    client.__enter__()
    store = app.state.service.records
    client.h = {t: {"X-API-Key": auth.create_key(store, t)[0]} for t in ("acme", "other")}  # type: ignore[attr-defined]
    return client


@pytest.fixture
def api_factory(tmp_path):
    clients = []

    def make(**overrides):
        clients.append(make_api(tmp_path, **overrides))
        return clients[-1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def inflating_nifti(path, shape=(512, 512, 512), dtype=np.float64) -> None:
    """A valid NIfTI whose zeros compress ~1000:1: a gzip stream of several members (gzip allows it),
    the member of zeros compressed once and repeated, so writing it costs no gigabyte of work."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), 1)
    total = int(np.prod(shape)) * np.dtype(dtype).itemsize
    block = 64 * 1024 * 1024
    zeros = gzip.compress(b"\0" * block, compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(hdr.binaryblock + b"\0" * 4))
        for _ in range(total // block):
            fh.write(zeros)


def test_an_upload_that_inflates_past_its_budget_is_refused_from_the_header(api_factory, tmp_path):
    api = api_factory(max_upload_bytes=4 * 1024 * 1024)
    path = tmp_path / "big.nii.gz"
    inflating_nifti(path)
    assert path.stat().st_size < 1.5e6  # about 1 MB on disk, 1.07 GB of voxels
    r = upload(api, path)
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM), r.text
    problem = r.json()
    assert "512x512x512 float64" in problem["detail"] and "per upload" in problem["detail"]
    assert problem["decoded_bytes"] > problem["limit_bytes"] == api.app.state.service.settings.max_upload_decoded_bytes
    tenant_dir = tmp_path / "data" / "artifacts" / "acme"
    assert not any(tenant_dir.glob("vol_*")), list(tenant_dir.iterdir())  # nothing kept
    assert api.get("/v1/volumes", headers=api.h["acme"]).json() == []


def test_uploads_wait_for_the_shared_validation_budget_then_get_a_503(api_factory, scan_file):
    api = api_factory(upload_memory_wait_s=0)
    budget = api.app.state.service.upload_budget
    assert budget.try_acquire(budget.capacity)  # other uploads hold all of it
    try:
        r = upload(api, scan_file[0])
        assert r.status_code == 503 and r.headers["Retry-After"] and r.headers["content-type"].startswith(PROBLEM)
    finally:
        budget.release(budget.capacity)
    assert upload(api, scan_file[0]).status_code == 201  # and once it is free again, the same upload passes
    assert budget.used == 0


def _asgi_post(app, headers: list[tuple[bytes, bytes]], chunks):
    """Send one POST straight into the ASGI app; returns (status, body, chunks the app pulled)."""
    pulled = 0
    sent: list[dict] = []
    source = iter(chunks)

    async def receive():
        nonlocal pulled
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/analyses", "raw_path": b"/v1/analyses", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


def test_a_300_mb_json_body_is_refused_without_being_read(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "data", broker_url=None))
    chunk = b" " * 65536
    huge = 300 * 1024 * 1024
    status, body, pulled = _asgi_post(app, [(b"content-length", str(huge).encode())], iter(lambda: chunk, None))
    assert status == 413 and pulled == 0 and b"at most" in body  # by Content-Length: not one byte read
    # chunked (no length): counted as it arrives, refused at the limit, the rest never read
    status, body, pulled = _asgi_post(app, [], (chunk for _ in range(huge // len(chunk))))
    assert status == 413 and json.loads(body)["status"] == 413
    assert pulled <= Settings().max_json_body_bytes // len(chunk) + 2


def test_a_small_json_body_still_reaches_its_route(api_factory):
    api = api_factory()
    r = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": "vol_nope"}]}, headers=api.h["acme"])
    assert r.status_code == 422 and "not found" in r.text  # the route ran: the body was replayed whole


def test_a_job_past_its_memory_budget_fails_with_a_clear_error(api_factory, tmp_path):
    p = tmp_path / "s.nii.gz"
    arr, _ = write_scan(p)
    budget = 10 * arr.astype(np.float32).nbytes + arr.size
    api = api_factory(job_memory_bytes=budget)
    vid = upload(api, p).json()["id"]
    r = api.post("/v1/analyses", json={"code": SIXTY_THREE_KEEPS, "volumes": [{"id": vid}], "wait": 30},
                 headers=api.h["acme"])
    job = r.json()
    assert job["status"] == "failed", job
    assert "keep(): the analysis would hold" in job["error"] and "memory budget" in job["error"]


def test_a_finished_job_frees_its_sandbox_without_the_cyclic_gc(api_factory, scan_file, monkeypatch):
    from agent.sandbox.sandbox import Sandbox

    boxes: list[weakref.ref] = []
    original = Sandbox.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        boxes.append(weakref.ref(self))

    monkeypatch.setattr(Sandbox, "__init__", tracked)
    api = api_factory(workers=1)
    vid = upload(api, scan_file[0]).json()["id"]
    gc.collect()
    gc.disable()
    try:
        job = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 30},
                       headers=api.h["acme"]).json()
        assert job["status"] == "succeeded", job
        # with the cyclic gc off, only reference counting can free it: a cycle would keep it for good
        wait_until(lambda: boxes[0]() is None, bool, timeout_s=30)
    finally:
        gc.enable()


class Silent:
    """A loopback endpoint that accepts connections and never answers (a dead webhook receiver)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.connected = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.connected.set()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def _batch(api, tenant, path, url):
    vid = upload(api, path, tenant=tenant).json()["id"]
    r = api.post("/v1/batches", headers=api.h[tenant], json={
        "code": CODE, "webhook_url": url, "webhook_secret": "s3cret-s3cret-s3cret",
        "items": [{"volumes": [{"id": vid}]}]})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_a_dead_webhook_endpoint_of_one_tenant_stalls_no_other_tenant(api_factory, scan_file):
    # one job thread: had the delivery run on it, the other tenant's job could not even start
    api = api_factory(workers=1, webhook_timeout_s=300, webhook_attempts=1)
    dead, alive = Silent(), Receiver()
    try:
        a = _batch(api, "acme", scan_file[0], dead.url)
        assert dead.connected.wait(60), "tenant A's delivery never started"
        b = _batch(api, "other", scan_file[0], alive.url)
        assert alive.event.wait(60), "tenant B's webhook was not delivered while A's endpoint hangs"
        state_b = wait_until(lambda: api.get(f"/v1/batches/{b}", headers=api.h["other"]).json(),
                             lambda s: s["webhook"]["delivered"])
        assert state_b["counts"]["succeeded"] == 1
        state_a = api.get(f"/v1/batches/{a}", headers=api.h["acme"]).json()
        assert state_a["status"] == "completed" and not state_a["webhook"]["delivered"]  # still hanging
    finally:
        dead.close()
        alive.close()
    # the hang ends with the connection: A's record says so, with no socket detail
    state_a = wait_until(lambda: api.get(f"/v1/batches/{a}", headers=api.h["acme"]).json(),
                         lambda s: s["webhook"]["attempts"] == 1)
    assert state_a["webhook"]["last_error"] == "delivery failed"


def test_one_tenant_queueing_many_jobs_does_not_starve_another(api_factory, scan_file, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "closed").write_text("")
    api = api_factory(workers=1, test_gate_dir=gate)
    va = upload(api, scan_file[0], tenant="acme").json()["id"]
    vb = upload(api, scan_file[0], tenant="other").json()["id"]

    def submit(tenant, vid):
        r = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}]}, headers=api.h[tenant])
        assert r.status_code == 202, r.text
        return r.json()["id"]

    a_jobs = [submit("acme", va) for _ in range(4)]
    wait_until(lambda: (gate / f"started.{a_jobs[0]}.1").exists(), bool)  # A's first holds the one thread
    b_job = submit("other", vb)
    (gate / "closed").unlink()
    jobs = {j: wait_until(lambda j=j: api.get(f"/v1/analyses/{j}", headers=api.h[
        "other" if j == b_job else "acme"]).json(), lambda s: s["status"] == "succeeded") for j in [*a_jobs, b_job]}
    order = sorted(jobs, key=lambda j: jobs[j]["started_at"])
    assert order[0] == a_jobs[0] and order[1] == b_job, order  # B next, not after A's three others


def test_cancelling_a_running_job_frees_its_thread(api_factory, scan_file, monkeypatch):
    from agent.functions import default_registry
    from agent.functions.registry import Registry
    from agent.sandbox import sandbox as sandbox_module

    entered = threading.Event()

    def endless_fill_holes(ctx, mask):
        entered.set()
        while True:  # a computation that would never end, with the safe points library code has
            ctx.checkpoint()

    functions = [f if f.name != "fill_holes" else type(f)(f.name, f.params, f.returns, f.description,
                                                              endless_fill_holes)
                 for f in default_registry().values()]
    monkeypatch.setattr(sandbox_module, "default_registry", lambda: Registry(functions))
    api = api_factory(workers=1)
    vid = upload(api, scan_file[0]).json()["id"]
    stuck = api.post("/v1/analyses", json={"code": "m = fill_holes(threshold(scan, 50))", "volumes": [{"id": vid}]},
                     headers=api.h["acme"]).json()["id"]
    assert entered.wait(60)
    r = api.post(f"/v1/analyses/{stuck}/cancel", headers=api.h["acme"])
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # the one job thread is free again: the next job runs to its end
    nxt = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 30}, headers=api.h["acme"])
    assert nxt.json()["status"] == "succeeded", nxt.text
    assert api.get(f"/v1/analyses/{stuck}", headers=api.h["acme"]).json()["status"] == "cancelled"


def test_metrics_need_a_key_and_readyz_is_open_unless_the_settings_say_otherwise(api_factory):
    api = api_factory()
    assert api.get("/readyz").status_code == 200  # orchestrators probe without credentials
    r = api.get("/metrics")
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert api.get("/metrics", headers=api.h["acme"]).status_code == 200
    closed = api_factory(readyz_public=False, metrics_public=True)
    assert closed.get("/readyz").status_code == 401
    assert closed.get("/readyz", headers=closed.h["acme"]).status_code == 200
    assert closed.get("/metrics").status_code == 200


ERRORS = {"400", "401", "404", "413", "415", "422", "429", "503"}


def test_every_route_documents_its_errors_as_problem_json(api_factory):
    doc = api_factory().get("/openapi.json").json()
    assert "Problem" in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert ERRORS <= set(op["responses"]), (method, path)
            for status in ERRORS - ({"503"} if path == "/readyz" else set()):  # /readyz's 503 is its Health body
                content = op["responses"][status]["content"]
                assert set(content) == {"application/problem+json"}, (method, path, status, content)
                assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
