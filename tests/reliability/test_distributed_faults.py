"""Faults of the distributed deployment, on real processes: redis-server (AOF, fsync always),
two agent workers, one vision worker, `voxagent serve` with the broker; all on 127.0.0.1.

In order (one deployment, each test leaves it as the next one expects):
1. /readyz counts each queue's consumers and the processes holding its model;
2. an agent worker SIGKILLed mid-job: its job completes on the other worker, same result;
3. redis-server killed and restarted mid-batch (the running job meets the outage): 503 + Retry-After
   meanwhile, then every job of the batch done, the interrupted one on a second attempt;
4. with no agent worker left, /readyz says not ready and why.
"""
from __future__ import annotations

import gzip

import httpx
import nibabel as nib
import numpy as np
import pytest

from service.storage import JobRecord
from service.storage.records import RedisRecordStore
from tests.reliability import faults
from tests.service import procs
from tests.service.conftest import CODE, expected_ml, write_scan

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AGENTS = ["agent-a@localhost", "agent-b@localhost"]
VISION = "vision-v@localhost"


class Cluster:
    def __init__(self, tmp, redis: faults.Redis, env, gate: faults.Gate) -> None:
        self.tmp, self.redis, self.env, self.gate = tmp, redis, env, gate
        self.workers: dict[str, procs.Proc] = {}
        self.api: procs.Proc | None = None
        self.client: httpx.Client | None = None
        self.h: dict[str, str] = {}

    def logs(self) -> str:
        parts = [f"--- {n}\n{p.tail(2500)}" for n, p in self.workers.items()]
        if self.api is not None:
            parts.append(f"--- api\n{self.api.tail(2500)}")
        return "\n".join(parts)

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/v1/analyses/{job_id}", headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    def finish(self, job_id: str, timeout_s: float = 120) -> dict:
        return faults.wait_for(lambda: self.job(job_id), lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
                               timeout_s, f"job {job_id} finished", self.logs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    redis = faults.Redis(tmp)
    redis.start()
    gate = faults.Gate(tmp / "gate")
    env = procs.base_env(tmp / "data", VOXAGENT_BROKER_URL=redis.url, VOXAGENT_TEST_GATE_DIR=str(gate.dir),
                         **faults.FAST)
    c = Cluster(tmp, redis, env, gate)
    try:
        for name in AGENTS:
            c.workers[name] = faults.start_worker(env, tmp, "agent", name)
        c.workers[VISION] = faults.start_worker(env, tmp, "vision", VISION)
        procs.wait_workers(redis.url, [*AGENTS, VISION], list(c.workers.values()), timeout=180)
        c.api, base = faults.start_api(env, tmp, "api")
        c.h = {"X-API-Key": procs.make_key(env, "acme")}
        with httpx.Client(base_url=base, timeout=30) as client:
            c.client = client
            yield c
    finally:
        gate.open()
        for p in [*c.workers.values(), *([c.api] if c.api else [])]:
            p.stop()
        redis.stop()


def _upload(c: Cluster, path) -> str:
    with open(path, "rb") as fh:
        r = c.client.post("/v1/volumes", files={"file": (path.name, fh)}, headers=c.h)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _submit(c: Cluster, vid: str) -> str:
    r = c.client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}]}, headers=c.h)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _mask(c: Cluster, job: dict) -> tuple[np.ndarray, np.ndarray]:
    r = c.client.get(job["links"]["output:bright"], headers=c.h)
    assert r.status_code == 200, r.text
    raw = gzip.decompress(r.content) if r.content[:2] == b"\x1f\x8b" else r.content
    img = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(img.dataobj), img.affine


def _readyz(c: Cluster) -> tuple[int, dict]:
    r = c.client.get("/readyz")
    return r.status_code, r.json()


def _component(body: dict, name: str) -> dict:
    return next(x for x in body["components"] if x["name"] == name)


def test_readyz_counts_consumers_and_loaded_models_per_queue(cluster):
    status, body = faults.wait_for(lambda: _readyz(cluster), lambda sb: sb[0] == 200, 60, "ready", cluster.logs)
    agent, vision = _component(body, "queue:agent"), _component(body, "queue:vision")
    assert (agent["consumers"], agent["model_loaded"]) == (2, 2), agent
    assert (vision["consumers"], vision["model_loaded"]) == (1, 1), vision
    assert all(n in agent["detail"] for n in AGENTS) and body["reason"] is None


