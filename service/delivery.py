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
``last_error``, delivered).

Durable (at least once): every delivery is also a ``webhook_delivery`` record in the job store
(SQLite or Redis), written before ``enqueue`` returns: url, the exact signed body, attempts spent,
the next due time and the owner (the process whose queue holds it); never the secret, which is
read from the batch record. An attempt is counted in the record before it is sent, so an attempt
number (``X-Voxagent-Delivery-Attempt``) is never sent twice; every attempt carries the same
delivery id (``X-Voxagent-Delivery`` and ``delivery_id`` in the body). Success marks the record
``delivered``, the last failure ``dead``. Each queue beats an owner record every ``heartbeat_s``
(lapsing after ``lease_s``) and sweeps pending records every ``reaper_interval_s``, at start-up at
once: a pending delivery whose owner is gone (its beat lapsed, or, embedded, its process is dead or
an earlier incarnation of this one) is taken over by a guarded update (one taker), with its
attempts and due time, within the tenant's pending budget (over it, a later sweep takes it); one
whose attempts are spent is marked dead, not sent again. So a restarted API (embedded) or a
surviving process (distributed: the API or another worker) sends what a stopped process left. A
receiver may see a delivery again (sent, then the process died before recording it): it
deduplicates on the delivery id.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.clock import now_iso
from service.settings import Settings
from service.storage import BatchRecord, RecordStore
from service.storage.models import WebhookDeliveryRecord
from service.tasks.lease import EMBEDDED_NODE, Owner, holder_gone
from service.webhooks import ATTEMPT_HEADER, DELIVERY_HEADER, Attempt, attempt, encode_payload

log = logging.getLogger(__name__)
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
OWNER_KIND = "webhook_owner"  # {id: owner id, expires_ts}: a queue's beat
KIND = WebhookDeliveryRecord.KIND


def delivery_id(batch_id: str) -> str:
    """Stable: a batch completes once, so it has one delivery, whichever process sends it."""
    return f"whd_{batch_id}"


@dataclass
class Delivery:
    id: str
    tenant: str
    batch_id: str
    url: str
    secret: str
    body: bytes
    attempts: int = 0
    due: float = 0.0
    stored: bool = True  # False: its record could not be written (store outage): memory only


