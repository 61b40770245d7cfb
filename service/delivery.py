"""Webhook deliveries off the job threads, with a budget per tenant.

Delivering in the job thread that finished a batch (5 attempts of up to 5 s, plus backoff) let one
tenant's dead endpoint hold a worker for half a minute per batch, and so stall every tenant's jobs.
Here the job thread only enqueues; a few delivery threads (``webhook_threads``) send, one attempt at
a time, and a failed attempt waits for its retry in the queue, not in a thread. Per tenant:

* at most ``webhook_tenant_in_flight`` attempts run at once, so a tenant whose endpoint never
  answers occupies that many delivery threads at most, and the others keep delivering;
* at most ``webhook_tenant_pending`` deliveries wait (queued or between retries); beyond that a new
  one is recorded as not delivered at once;
* each delivery gets ``webhook_attempts`` attempts, ``webhook_backoff_s`` x 2^k apart.

Free threads take the next due delivery of the tenant with the fewest attempts running (ties: the
one served longest ago). Each attempt's outcome is written to the batch record (attempts,
``last_error``, delivered). The queue lives in the process that finished the batch (the API in the
embedded deployment, an agent worker in the distributed one); deliveries still waiting when that
process stops are not retried (the record shows them undelivered).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from service.settings import Settings
from service.storage import BatchRecord, RecordStore
from service.webhooks import Attempt, attempt, encode_payload

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    tenant: str
    batch_id: str
    url: str
    secret: str
    body: bytes
    attempts: int = 0
    due: float = 0.0


class DeliveryQueue:
    def __init__(self, settings: Settings, records: RecordStore, *, clock: Callable[[], float] = time.monotonic,
                 send: Callable[..., Attempt] = attempt) -> None:
        self.settings, self.records, self._clock, self._send = settings, records, clock, send
        self._cond = threading.Condition()
        self._lines: OrderedDict[str, deque[Delivery]] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"voxagent-webhook-{i}", daemon=True)
                         for i in range(max(1, settings.webhook_threads))]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------ producers

    def enqueue(self, tenant: str, batch_id: str, url: str, secret: str, payload: dict) -> bool:
        """Queue one delivery; False (and recorded as not delivered) when the tenant's budget is full."""
        delivery = Delivery(tenant, batch_id, url, secret, encode_payload(payload), due=self._clock())
        with self._cond:
            waiting = len(self._lines.get(tenant, ())) + self._in_flight.get(tenant, 0)
            if waiting < self.settings.webhook_tenant_pending and not self._closed:
                self._lines.setdefault(tenant, deque()).append(delivery)
                self._cond.notify()
                return True
        log.warning("webhook of batch %s not queued: tenant %s has %d deliveries pending", batch_id, tenant, waiting)
        self._record(delivery, Attempt(False, "not delivered: too many deliveries of this tenant pending"))
        return False

    def pending(self) -> int:
        with self._cond:
            return sum(len(line) for line in self._lines.values()) + sum(self._in_flight.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------ delivery threads

    def _next(self) -> Delivery | None:
        """The next due delivery of a tenant under its in-flight cap, waiting for one; None when closed."""
        cap = self.settings.webhook_tenant_in_flight
        with self._cond:
            while not self._closed:
                now = self._clock()
                ready = [t for t, line in self._lines.items() if self._in_flight.get(t, 0) < cap
                         and any(d.due <= now for d in line)]
                if ready:
                    tenant = min(ready, key=lambda t: self._in_flight.get(t, 0))
                    line = self._lines.pop(tenant)
                    delivery = next(d for d in line if d.due <= now)
                    line.remove(delivery)
                    if line:
                        self._lines[tenant] = line  # to the back of the rotation
                    self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
                    return delivery
                dues = [d.due for t, line in self._lines.items() if self._in_flight.get(t, 0) < cap for d in line]
                self._cond.wait(timeout=max(0.0, min(dues) - now) if dues else None)
            return None

    def _work(self) -> None:
        while (delivery := self._next()) is not None:
            result = Attempt(False, "delivery failed")
            try:
                result = self._send(delivery.url, delivery.secret, delivery.body,
                                    timeout_s=self.settings.webhook_timeout_s,
                                    allow_loopback=self.settings.webhook_allow_loopback)
            except Exception:  # noqa: BLE001 - a defect in sending must not end the delivery thread
                log.exception("webhook attempt crashed")
            delivery.attempts += 1
            retry = not result.delivered and not result.final and delivery.attempts < self.settings.webhook_attempts
            with self._cond:
                left = self._in_flight.get(delivery.tenant, 1) - 1
                if left > 0:
                    self._in_flight[delivery.tenant] = left
                else:
                    self._in_flight.pop(delivery.tenant, None)
                if retry:
                    delivery.due = self._clock() + self.settings.webhook_backoff_s * 2 ** (delivery.attempts - 1)
                    self._lines.setdefault(delivery.tenant, deque()).append(delivery)
                self._cond.notify_all()
            self._record(delivery, result)

    def _record(self, delivery: Delivery, result: Attempt) -> None:
        try:
            batch = self.records.get_record(BatchRecord, delivery.batch_id)
            if batch is None or batch.webhook is None:
                return
            hook = batch.webhook.model_copy(update={"delivered": result.delivered, "attempts": delivery.attempts,
                                                    "last_error": result.error})
            self.records.update_record(BatchRecord, delivery.batch_id, {"webhook": hook})
        except Exception:  # noqa: BLE001 - the delivery itself happened or not; the record is a courtesy
            log.warning("webhook state of batch %s not recorded", delivery.batch_id, exc_info=True)
        log.info("batch %s webhook delivered=%s after %d attempt(s)", delivery.batch_id, result.delivered,
                 delivery.attempts)


_process_queue: DeliveryQueue | None = None
_process_lock = threading.Lock()


def process_queue(settings: Settings, records: RecordStore) -> DeliveryQueue:
    """This process's queue, started on first use (workers; the API builds its own with its state)."""
    global _process_queue
    with _process_lock:
        if _process_queue is None:
            _process_queue = DeliveryQueue(settings, records)
        return _process_queue