def test_worker_sigkilled_mid_job_completes_on_the_other_with_the_same_result(cluster, tmp_path):
    c = cluster
    p = tmp_path / "scan.nii.gz"
    arr, aff = write_scan(p, seed=1)
    vid = _upload(c, p)
    reference = c.finish(_submit(c, vid))  # the same question, no fault
    assert reference["status"] == "succeeded", reference

    c.gate.close()
    job_id = _submit(c, vid)
    first = c.gate.wait_started(job_id, 1, 60, c.logs)
    victim = first.split("/", 1)[0]
    assert victim in AGENTS and faults.owner_pid(first) == c.workers[victim].p.pid
    faults.sigkill(c.workers.pop(victim))  # mid-job: claimed, leased, waiting at the gate

    # lease 4 s without a heartbeat, then the reaper requeues it; the surviving worker takes it
    second = c.gate.wait_started(job_id, 2, 60, c.logs)
    survivor = second.split("/", 1)[0]
    assert survivor in AGENTS and survivor != victim
    record = RedisRecordStore(c.redis.url).get_record(JobRecord, job_id)
    assert record.status.value == "running" and record.attempt == 2 and record.lease.owner == second
    c.gate.open()
    job = c.finish(job_id)
    assert job["status"] == "succeeded", job
    assert job["result"]["metrics"] == reference["result"]["metrics"]
    assert job["result"]["metrics"][0]["value"] == pytest.approx(expected_ml(arr, aff), rel=1e-6)
    mask, mask_aff = _mask(c, job)
    ref_mask, ref_aff = _mask(c, reference)
    assert np.array_equal(mask, ref_mask) and np.array_equal(mask_aff, ref_aff)
    assert RedisRecordStore(c.redis.url).get_record(JobRecord, job_id).attempt == 2


def test_redis_restarted_mid_batch_every_job_completes(cluster, tmp_path):
    c = cluster
    scans = []
    for i in range(4):
        p = tmp_path / f"c{i}.nii.gz"
        scans.append((write_scan(p, seed=i), _upload(c, p)))
    c.gate.close()
    r = c.client.post("/v1/batches", headers=c.h, json={
        "code": CODE, "items": [{"volumes": [{"id": vid}], "label": f"c{i}"} for i, (_, vid) in enumerate(scans)]})
    assert r.status_code == 202, r.text
    batch = r.json()
    first = batch["job_ids"][0]
    runner = c.gate.wait_started(first, 1, 60, c.logs).split("/", 1)[0]  # one job running, the others queued

    c.redis.kill()
    during = c.client.get(f"/v1/analyses/{batch['job_ids'][0]}", headers=c.h)
    assert during.status_code == 503, during.text
    assert during.headers["content-type"].startswith("application/problem+json")
    assert int(during.headers["Retry-After"]) > 0
    submit = c.client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": scans[0][1]}]}, headers=c.h)
    assert submit.status_code == 503 and "Retry-After" in submit.headers, submit.text
    assert c.client.get("/readyz").status_code == 503
    # the running job goes on while Redis is down, meets the outage and is interrupted (no result written)
    c.gate.open()
    log = c.workers[runner].log
    faults.wait_for(lambda: "job interrupted by a job store or broker outage" in log.read_text(), bool, 60,
                    "the running job met the outage", c.logs)
    c.redis.start()  # same port, same AOF

    def progress():
        r = c.client.get(f"/v1/batches/{batch['id']}", headers=c.h)
        return r.json() if r.status_code == 200 else {"status": f"HTTP {r.status_code}"}

    done = faults.wait_for(progress, lambda b: b["status"] == "completed", 180, "batch completed", c.logs)
    assert done["counts"]["succeeded"] == 4, done
    assert RedisRecordStore(c.redis.url).get_record(JobRecord, first).attempt == 2  # requeued once, not lost
    for ((arr, aff), _), jid in zip(scans, batch["job_ids"]):
        job = c.job(jid)
        assert job["status"] == "succeeded" and job["result"]["metrics"][0]["value"] == pytest.approx(
            expected_ml(arr, aff), rel=1e-6), job


def test_readyz_is_not_ready_without_an_agent_consumer(cluster):
    c = cluster
    for name in [n for n in c.workers if n in AGENTS]:
        faults.sigkill(c.workers.pop(name))
    status, body = faults.wait_for(lambda: _readyz(c), lambda sb: sb[0] == 503, 30, "not ready", c.logs)
    agent = _component(body, "queue:agent")
    assert not agent["ok"] and agent["consumers"] == 0 and "queue:agent" in body["reason"]
    assert _component(body, "queue:vision")["ok"] and _component(body, "job_store")["ok"]