class DeliveryQueue:
    def __init__(self, settings: Settings, records: RecordStore, *, clock: Callable[[], float] = time.time,
                 send: Callable[..., Attempt] = attempt, node: str = EMBEDDED_NODE, recover: bool = True) -> None:
        """``clock``: epoch seconds (due times are stored and outlive the process). ``recover``: beat
        and take over pending deliveries of gone processes (off only in tests of the queue alone)."""
        self.settings, self.records, self._clock, self._send = settings, records, clock, send
        self.owner = Owner.current(node)
        self._cond = threading.Condition()
        self._lines: OrderedDict[str, deque[Delivery]] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._closed = False
        self._stop = threading.Event()
        self.swept = threading.Event()  # set after each sweep (tests wait on it)
        self._threads = [threading.Thread(target=self._work, name=f"voxagent-webhook-{i}", daemon=True)
                         for i in range(max(1, settings.webhook_threads))]
        if recover:
            self._beat()  # before any record names this owner: a peer's sweep must not take it as gone
            self._threads.append(threading.Thread(target=self._maintain, name="voxagent-webhook-sweep",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------ producers

    def enqueue(self, tenant: str, batch_id: str, url: str, secret: str, payload: dict) -> bool:
        """Queue one delivery; False (and recorded as not delivered) when the tenant's budget is full."""
        did = delivery_id(batch_id)
        delivery = Delivery(did, tenant, batch_id, url, secret, encode_payload({**payload, "delivery_id": did}),
                            due=self._clock())
        with self._cond:
            waiting, closed = self._waiting(tenant), self._closed
            accepted = waiting < self.settings.webhook_tenant_pending
        if closed and accepted:  # shutting down: recorded pending, for the next process to send
            self._store_new(delivery, PENDING, None)
            return True
        if not accepted:
            log.warning("webhook of batch %s not queued: tenant %s has %d deliveries pending", batch_id, tenant,
                        waiting)
            result = Attempt(False, "not delivered: too many deliveries of this tenant pending")
            self._store_new(delivery, DEAD, result.error)
            self._record(delivery, result)
            return False
        if not self._store_new(delivery, PENDING, None):
            return True  # already recorded (and queued by whoever wrote it)
        with self._cond:
            self._lines.setdefault(tenant, deque()).append(delivery)
            self._cond.notify()
        return True

    def pending(self) -> int:
        with self._cond:
            return sum(len(line) for line in self._lines.values()) + sum(self._in_flight.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        try:  # peers take over what is left at their next sweep, without waiting for the beat to lapse
            self.records.delete(OWNER_KIND, self.owner.id)
        except Exception:  # noqa: BLE001 - the beat lapses by itself
            log.debug("owner record of %s not removed", self.owner.id, exc_info=True)

    def _waiting(self, tenant: str) -> int:
        return len(self._lines.get(tenant, ())) + self._in_flight.get(tenant, 0)

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
                # bounded: an injected clock may move without notifying
                self._cond.wait(timeout=min(1.0, max(0.0, min(dues) - now)) if dues else None)
            return None

    def _work(self) -> None:
        while (delivery := self._next()) is not None:
            number = delivery.attempts + 1
            if not self._claim_attempt(delivery, number):
                log.info("webhook %s dropped here: taken over or finished elsewhere", delivery.id)
                self._release(delivery, retry=False)
                continue
            result = Attempt(False, "delivery failed")
            try:
                result = self._send(delivery.url, delivery.secret, delivery.body,
                                    timeout_s=self.settings.webhook_timeout_s,
                                    allow_loopback=self.settings.webhook_allow_loopback,
                                    headers={DELIVERY_HEADER: delivery.id, ATTEMPT_HEADER: str(number)})
            except Exception:  # noqa: BLE001 - a defect in sending must not end the delivery thread
                log.exception("webhook attempt crashed")
            delivery.attempts = number
            retry = not result.delivered and not result.final and delivery.attempts < self.settings.webhook_attempts
            if retry:
                delivery.due = self._clock() + self.settings.webhook_backoff_s * 2 ** (delivery.attempts - 1)
            self._record(delivery, result)  # the batch first: a crash before the next write sends it again
            self._store_outcome(delivery, result, retry)
            self._release(delivery, retry)

    def _release(self, delivery: Delivery, retry: bool) -> None:
        with self._cond:
            left = self._in_flight.get(delivery.tenant, 1) - 1
            if left > 0:
                self._in_flight[delivery.tenant] = left
            else:
                self._in_flight.pop(delivery.tenant, None)
            if retry:
                self._lines.setdefault(delivery.tenant, deque()).append(delivery)
            self._cond.notify_all()

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

    # ------------------------------------------------------------ the delivery records

    def _mine(self, doc: dict[str, Any]) -> bool:
        return doc.get("status") == PENDING and doc.get("owner") == self.owner.id

    def _store_new(self, delivery: Delivery, status: str, error: str | None) -> bool:
        """Write the record of a new delivery; False when one exists already (nothing written)."""
        created, ts = now_iso(), self._clock()
        record = WebhookDeliveryRecord(id=delivery.id, tenant=delivery.tenant, created_at_ts=ts, created_at=created,
                                       batch_id=delivery.batch_id, url=delivery.url, body=delivery.body.decode(),
                                       status=status, due_ts=delivery.due, owner=self.owner.id, last_error=error,
                                       finished_at=None if status == PENDING else created)
        try:
            existing = self.records.put_if_absent(KIND, record.model_dump(mode="json"))
        except Exception:  # noqa: BLE001 - an outage: still sent from memory, only not durable
            log.warning("webhook %s not recorded: it is lost if this process stops first", delivery.id,
                        exc_info=True)
            delivery.stored = False
            return True
        if existing is not None:
            log.warning("webhook %s exists already (%s): not queued again", delivery.id, existing.get("status"))
            return False
        return True

    def _claim_attempt(self, delivery: Delivery, number: int) -> bool:
        """Count the attempt in the record before sending it (still ours and pending); a store that
        cannot answer does not stop the attempt (at least once)."""
        if not delivery.stored:
            return True
        try:
            doc = self.records.update(KIND, delivery.id, {"attempts": number},
                                      only_if=lambda d: self._mine(d) and int(d.get("attempts", 0)) == number - 1)
        except Exception:  # noqa: BLE001
            log.warning("attempt %d of webhook %s not recorded before sending", number, delivery.id, exc_info=True)
            return True
        return doc is not None

    def _store_outcome(self, delivery: Delivery, result: Attempt, retry: bool) -> None:
        if not delivery.stored:
            return
        changes: dict[str, Any] = {"attempts": delivery.attempts, "last_error": result.error}
        if retry:
            changes["due_ts"] = delivery.due
        else:
            changes.update(status=DELIVERED if result.delivered else DEAD, finished_at=now_iso())
        try:
            self.records.update(KIND, delivery.id, changes, only_if=self._mine)
        except Exception:  # noqa: BLE001 - a pending record left behind is sent again later: at least once
            log.warning("outcome of webhook %s not recorded", delivery.id, exc_info=True)

    # ------------------------------------------------------------ beat and take-over

    def _beat(self) -> None:
        now = self._clock()
        try:
            self.records.put(OWNER_KIND, {"id": self.owner.id, "created_at_ts": now,
                                          "expires_ts": now + self.settings.lease_s})
        except Exception:  # noqa: BLE001 - an outage: the next beat tries again
            log.warning("webhook queue beat not recorded", exc_info=True)

    def _maintain(self) -> None:
        beat_s = min(self.settings.heartbeat_s, self.settings.lease_s / 3)
        sweep_s = self.settings.reaper_interval_s
        next_sweep = 0.0  # at once: what a previous incarnation left is due now
        while True:
            now = time.monotonic()
            if now >= next_sweep:
                try:
                    self.sweep()
                except Exception:  # noqa: BLE001 - an outage or a defect: the next sweep tries again
                    log.warning("webhook sweep failed", exc_info=True)
                self.swept.set()
                next_sweep = now + sweep_s
            if self._stop.wait(min(beat_s, max(0.0, next_sweep - time.monotonic()))):
                return
            self._beat()

    def _gone(self, owner_id: str, now: float, seen: dict[str, bool]) -> bool:
        if owner_id == self.owner.id:
            return False
        if owner_id not in seen:
            beat = self.records.get(OWNER_KIND, owner_id)
            lapsed = beat is None or float(beat.get("expires_ts", 0.0)) <= now
            seen[owner_id] = lapsed or holder_gone({"owner": owner_id}, self.owner)
            if seen[owner_id] and beat is not None:
                self.records.delete(OWNER_KIND, owner_id)  # owner records do not pile up
        return seen[owner_id]

    def sweep(self) -> int:
        """Take over the pending deliveries of gone owners; returns how many were queued here."""
        now, seen, taken = self._clock(), {}, 0
        for doc in self.records.list_status(KIND, PENDING):
            old = str(doc.get("owner", ""))
            if self._closed or not self._gone(old, now, seen):
                continue

            def still(d: dict[str, Any], old: str = old) -> bool:
                return d.get("status") == PENDING and d.get("owner") == old

            rec = WebhookDeliveryRecord.model_validate(doc)
            if rec.attempts >= self.settings.webhook_attempts:
                self._give_up(rec, still, rec.last_error or "delivery failed")
                continue
            with self._cond:
                if self._waiting(rec.tenant) >= self.settings.webhook_tenant_pending:
                    continue  # over the tenant's budget here: left for a later sweep
            if self.records.update(KIND, rec.id, {"owner": self.owner.id}, only_if=still) is None:
                continue  # another process took it first, or it finished
            batch = self.records.get_record(BatchRecord, rec.batch_id)
            if batch is None or not batch.webhook_secret:
                self._give_up(rec, self._mine, "not delivered: the batch or its webhook secret is gone")
                continue
            delivery = Delivery(rec.id, rec.tenant, rec.batch_id, rec.url, batch.webhook_secret, rec.body.encode(),
                                attempts=rec.attempts, due=rec.due_ts)
            log.info("webhook %s taken over from %s after %d attempt(s)", rec.id, old, rec.attempts)
            with self._cond:
                self._lines.setdefault(rec.tenant, deque()).append(delivery)
                self._cond.notify()
            taken += 1
        for beat in self.records.list(OWNER_KIND, None, limit=1000):  # the beats of gone processes
            if beat.get("id") != self.owner.id and float(beat.get("expires_ts", 0.0)) <= now:
                self.records.delete(OWNER_KIND, str(beat["id"]))
        return taken

    def _give_up(self, rec: WebhookDeliveryRecord, guard: Callable[[dict[str, Any]], bool], error: str) -> None:
        done = self.records.update(KIND, rec.id, {"status": DEAD, "last_error": error, "finished_at": now_iso()},
                                   only_if=guard)
        if done is not None:
            log.info("webhook %s given up after %d attempt(s): %s", rec.id, rec.attempts, error)
            delivery = Delivery(rec.id, rec.tenant, rec.batch_id, rec.url, "", b"", attempts=rec.attempts)
            self._record(delivery, Attempt(False, error))


_process_queue: DeliveryQueue | None = None
_process_lock = threading.Lock()


def process_queue(settings: Settings, records: RecordStore, node: str = EMBEDDED_NODE) -> DeliveryQueue:
    """This process's queue, started on first use (workers; the API builds its own with its state)."""
    global _process_queue
    with _process_lock:
        if _process_queue is None:
            _process_queue = DeliveryQueue(settings, records, node=node)
        return _process_queue
