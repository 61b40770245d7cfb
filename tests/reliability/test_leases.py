"""Job leases and the reaper on a real SQLite store with a hand-moved clock (no processes, no sleeps).

The process-level tests next to this one show the same rules holding across SIGKILLed workers,
a restarted redis-server and a restarted API; these pin each rule down on its own.
"""
from __future__ import annotations

import os
import time

import pytest

from api_schemas.batches import BatchStatus
from api_schemas.jobs import JobStatus
from service.reaper import Reaper
from service.settings import Settings
from service.storage import ArtifactStore, BatchRecord, JobRecord
from service.storage.records import SQLiteRecordStore
from service.tasks import lease
from service.tasks.context import TaskContext

POLICY = lease.LeasePolicy(lease_s=10.0, heartbeat_s=2.0, max_attempts=2)
A = lease.Owner(node="agent-a@h", host="h", pid=101, boot="aaaa")
B = lease.Owner(node="agent-b@h", host="h", pid=102, boot="bbbb")


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


class FakeDispatcher:
    """Records what the reaper sends; ``waiting`` plays the broker's queue."""

    mode = "distributed"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.waiting: set[str] = set()

    def in_flight(self):
        return set(self.waiting)

    def submit(self, job_id: str) -> None:
        self.sent.append(job_id)


@pytest.fixture
def store(tmp_path):
    s = SQLiteRecordStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def _job(store, job_id="job_1", batch_id=None, created=1_000_000.0):
    store.put_record(JobRecord(id=job_id, tenant="t", status=JobStatus.queued, created_at="2026-01-01T00:00:00+00:00",
                               created_at_ts=created, code="x = 1", batch_id=batch_id))


def _reaper(store, tmp_path, clock, dispatcher, me=None):
    settings = Settings(data_dir=tmp_path / "data", broker_url=None)
    ctx = TaskContext(settings, store, ArtifactStore(tmp_path / "art"), lambda job_id: None, clock=clock)
    return Reaper(ctx, dispatcher, POLICY, interval_s=1.0, clock=clock, me=me or lease.Owner.current())


def test_one_claim_wins_and_a_live_lease_is_not_taken(store):
    clock = FakeClock()
    _job(store)
    first = lease.claim(store, "job_1", A, POLICY, clock)
    assert first.job is not None and first.job.attempt == 1 and first.job.lease.owner == A.id
    assert first.job.lease.expires_ts == clock.t + POLICY.lease_s
    clock.t += POLICY.lease_s - 0.001  # a redelivery just inside the lease: the holder may be alive
    second = lease.claim(store, "job_1", B, POLICY, clock)
    assert second.job is None and second.decision.action == lease.Action.skip
    assert store.get_record(JobRecord, "job_1").lease.owner == A.id


def test_a_heartbeat_keeps_the_lease_and_a_lapsed_lease_is_taken_over(store):
    clock = FakeClock()
    _job(store)
    lease.claim(store, "job_1", A, POLICY, clock)
    hb_a = lease.Heartbeat(store, "job_1", A, POLICY, clock)
    for _ in range(5):  # 5 x 8 s: far past one lease, renewed each time
        clock.t += 8.0
        assert hb_a.beat()
        assert lease.claim(store, "job_1", B, POLICY, clock).job is None
    clock.t += POLICY.lease_s  # A stops beating (SIGKILL): the lease lapses
    taken = lease.claim(store, "job_1", B, POLICY, clock)
    assert taken.decision.action == lease.Action.take_over and "no heartbeat from" in taken.decision.reason
    assert taken.job.attempt == 2 and taken.job.lease.owner == B.id
    # A comes back: its heartbeat and its result write both find the lease gone
    assert not hb_a.beat() and hb_a.lost.is_set()
    assert store.update_record(JobRecord, "job_1", {"status": JobStatus.succeeded}, only_if=lease.held_by(A)) is None
    assert store.update_record(JobRecord, "job_1", {"status": JobStatus.succeeded},
                               only_if=lease.held_by(B)).status == JobStatus.succeeded


def test_spent_attempts_fail_the_job_with_the_reason(store):
    clock = FakeClock()
    _job(store)
    lease.claim(store, "job_1", A, POLICY, clock)
    clock.t += POLICY.lease_s
    lease.claim(store, "job_1", B, POLICY, clock)  # attempt 2 of 2
    clock.t += POLICY.lease_s
    out = lease.claim(store, "job_1", A, POLICY, clock)
    assert out.job is None and out.decision.action == lease.Action.fail
    job = store.get_record(JobRecord, "job_1")
    assert job.status == JobStatus.failed and "worker lost" in job.error and "2 attempt(s)" in job.error
    assert job.lease.owner == B.id  # names the worker that was lost


