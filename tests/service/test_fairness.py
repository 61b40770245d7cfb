"""Fair sharing of workers between tenants: the embedded queue's order, the distributed cap."""
from __future__ import annotations

from api_schemas.jobs import JobStatus
from service.dispatch.fair import FairQueue
from service.storage import JobRecord
from service.storage.records import SQLiteRecordStore
from service.workers import fairness


def test_the_fair_queue_serves_the_tenant_with_fewest_running_first():
    q = FairQueue()
    for i in range(4):
        q.put("a", f"a{i}")
    assert q.get() == ("a", "a0")  # a lone tenant gets the worker
    q.put("b", "b0")
    q.put("c", "c0")
    assert q.get() == ("b", "b0")  # a runs one, b and c none: b (never served) before a's second
    assert q.get() == ("c", "c0")
    q.done("a", "a0")
    assert [q.get(), q.get()] == [("a", "a1"), ("a", "a2")]
    q.put("a", "a1")  # a resend of a job handed over already is ignored
    assert q.remove("a3") and not q.remove("a1") and q.ids() == {"a1", "a2", "b0", "c0"}
    q.close()
    assert q.get() is None


def _job(store, job_id, tenant, status):
    store.put_record(JobRecord(id=job_id, tenant=tenant, status=status, created_at="2026-01-01T00:00:00+00:00",
                               created_at_ts=1.0, code="x = 1"))


def test_a_tenant_at_its_cap_yields_only_while_another_tenant_waits(tmp_path):
    store = SQLiteRecordStore(tmp_path / "jobs.sqlite3")
    _job(store, "a1", "a", JobStatus.running)
    _job(store, "a2", "a", JobStatus.running)
    _job(store, "a3", "a", JobStatus.queued)
    assert not fairness.should_defer(store, "a3", cap=2)  # nobody else waits: a gets every worker
    _job(store, "b1", "b", JobStatus.queued)
    assert fairness.should_defer(store, "a3", cap=2)
    assert not fairness.should_defer(store, "b1", cap=2)  # b runs nothing yet
    assert not fairness.should_defer(store, "a3", cap=3)
    assert not fairness.should_defer(store, "a3", cap=0)  # off
    assert not fairness.should_defer(store, "a3", cap=2, deferrals=fairness.MAX_DEFERRALS)  # no endless wait
    sent = []
    fairness.defer(store, "a3", 4, lambda job_id, n: sent.append((job_id, n)), now=123.0)
    assert sent == [("a3", 5)] and store.get_record(JobRecord, "a3").dispatched_ts == 123.0
