"""Durable webhook deliveries (service.delivery) against real stores, SQLite and redis-server: what a
gone process left pending is sent with its attempts honoured and the same delivery id, what had
spent its attempts is not sent again, and a live owner's deliveries are left alone."""
from __future__ import annotations

import json
import socket
import time

import pytest

from api_schemas.batches import BatchStatus
from service.delivery import KIND, OWNER_KIND, DeliveryQueue, delivery_id
from service.settings import Settings
from service.storage import BatchRecord
from service.storage.models import WebhookDeliveryRecord, WebhookRecord
from service.storage.records import RedisRecordStore, SQLiteRecordStore
from service.webhooks import ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, encode_payload, verify
from tests.service.webhook_receiver import Receiver

SECRET = "s3cret-s3cret-s3cret"


class Clock:
    """Epoch seconds that move only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def wait_until(fetch, done, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.02)
    raise AssertionError(f"not reached in {timeout_s} s: {value!r}")


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteRecordStore(tmp_path / "jobs.sqlite3")
    else:
        s = RedisRecordStore(request.getfixturevalue("redis_url"), prefix=f"t{time.time_ns()}")
    yield s
    s.close()


def _batch(store, batch_id: str, url: str, attempts: int = 0) -> None:
    store.put_record(BatchRecord(id=batch_id, tenant="acme", created_at_ts=time.time(), created_at="now",
                                 status=BatchStatus.completed, job_ids=[],
                                 webhook=WebhookRecord(url=url, attempts=attempts), webhook_secret=SECRET))


def _pending(store, batch_id: str, url: str, owner: str, attempts: int, due: float) -> WebhookDeliveryRecord:
    did = delivery_id(batch_id)
    rec = WebhookDeliveryRecord(id=did, tenant="acme", created_at_ts=due, created_at="now", batch_id=batch_id,
                                url=url, body=encode_payload({"batch_id": batch_id, "delivery_id": did}).decode(),
                                status="pending", attempts=attempts, due_ts=due, owner=owner)
    store.put_record(rec)
    return rec


@pytest.mark.integration
def test_pending_deliveries_of_gone_owners_are_taken_over_and_spent_ones_are_not(store, tmp_path):
    receiver = Receiver()
    clock = Clock()
    settings = Settings(data_dir=tmp_path / "data", broker_url=None, webhook_allow_loopback=True,
                        webhook_attempts=3, webhook_backoff_s=0.05, lease_s=30, heartbeat_s=10,
                        reaper_interval_s=3600)  # one sweep: the one at start-up
    host = socket.gethostname()
    dead_embedded = f"embedded/{host}/{2 ** 22 + 12345}/deadboot"  # a pid above pid_max: no such process
    lapsed_worker = "agent@elsewhere/other-host/7/b00t"  # no beat at all
    live_worker = "agent@alive/other-host/8/b00t"
    store.put(OWNER_KIND, {"id": live_worker, "created_at_ts": clock(), "expires_ts": clock() + 1000})
    store.put(OWNER_KIND, {"id": "agent@old/h/9/x", "created_at_ts": 0, "expires_ts": clock() - 1})
    for bid in ("bat_spent", "bat_resume", "bat_live", "bat_worker"):
        _batch(store, bid, receiver.url)
    _pending(store, "bat_spent", receiver.url, dead_embedded, attempts=3, due=clock())
    resume = _pending(store, "bat_resume", receiver.url, dead_embedded, attempts=1, due=clock() - 5)
    _pending(store, "bat_live", receiver.url, live_worker, attempts=1, due=clock() - 5)
    _pending(store, "bat_worker", receiver.url, lapsed_worker, attempts=2, due=clock() + 60)  # not due yet
    queue = DeliveryQueue(settings, store, clock=clock)
    try:
        assert queue.swept.wait(60)
        wait_until(lambda: store.get(KIND, resume.id)["status"], lambda s: s == "delivered")
        headers, body = receiver.deliveries[0]
        assert len(receiver.deliveries) == 1 and receiver.attempts == 1  # the one due now
        assert headers[DELIVERY_HEADER] == resume.id and headers[ATTEMPT_HEADER] == "2"
        assert body.decode() == resume.body
        assert verify(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert store.get(KIND, resume.id)["attempts"] == 2
        hook = store.get_record(BatchRecord, "bat_resume").webhook
        assert hook.delivered and hook.attempts == 2

        spent = store.get(KIND, delivery_id("bat_spent"))
        assert spent["status"] == "dead" and spent["attempts"] == 3
        assert store.get_record(BatchRecord, "bat_spent").webhook.delivered is False
        live = store.get(KIND, delivery_id("bat_live"))
        assert live["status"] == "pending" and live["owner"] == live_worker
        worker = store.get(KIND, delivery_id("bat_worker"))
        assert worker["owner"] == queue.owner.id and worker["attempts"] == 2  # taken, waits for its due time
        assert store.get(OWNER_KIND, "agent@old/h/9/x") is None  # lapsed owner records are removed

        clock.now += 61  # the taken-over retry is due: sent as attempt 3, the last one
        wait_until(lambda: store.get(KIND, delivery_id("bat_worker"))["status"], lambda s: s == "delivered")
        assert [h[ATTEMPT_HEADER] for h, _ in receiver.deliveries] == ["2", "3"]

        # a new delivery: recorded before enqueue returns, the id in the signed body too
        _batch(store, "bat_new", receiver.url)
        assert queue.enqueue("acme", "bat_new", receiver.url, SECRET, {"batch_id": "bat_new"})
        assert store.get(KIND, delivery_id("bat_new")) is not None
        wait_until(lambda: store.get(KIND, delivery_id("bat_new"))["status"], lambda s: s == "delivered")
        headers, body = receiver.deliveries[-1]
        assert json.loads(body) == {"batch_id": "bat_new", "delivery_id": "whd_bat_new"}
        assert headers[DELIVERY_HEADER] == "whd_bat_new" and headers[ATTEMPT_HEADER] == "1"
        assert "secret" not in json.dumps(store.get(KIND, delivery_id("bat_new"))).lower()
        assert [d["id"] for d in store.list_status(KIND, "pending")] == [delivery_id("bat_live")]
    finally:
        queue.close()
        receiver.close()
    assert store.get(OWNER_KIND, queue.owner.id) is None  # closed: peers need not wait for the beat to lapse
