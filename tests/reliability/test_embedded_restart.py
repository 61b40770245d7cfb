"""The embedded `voxagent serve` (thread pool, SQLite) killed with SIGKILL and started again on the
same data directory: its queued and running jobs run again, they stop holding tenant slots once
done, and what had finished before is served unchanged. Real processes, loopback only.
"""
from __future__ import annotations

import re

import httpx
import pytest

from service.storage import JobRecord
from service.storage.records import SQLiteRecordStore
from tests.reliability import faults
from tests.service import procs
from tests.service.conftest import CODE, write_scan

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLOTS = 3


def test_embedded_restart_requeues_running_and_queued_jobs_and_keeps_results(tmp_path):
    gate = faults.Gate(tmp_path / "gate")
    env = procs.base_env(tmp_path / "data", VOXAGENT_WORKERS="1", VOXAGENT_TENANT_CONCURRENCY=str(SLOTS),
                         VOXAGENT_TEST_GATE_DIR=str(gate.dir), **faults.FAST)
    started: list[procs.Proc] = []
    try:
        api, base = faults.start_api(env, tmp_path, "api-1")
        started.append(api)
        h = {"X-API-Key": procs.make_key(env, "acme")}
        scan = tmp_path / "scan.nii.gz"
        write_scan(scan, seed=2)

        def logs() -> str:
            return "\n".join(f"--- {p.log.name}\n{p.tail(3000)}" for p in started)

        with httpx.Client(base_url=base, timeout=30) as client:
            vid = faults.upload_volume(client, scan, h)

            def submit() -> httpx.Response:
                return client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}]}, headers=h)

            done0 = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 30},
                                headers=h).json()
            assert done0["status"] == "succeeded", done0
            mask0 = client.get(done0["links"]["output:bright"], headers=h).content
            gate.close()
            running, queued = submit().json()["id"], submit().json()["id"]
            gate.wait_started(running, 1, 60, logs)
            assert client.get(f"/v1/analyses/{queued}", headers=h).json()["status"] == "queued"  # one thread
        faults.sigkill(api)  # a crash: no shutdown hook runs

        api2, base2 = faults.start_api(env, tmp_path, "api-2", warm=True)
        started.append(api2)
        with httpx.Client(base_url=base2, timeout=30) as client:
            def job(jid: str) -> dict:
                return client.get(f"/v1/analyses/{jid}", headers=h).json()

            # at start-up: the running job of the dead process is started again at once, as attempt 2
            second = gate.wait_started(running, 2, 30, logs)
            assert faults.owner_pid(second) == api2.p.pid
            assert job(queued)["status"] == "queued"
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert next(c for c in ready.json()["components"] if c["name"] == "models")["detail"].endswith("loaded")
            # what finished before the crash is intact and served
            again = job(done0["id"])
            assert again["status"] == "succeeded" and again["result"] == done0["result"]
            assert client.get(done0["links"]["output:bright"], headers=h).content == mask0

            gate.open()
            for jid in (running, queued):
                final = faults.wait_for(lambda jid=jid: job(jid), lambda j: j["status"] == "succeeded", 60,
                                        f"job {jid} succeeded", logs)
                assert final["result"]["metrics"] == done0["result"]["metrics"]
            store = SQLiteRecordStore(tmp_path / "data" / "jobs.sqlite3")
            try:
                assert store.get_record(JobRecord, running).attempt == 2
                assert store.get_record(JobRecord, queued).attempt == 1
            finally:
                store.close()

            # no slot is held by the jobs of the dead process: all SLOTS are free again, and no more
            depth = re.search(r"^voxagent_queue_depth (\S+)$", client.get("/metrics", headers=h).text, re.M)
            assert depth and float(depth.group(1)) == 0.0
            gate.close()
            codes = [submit().status_code for _ in range(SLOTS + 1)]
            assert codes == [202] * SLOTS + [429], codes
            gate.open()
    finally:
        gate.open()
        for p in reversed(started):
            p.stop()
