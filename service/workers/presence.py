"""Worker presence in Redis: which processes consume which queues, with which models loaded.

Each worker process that executes tasks writes ``vx:presence:<node>:<pid>`` every ``heartbeat_s``
with an expiry of ``lease_s``, so a SIGKILLed worker disappears within ``lease_s`` with no one
cleaning up. ``/readyz`` reads these (one SCAN, no broadcast): unlike a Celery ping or
``inspect().active_queues()``, it answers at once and also tells whether the model is loaded in the
process that will run the task.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)
PREFIX = "vx:presence:"
# the model a consumer of each queue needs loaded before it can run that queue's tasks
QUEUE_MODELS = {"agent": "agent", "vision": "vision"}


@dataclass(frozen=True)
class Consumer:
    node: str
    pid: int
    queues: tuple[str, ...]
    loaded: tuple[str, ...]
    ts: float

    def ready_for(self, queue: str) -> bool:
        return queue in self.queues and QUEUE_MODELS.get(queue, queue) in self.loaded


@lru_cache(maxsize=4)
def _client(url: str):
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)


def consumers(url: str, limit: int = 1000) -> list[Consumer]:
    """Live worker processes (their presence key has not expired)."""
    r = _client(url)
    keys = []
    for key in r.scan_iter(match=f"{PREFIX}*", count=200):
        keys.append(key)
        if len(keys) >= limit:
            break
    if not keys:
        return []
    out = []
    for raw in r.mget(keys):
        if not raw:
            continue
        try:
            d = json.loads(raw)
            out.append(Consumer(node=str(d["node"]), pid=int(d["pid"]), queues=tuple(d.get("queues", [])),
                                loaded=tuple(d.get("loaded", [])), ts=float(d.get("ts", 0.0))))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda c: (c.node, c.pid))


class Presence:
    """Beats on a daemon thread until the process exits; the key is removed on a clean exit."""

    def __init__(self, url: str, node: str, queues: list[str], heartbeat_s: float, ttl_s: float) -> None:
        self.url, self.node, self.queues = url, node, list(queues)
        self.heartbeat_s, self.ttl_ms = heartbeat_s, max(1, int(ttl_s * 1000))
        self.key = f"{PREFIX}{node}:{os.getpid()}"
        self._stop = threading.Event()

    def beat(self) -> None:
        from service.tasks import resources

        doc = {"node": self.node, "pid": os.getpid(), "queues": self.queues, "loaded": resources.loaded(),
               "ts": round(time.time(), 3)}
        _client(self.url).set(self.key, json.dumps(doc), px=self.ttl_ms)

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - Redis away: try again at the next beat
                log.warning("worker presence not written: %s", exc)
            if self._stop.wait(self.heartbeat_s):
                return

    def start(self) -> "Presence":
        threading.Thread(target=self._loop, name="voxagent-presence", daemon=True).start()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            _client(self.url).delete(self.key)
        except Exception:  # noqa: BLE001 - the key expires by itself
            pass


_started: Presence | None = None


def start_for_worker(settings) -> Presence | None:
    """Once per worker process: its presence, under the node name `voxagent worker` set."""
    global _started
    if _started is None and settings.broker_url and settings.worker_queue_list:
        import socket

        node = settings.worker_name or f"{'-'.join(settings.worker_queue_list)}@{socket.gethostname()}"
        beat_s = min(settings.heartbeat_s, settings.lease_s / 2)  # at least two beats per expiry
        _started = Presence(settings.broker_url, node, settings.worker_queue_list, beat_s, settings.lease_s).start()
    return _started
