"""Records (jobs, volumes, batches, API keys, idempotency entries) behind one small interface.

Two implementations with identical behaviour: SQLite for the embedded default and Redis for
the distributed deployment, where API and workers on different hosts must see the same jobs.
Every record is a JSON document with at least ``id`` and ``tenant``; jobs also carry ``status``.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from api_schemas.jobs import ACTIVE_VALUES as ACTIVE_STATUSES
from service.storage.models import StoredRecord

R = TypeVar("R", bound=StoredRecord)
# A guard of `RecordStore.update`, evaluated on the stored document inside the update's transaction,
# so a check-then-write (a lease still held, an expiry passed) cannot race another writer.
Guard = Callable[[dict[str, Any]], bool]
# Kinds other than jobs whose records are found by status (`RecordStore.list_status`): the statuses
# indexed. SQLite has a status column for every kind; Redis keeps a set of ids per indexed status.
STATUS_INDEXED: dict[str, tuple[str, ...]] = {"webhook_delivery": ("pending",)}


def _plain(changes: dict[str, Any]) -> dict[str, Any]:
    """Enum members as their values, models as JSON: what a JSON document holds."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, Enum):
            value = value.value
        elif hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        out[key] = value
    return out


class RecordStore(ABC):
    @abstractmethod
    def put(self, kind: str, doc: dict[str, Any]) -> None: ...

    @abstractmethod
    def put_if_absent(self, kind: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Insert unless the id exists; returns the existing document if it does."""

    @abstractmethod
    def get(self, kind: str, record_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def update(self, kind: str, record_id: str, changes: dict[str, Any],
               only_if_status: tuple[str, ...] | None = None, only_if: Guard | None = None) -> dict[str, Any] | None:
        """Merge ``changes``; with ``only_if_status`` the update applies only from those statuses, and
        with ``only_if`` only when it returns True for the stored document.

        Returns the new document, or None when absent or a guard failed.
        """

    @abstractmethod
    def delete(self, kind: str, record_id: str) -> bool: ...

    @abstractmethod
    def list(self, kind: str, tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Newest first."""

    @abstractmethod
    def count_active(self, tenant: str | None = None) -> int:
        """Jobs queued or running (for backpressure and the queue-depth gauge)."""

    @abstractmethod
    def list_active(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Job documents queued or running, any tenant (for the reaper)."""

    @abstractmethod
    def list_status(self, kind: str, status: str, limit: int = 10_000) -> list[dict[str, Any]]:
        """Documents of ``kind`` in ``status``, any tenant, in no particular order (for Redis only the
        statuses of `STATUS_INDEXED` are found)."""

    @abstractmethod
    def ping(self) -> bool: ...

    def close(self) -> None:  # pragma: no cover  # noqa: B027 - optional hook: only stores with connections close
        pass

    # ---- typed records (service.storage.models): what the service reads and writes ----------------
    def put_record(self, record: StoredRecord) -> None:
        self.put(record.KIND, record.model_dump(mode="json"))

    def get_record(self, cls: type[R], record_id: str, tenant: str | None = None) -> R | None:
        """The record, or None; with ``tenant`` only if it belongs to that tenant."""
        doc = self.get(cls.KIND, record_id) if tenant is None else self.get_for(cls.KIND, record_id, tenant)
        return None if doc is None else cls.model_validate(doc)

    def update_record(self, cls: type[R], record_id: str, changes: dict[str, Any],
                      only_if_status: tuple[str, ...] | None = None, only_if: Guard | None = None) -> R | None:
        doc = self.update(cls.KIND, record_id, _plain(changes), only_if_status=only_if_status, only_if=only_if)
        return None if doc is None else cls.model_validate(doc)

    def list_records(self, cls: type[R], tenant: str | None = None, limit: int = 100, offset: int = 0) -> list[R]:
        return [cls.model_validate(d) for d in self.list(cls.KIND, tenant, limit, offset)]

    def get_for(self, kind: str, record_id: str, tenant: str) -> dict[str, Any] | None:
        """A record only if it belongs to ``tenant``: other tenants' records do not exist for them."""
        doc = self.get(kind, record_id)
        if doc is None or doc.get("tenant") != tenant:
            return None
        return doc


class SQLiteRecordStore(RecordStore):
    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, tenant TEXT,"
                " status TEXT, created REAL NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id))")
            self._db.execute("CREATE INDEX IF NOT EXISTS records_tenant ON records(kind, tenant, created)")
            self._db.execute("CREATE INDEX IF NOT EXISTS records_status ON records(kind, status)")

    def _row(self, kind: str, doc: dict[str, Any]) -> tuple:
        return (kind, doc["id"], doc.get("tenant"), doc.get("status"), doc.get("created_at_ts", time.time()),
                json.dumps(doc))

    def put(self, kind: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)", self._row(kind, doc))

    def put_if_absent(self, kind: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?,?)", self._row(kind, doc))
            if cur.rowcount == 1:
                return None
            row = self._db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (kind, doc["id"])).fetchone()
        return json.loads(row[0]) if row else None

    def get(self, kind: str, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (kind, record_id)).fetchone()
        return json.loads(row[0]) if row else None

    def update(self, kind, record_id, changes, only_if_status=None, only_if=None):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (kind, record_id)).fetchone()
                if row is None:
                    self._db.execute("ROLLBACK")
                    return None
                doc = json.loads(row[0])
                if (only_if_status is not None and doc.get("status") not in only_if_status) or \
                        (only_if is not None and not only_if(doc)):
                    self._db.execute("ROLLBACK")
                    return None
                doc.update(changes)
                self._db.execute("UPDATE records SET status=?, doc=? WHERE kind=? AND id=?",
                                 (doc.get("status"), json.dumps(doc), kind, record_id))
                self._db.execute("COMMIT")
                return doc
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def delete(self, kind: str, record_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM records WHERE kind=? AND id=?", (kind, record_id))
        return cur.rowcount == 1

    def list(self, kind, tenant=None, limit=100, offset=0):
        q, args = "SELECT doc FROM records WHERE kind=?", [kind]
        if tenant is not None:
            q += " AND tenant=?"
            args.append(tenant)
        q += " ORDER BY created DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count_active(self, tenant=None):
        q = "SELECT COUNT(*) FROM records WHERE kind='job' AND status IN (?,?)"
        args: list[Any] = list(ACTIVE_STATUSES)
        if tenant is not None:
            q += " AND tenant=?"
            args.append(tenant)
        with self._lock:
            return int(self._db.execute(q, args).fetchone()[0])

    def list_active(self, limit=10_000):
        with self._lock:
            rows = self._db.execute("SELECT doc FROM records WHERE kind='job' AND status IN (?,?) LIMIT ?",
                                    [*ACTIVE_STATUSES, limit]).fetchall()
        return [json.loads(r[0]) for r in rows]

    def list_status(self, kind, status, limit=10_000):
        with self._lock:
            rows = self._db.execute("SELECT doc FROM records WHERE kind=? AND status=? LIMIT ?",
                                    [kind, status, limit]).fetchall()
        return [json.loads(r[0]) for r in rows]

    def ping(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1").fetchone()[0] == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisRecordStore(RecordStore):
    """Documents at ``vx:<kind>:<id>``, a per-tenant sorted index, and sets of active job ids."""

    def __init__(self, url: str, prefix: str = "vx") -> None:
        import redis

        self._r = redis.Redis.from_url(url, decode_responses=True)
        self._p = prefix

    def _key(self, kind: str, record_id: str) -> str:
        return f"{self._p}:{kind}:{record_id}"

    def _index(self, kind: str, tenant: str | None) -> str:
        return f"{self._p}:idx:{kind}:{tenant if tenant is not None else '*all*'}"

    def _active(self, tenant: str | None) -> str:
        return f"{self._p}:active:{tenant if tenant is not None else '*all*'}"

    def _status(self, kind: str, status: str) -> str:
        return f"{self._p}:status:{kind}:{status}"

    def _write(self, pipe, kind: str, doc: dict[str, Any]) -> None:
        rid, tenant = doc["id"], doc.get("tenant")
        pipe.set(self._key(kind, rid), json.dumps(doc))
        score = doc.get("created_at_ts", time.time())
        pipe.zadd(self._index(kind, tenant), {rid: score}, nx=True)
        pipe.zadd(self._index(kind, None), {rid: score}, nx=True)
        if kind == "job":
            for key in (self._active(tenant), self._active(None)):
                if doc.get("status") in ACTIVE_STATUSES:
                    pipe.sadd(key, rid)
                else:
                    pipe.srem(key, rid)
        for status in STATUS_INDEXED.get(kind, ()):
            if doc.get("status") == status:
                pipe.sadd(self._status(kind, status), rid)
            else:
                pipe.srem(self._status(kind, status), rid)

    def put(self, kind, doc):
        pipe = self._r.pipeline()
        self._write(pipe, kind, doc)
        pipe.execute()

    def put_if_absent(self, kind, doc):
        import redis

        key = self._key(kind, doc["id"])
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    existing = pipe.get(key)
                    if existing is not None:
                        pipe.unwatch()
                        return json.loads(existing)
                    pipe.multi()
                    self._write(pipe, kind, doc)
                    pipe.execute()
                    return None
                except redis.WatchError:
                    continue

    def get(self, kind, record_id):
        raw = self._r.get(self._key(kind, record_id))
        return json.loads(raw) if raw else None

    def update(self, kind, record_id, changes, only_if_status=None, only_if=None):
        import redis

        key = self._key(kind, record_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    doc = json.loads(raw)
                    if (only_if_status is not None and doc.get("status") not in only_if_status) or \
                            (only_if is not None and not only_if(doc)):
                        pipe.unwatch()
                        return None
                    doc.update(changes)
                    pipe.multi()
                    self._write(pipe, kind, doc)
                    pipe.execute()
                    return doc
                except redis.WatchError:
                    continue

    def delete(self, kind, record_id):
        doc = self.get(kind, record_id)
        if doc is None:
            return False
        pipe = self._r.pipeline()
        pipe.delete(self._key(kind, record_id))
        pipe.zrem(self._index(kind, doc.get("tenant")), record_id)
        pipe.zrem(self._index(kind, None), record_id)
        pipe.srem(self._active(doc.get("tenant")), record_id)
        pipe.srem(self._active(None), record_id)
        for status in STATUS_INDEXED.get(kind, ()):
            pipe.srem(self._status(kind, status), record_id)
        pipe.execute()
        return True

    def list(self, kind, tenant=None, limit=100, offset=0):
        ids = self._r.zrevrange(self._index(kind, tenant), offset, offset + limit - 1)
        if not ids:
            return []
        raws = self._r.mget([self._key(kind, i) for i in ids])
        return [json.loads(r) for r in raws if r]

    def count_active(self, tenant=None):
        return int(self._r.scard(self._active(tenant)))

    def list_active(self, limit=10_000):
        ids = list(self._r.sscan_iter(self._active(None), count=500))[:limit]
        if not ids:
            return []
        raws = self._r.mget([self._key("job", i) for i in ids])
        return [d for d in (json.loads(r) for r in raws if r) if d.get("status") in ACTIVE_STATUSES]

    def list_status(self, kind, status, limit=10_000):
        if status not in STATUS_INDEXED.get(kind, ()):
            raise ValueError(f"status {status!r} of {kind!r} records is not indexed (STATUS_INDEXED)")
        ids = list(self._r.sscan_iter(self._status(kind, status), count=500))[:limit]
        if not ids:
            return []
        raws = self._r.mget([self._key(kind, i) for i in ids])
        return [d for d in (json.loads(r) for r in raws if r) if d.get("status") == status]

    def ping(self):
        return bool(self._r.ping())

    def close(self):
        self._r.close()


def open_record_store(settings) -> RecordStore:
    """Redis when a broker is configured (API and workers share it), SQLite otherwise."""
    if settings.broker_url:
        return RedisRecordStore(settings.broker_url)
    return SQLiteRecordStore(settings.sqlite_path)
