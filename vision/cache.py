"""A least-recently-used store of job encodings, bounded by the memory their tensors hold.

Encodings are large (skip features at every level) but cheap to recompute compared with a lost
job, so the cache keeps as many as fit under the cap and drops the least recently used first.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class EncodingNotCached(LookupError):
    """The encoding was released by its job or evicted under the memory cap: encode again."""


@dataclass
class CacheEntry:
    key: str
    job_id: str
    value: Any
    nbytes: int
    extra: dict[str, Any] = field(default_factory=dict)


class EncodingCache:
    """Thread-safe LRU keyed by handle key, with a byte budget and per-job release."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("the encoding cache needs a positive memory cap")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def put(self, entry: CacheEntry) -> None:
        """Insert, then evict least recently used entries until the total fits the cap.

        The new entry itself is never evicted on insertion: an encoding larger than the whole cap
        is kept alone (with a warning) so its job can still generate from it.
        """
        with self._lock:
            self._entries[entry.key] = entry
            self._entries.move_to_end(entry.key)
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                old_key, old = self._entries.popitem(last=False)
                total -= old.nbytes
                self.evictions += 1
                log.info("evicted encoding %s of job %s (%.1f MB) under the cache cap",
                         old_key, old.job_id, old.nbytes / 2**20)
            if entry.nbytes > self.max_bytes:
                log.warning("encoding %s (%.1f MB) exceeds the cache cap of %.1f MB",
                            entry.key, entry.nbytes / 2**20, self.max_bytes / 2**20)

    def get(self, key: str) -> CacheEntry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                raise EncodingNotCached(
                    f"encoding {key} is not cached (released by its job or evicted under the memory cap); "
                    "encode the scans again"
                )
            self._entries.move_to_end(key)
            return entry

    def release(self, job_id: str) -> int:
        """Drop every encoding of ``job_id``; returns how many were dropped."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e.job_id == job_id]
            for k in keys:
                del self._entries[k]
        return len(keys)
