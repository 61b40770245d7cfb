"""Batch webhooks survive a restart of the embedded `voxagent serve` (SIGTERM and SIGKILL): a batch
finishes while its receiver is down (it accepts and never answers), the API stops, the receiver
comes back on the same address, a new API on the same data directory sends the delivery with the
same delivery id and the next attempt number, and the batch shows it delivered. A delivery whose
attempts were spent before the restart is not sent after it. Real processes, loopback only.
"""
from __future__ import annotations

import signal
import socket
import threading

import httpx
import pytest

from service.delivery import KIND, delivery_id
from service.storage.records import SQLiteRecordStore
from service.webhooks import ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.reliability import faults
from tests.service import procs
from tests.service.conftest import CODE, write_scan
from tests.service.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECRET = "s3cret-s3cret-s3cret"


class Silent:
    """Accepts connections on a port and never answers: a receiver that is down."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        for c in self.conns:
            c.close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: the port is free after this
        except OSError:
            pass
        self.sock.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_pending_webhook_is_delivered_after_an_api_restart_and_a_spent_one_is_not(tmp_path, sig):
    # 3 attempts; an attempt waits up to 300 s for an answer: the down receiver holds it in flight
    env = procs.base_env(tmp_path / "data", VOXAGENT_WORKERS="1", VOXAGENT_WEBHOOK_ALLOW_LOOPBACK="true",
                         VOXAGENT_WEBHOOK_ATTEMPTS="3", VOXAGENT_WEBHOOK_TIMEOUT_S="300",
                         VOXAGENT_WEBHOOK_TENANT_IN_FLIGHT="2", **faults.FAST)
    store = SQLiteRecordStore(tmp_path / "data" / "jobs.sqlite3")
    started: list[procs.Proc] = []
    refused_port, down_port = procs.free_port(), procs.free_port()
    silent = Silent(down_port)
    receivers: list[Receiver] = []

    def logs() -> str:
        return "\n".join(f"--- {p.log.name}\n{p.tail(3000)}" for p in started)

    def record(batch_id: str) -> dict:
        return store.get(KIND, delivery_id(batch_id)) or {}

    try:
        api, base = faults.start_api(env, tmp_path, "api-1")
        started.append(api)
        h = {"X-API-Key": procs.make_key(env, "acme")}
        scan = tmp_path / "scan.nii.gz"
        write_scan(scan, seed=1)
        with httpx.Client(base_url=base, timeout=30) as client:
            vid = faults.upload_volume(client, scan, h)

            def batch(url: str) -> str:
                r = client.post("/v1/batches", headers=h, json={"code": CODE, "webhook_url": url,
                                                                "webhook_secret": SECRET,
                                                                "items": [{"volumes": [{"id": vid}]}]})
                assert r.status_code == 202, r.text
                return r.json()["id"]

            # nothing listens: refused three times, given up before the restart
            spent = batch(f"http://127.0.0.1:{refused_port}/hook")
            faults.wait_for(lambda: record(spent), lambda d: d.get("status") == "dead", 60, "spent webhook dead",
                            logs)
            # the receiver is down: attempt 1 is in flight when the API stops
            pending = batch(f"http://127.0.0.1:{down_port}/hook")
            faults.wait_for(lambda: record(pending), lambda d: d.get("attempts") == 1, 60,
                            "first attempt started", logs)
            assert client.get(f"/v1/batches/{pending}", headers=h).json()["status"] == "completed"
        if sig == signal.SIGKILL:
            faults.sigkill(api)  # a crash: no shutdown hook runs
        else:
            api.stop()  # SIGTERM: the lifespan's shutdown runs
        assert record(pending)["status"] == "pending"

        silent.close()  # the receiver comes back, on both addresses
        receiver, never = Receiver(port=down_port), Receiver(port=refused_port)
        receivers += [receiver, never]
        api2, base2 = faults.start_api(env, tmp_path, "api-2")
        started.append(api2)
        with httpx.Client(base_url=base2, timeout=30) as client:
            state = faults.wait_for(lambda: client.get(f"/v1/batches/{pending}", headers=h).json(),
                                    lambda b: b["webhook"]["delivered"], 60, "delivered after the restart", logs)
            assert state["webhook"]["attempts"] == 2
            done = faults.wait_for(lambda: record(pending), lambda d: d.get("status") == "delivered", 60,
                                   "delivery record delivered", logs)
            assert done["attempts"] == 2 and done["owner"] != record(spent)["owner"]
            assert len(receiver.deliveries) == 1, receiver.deliveries
            headers, body = receiver.deliveries[0]
            assert headers[DELIVERY_HEADER] == delivery_id(pending) and headers[ATTEMPT_HEADER] == "2"
            assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
            assert body.decode() == done["body"]  # the body stored before the restart, byte for byte

            # the spent one was not taken up again: still dead, never sent to the receiver now listening
            assert record(spent)["status"] == "dead" and record(spent)["attempts"] == 3
            assert never.attempts == 0
            hook = client.get(f"/v1/batches/{spent}", headers=h).json()["webhook"]
            assert hook["delivered"] is False and hook["attempts"] == 3
    finally:
        silent.close()
        for r in receivers:
            r.close()
        for p in reversed(started):
            p.stop()
        store.close()
