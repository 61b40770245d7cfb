"""The Redis record store behaves like the SQLite one (against a real redis-server)."""
from __future__ import annotations

import time

import pytest

from service.storage.records import RedisRecordStore

pytestmark = pytest.mark.integration


def test_redis_store_matches_the_sqlite_semantics(redis_url):
    store = RedisRecordStore(redis_url, prefix=f"t{time.time_ns()}")
    for i, tenant in enumerate(["a", "a", "b"]):
        store.put("job", {"id": f"j{i}", "tenant": tenant, "status": "queued", "created_at_ts": time.time() + i})
    assert store.count_active("a") == 2 and store.count_active(None) == 3
    assert store.update("job", "j0", {"status": "running"}, only_if_status=("queued",))["status"] == "running"
    assert store.update("job", "j0", {"status": "x"}, only_if_status=("queued",)) is None
    store.update("job", "j0", {"status": "succeeded"})
    assert store.count_active("a") == 1 and store.count_active(None) == 2
    assert [d["id"] for d in store.list("job", "a")] == ["j1", "j0"]
    assert store.get_for("job", "j2", "a") is None and store.get_for("job", "j2", "b")["id"] == "j2"
    assert store.put_if_absent("idem", {"id": "k", "tenant": "a", "v": 1}) is None
    assert store.put_if_absent("idem", {"id": "k", "tenant": "a", "v": 2})["v"] == 1
    assert store.delete("job", "j1") and not store.delete("job", "j1")
    assert store.count_active("a") == 0 and store.ping()