def test_reaper_requeues_a_lost_job_then_fails_it_and_completes_its_batch(store, tmp_path):
    clock, disp = FakeClock(), FakeDispatcher()
    _job(store, batch_id="bat_1")
    store.put_record(BatchRecord(id="bat_1", tenant="t", status=BatchStatus.running, created_at="x",
                                 created_at_ts=clock.t, job_ids=["job_1"]))
    reaper = _reaper(store, tmp_path, clock, disp)
    disp.waiting.add("job_1")
    assert not reaper.sweep()  # queued with its message waiting: left alone
    lease.claim(store, "job_1", A, POLICY, clock)
    disp.waiting.clear()
    clock.t += POLICY.lease_s - 1
    assert not reaper.sweep()  # lease still holds
    clock.t += 1
    report = reaper.sweep()
    assert report.requeued == ["job_1"] and disp.sent == ["job_1"]
    job = store.get_record(JobRecord, "job_1")
    assert job.status == JobStatus.queued and job.lease is None and job.attempt == 1
    lease.claim(store, "job_1", B, POLICY, clock)  # attempt 2, then B is lost too
    clock.t += POLICY.lease_s
    report = reaper.sweep()
    assert report.failed == ["job_1"] and disp.sent == ["job_1"]
    assert store.get_record(JobRecord, "job_1").status == JobStatus.failed
    batch = store.get_record(BatchRecord, "bat_1")
    assert batch.status == BatchStatus.completed and batch.counts["failed"] == 1


def test_reaper_sends_again_a_queued_job_whose_message_vanished(store, tmp_path):
    clock, disp = FakeClock(), FakeDispatcher()
    _job(store, created=clock.t)
    reaper = _reaper(store, tmp_path, clock, disp)
    clock.t += POLICY.lease_s - 1
    assert not reaper.sweep() and disp.sent == []  # just sent: a worker may be taking it now
    clock.t += 1
    assert reaper.sweep().resent == ["job_1"] and disp.sent == ["job_1"]
    assert not reaper.sweep() and disp.sent == ["job_1"]  # not again until another lease passes
    disp.waiting.add("job_1")
    clock.t += 2 * POLICY.lease_s
    assert not reaper.sweep()  # the message is back in the queue
    disp.in_flight = lambda: None  # unknown queue contents: nothing is sent for queued jobs
    disp.waiting.clear()
    assert not reaper.sweep() and disp.sent == ["job_1"]


def test_a_batch_whose_last_bookkeeping_was_missed_is_completed(store, tmp_path):
    clock, disp = FakeClock(), FakeDispatcher()
    _job(store, batch_id="bat_2")
    store.update_record(JobRecord, "job_1", {"status": JobStatus.succeeded})
    store.put_record(BatchRecord(id="bat_2", tenant="t", status=BatchStatus.running, created_at="x",
                                 created_at_ts=clock.t, job_ids=["job_1"]))
    assert _reaper(store, tmp_path, clock, disp).sweep().batches == ["bat_2"]
    assert store.get_record(BatchRecord, "bat_2").counts["succeeded"] == 1


def test_an_embedded_job_of_a_dead_or_earlier_process_is_orphaned_at_once(store):
    me = lease.Owner.current()
    earlier = lease.Owner(node=lease.EMBEDDED_NODE, host=me.host, pid=me.pid, boot="0ld0")
    dead_pid = max(os.getpid(), 2) + 1
    while True:  # a pid with no process
        try:
            os.kill(dead_pid, 0)
            dead_pid += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead_pid += 1
    dead = lease.Owner(node=lease.EMBEDDED_NODE, host=me.host, pid=dead_pid, boot="dead")
    alive_other = lease.Owner(node=lease.EMBEDDED_NODE, host=me.host, pid=1, boot="init")
    celery_dead = lease.Owner(node="agent@h", host=me.host, pid=dead_pid, boot="cccc")
    now = time.time()
    for owner, gone in ((earlier, True), (dead, True), (me, False), (alive_other, False), (celery_dead, False)):
        doc = {"status": "running", "attempt": 1, "lease": lease.new_lease(owner, now, POLICY).model_dump()}
        assert (lease.lapsed(doc, now, POLICY, me) is not None) is gone, owner
