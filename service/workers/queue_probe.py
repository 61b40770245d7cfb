"""Which task ids wait in a Celery queue on the Redis broker (kombu's Redis transport, read only).

Kombu keeps a queue as Redis lists: ``<queue>`` and, per priority step, ``<queue>\\x06\\x16<n>``,
each entry a JSON message whose ``headers.id`` is the task id (our job id). A job recorded as
queued whose id is in none of them has lost its message (a Redis restart between BRPOP and the
unacked bookkeeping, a worker that reserved it and lost its connection, a crash while sending):
the reaper sends it again. Bounded: a queue longer than ``cap`` gives None (unknown), never a
slow scan.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache

log = logging.getLogger(__name__)
SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS


@lru_cache(maxsize=4)
def _client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def queue_keys(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{SEP}{p}" for p in PRIORITY_STEPS]


def waiting_task_ids(url: str, queue: str, cap: int = 10_000) -> set[str] | None:
    """Task ids of the messages waiting in ``queue``, or None if unknown (no Redis, too many)."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    try:
        r = _client(url)
        pipe = r.pipeline(transaction=False)
        for key in queue_keys(queue):
            pipe.lrange(key, 0, cap)
        lists = pipe.execute()
    except Exception as exc:  # noqa: BLE001 - unknown is a safe answer: the reaper then sends nothing
        log.warning("could not read queue %s: %s", queue, exc)
        return None
    if sum(len(x) for x in lists) > cap:
        return None
    ids: set[str] = set()
    for raw in (m for lst in lists for m in lst):
        try:
            tid = json.loads(raw).get("headers", {}).get("id")
        except (ValueError, AttributeError):
            continue
        if isinstance(tid, str):
            ids.add(tid)
    return ids
