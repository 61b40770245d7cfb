"""A prefork pool child SIGKILLed mid-job (the OOM killer's way): Celery's ``reject_on_worker_lost``
puts the message back at once, the redelivery finds the dead child's lease still holding and
leaves the job alone, and once the lease lapses the reaper sends it again: it completes in another
child, as attempt 2, with the result of an undisturbed run. Real processes, loopback only.
"""
from __future__ import annotations

import os
import signal

import httpx
import pytest

from service.storage import JobRecord
from service.storage.records import RedisRecordStore
from tests.reliability import faults
from tests.service import procs
from tests.service.conftest import CODE, write_scan

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODE = "agent-pool@localhost"


def test_pool_child_killed_mid_job_is_redelivered_and_completes(tmp_path):
    redis = faults.Redis(tmp_path)
    redis.start()
    gate = faults.Gate(tmp_path / "gate")
    env = procs.base_env(tmp_path / "data", VOXAGENT_BROKER_URL=redis.url, VOXAGENT_TEST_GATE_DIR=str(gate.dir),
                         **faults.FAST)
    started: list[procs.Proc] = []
    try:
        worker = procs.Proc([*procs.VOXAGENT, "worker", "--queues", "agent", "--name", NODE, "--concurrency", "2"],
                            env, tmp_path / "worker.log")
        started.append(worker)
        procs.wait_workers(redis.url, [NODE], [worker], timeout=180)
        api, base = faults.start_api(env, tmp_path, "api")
        started.append(api)
        h = {"X-API-Key": procs.make_key(env, "acme")}

        def logs() -> str:
            return "\n".join(f"--- {p.log.name}\n{p.tail(3000)}" for p in started)

        scan = tmp_path / "scan.nii.gz"
        write_scan(scan, seed=4)
        with httpx.Client(base_url=base, timeout=30) as client:
            vid = faults.upload_volume(client, scan, h)

            def run(wait: float = 0.0) -> dict:
                r = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": wait}, headers=h)
                assert r.status_code in (200, 202), r.text
                return r.json()

            reference = run(wait=30)
            assert reference["status"] == "succeeded", reference
            gate.close()
            job_id = run()["id"]
            owner = gate.wait_started(job_id, 1, 60, logs)
            child = faults.owner_pid(owner)
            assert child != worker.p.pid  # the job runs in a pool child, not in the worker's main process
            os.kill(child, signal.SIGKILL)
            second = gate.wait_started(job_id, 2, 60, logs)
            assert faults.owner_pid(second) != child and worker.alive()
            gate.open()
            job = faults.wait_for(lambda: client.get(f"/v1/analyses/{job_id}", headers=h).json(),
                                  lambda j: j["status"] in ("succeeded", "failed"), 60, "job finished", logs)
            assert job["status"] == "succeeded", job
            assert job["result"]["metrics"] == reference["result"]["metrics"]
            assert RedisRecordStore(redis.url).get_record(JobRecord, job_id).attempt == 2
            # Celery notices the dead child on its own schedule (a pool maintenance pass), which may come
            # after the reaper's redelivery has finished the job: wait for it rather than read the log once
            faults.wait_for(worker.log.read_text, lambda text: "WorkerLostError" in text, 60,
                            "Celery reported the lost pool child", logs)
    finally:
        gate.open()
        for p in reversed(started):
            p.stop()
        redis.stop()
