"""Group generate calls that arrive together into one batched forward pass.

Callers block on a future; one worker thread takes the first waiting request, keeps collecting
for a short window (a few ms), groups what it has by a compatibility key (same grids, so the skip
features stack along the batch axis) and runs each group once. A lone call pays only the window.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Request:
    group: Hashable  # requests with equal keys may share a forward pass
    payload: Any
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Run ``run_group(payloads) -> results`` over groups of compatible concurrent requests."""

    def __init__(
        self,
        run_group: Callable[[Sequence[Any]], Sequence[Any]],
        window_s: float = 0.003,
        max_batch: int = 8,
        name: str = "vision-batcher",
    ) -> None:
        self._run_group = run_group
        self.window_s = window_s
        self.max_batch = max_batch
        self._name = name
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # sizes of the forward passes run, for metrics and tests

    def submit(self, group: Hashable, payload: Any) -> Any:
        """Queue one request and wait for its result (exceptions are re-raised here)."""
        self._ensure_thread()
        request = Request(group, payload)
        self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
        self._thread = None

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _collect(self, first: Request) -> tuple[list[Request], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch * 4:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            groups: dict[Hashable, list[Request]] = {}
            for request in batch:
                groups.setdefault(request.group, []).append(request)
            for members in groups.values():
                for start in range(0, len(members), self.max_batch):
                    self._run(members[start : start + self.max_batch])
            if stop:
                return

    def _run(self, members: list[Request]) -> None:
        self.batch_sizes.append(len(members))
        try:
            results = self._run_group([m.payload for m in members])
        except BaseException as exc:  # noqa: BLE001 - every waiting caller must hear about it
            log.exception("batched generate failed")
            for m in members:
                m.future.set_exception(exc)
            return
        for m, result in zip(members, results):
            m.future.set_result(result)
