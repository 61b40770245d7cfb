"""Signed webhook delivery: HMAC-SHA256 over ``<timestamp>.<body>``, retried with exponential backoff.

Receivers verify with :func:`verify` (or the same three lines in any language) and reject
timestamps too far from their clock to stop replays.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import httpx

from service.netguard import Destination, DestinationRefused, check_url
from service.observability import WEBHOOKS

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Voxagent-Signature"
TIMESTAMP_HEADER = "X-Voxagent-Timestamp"
# The same on every attempt of one delivery, also across restarts (also in the body as "delivery_id"):
# receivers deduplicate on it, since a delivery may arrive more than once (at-least-once).
DELIVERY_HEADER = "X-Voxagent-Delivery"
ATTEMPT_HEADER = "X-Voxagent-Delivery-Attempt"  # 1, 2, ... : each attempt number is sent at most once


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300.0) -> bool:
    if abs(time.time() - float(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _pinned_request(client: httpx.Client, url: str, dest: Destination, body: bytes,
                    headers: dict[str, str]) -> httpx.Request:
    """A request to the checked address itself (Host and TLS name kept), so the name cannot be
    rebound to a private address between the check and the connection."""
    target = httpx.URL(url)
    headers = {**headers, "Host": target.netloc.decode("ascii")}  # no userinfo: check_url refused it
    extensions = {"sni_hostname": dest.host} if dest.scheme == "https" else {}
    return client.build_request("POST", target.copy_with(host=dest.address), content=body, headers=headers,
                                extensions=extensions)


# One message for every failure after the destination was accepted: a timeout, a refused or reset
# connection and an HTTP error status would otherwise tell a caller which addresses and ports answer
# (a port scan through our network). The server log keeps the detail.
DELIVERY_FAILED = "delivery failed"


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    error: str | None = None
    final: bool = False  # no retry can help (the destination is refused)


def encode_payload(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def attempt(url: str, secret: str, body: bytes, *, timeout_s: float = 5.0, allow_loopback: bool = False,
            headers: dict[str, str] | None = None) -> Attempt:
    """One POST. The destination is checked again after DNS resolution: a private, loopback or
    link-local address is refused without a connection. ``error`` names no address, port or socket
    error, so it tells nothing about what listens where."""
    try:
        dest = check_url(url, allow_loopback=allow_loopback)
    except DestinationRefused as exc:
        WEBHOOKS.labels("refused").inc()
        log.warning("webhook refused before connecting: %s", exc)
        return Attempt(False, str(exc), final=True)
    ts = str(int(time.time()))
    headers = {**(headers or {}), "Content-Type": "application/json", TIMESTAMP_HEADER: ts,
               SIGNATURE_HEADER: sign(secret, ts, body), "User-Agent": "voxagent-webhook/1"}
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False) as client:
            resp = client.send(_pinned_request(client, url, dest, body, headers))
        if 200 <= resp.status_code < 300:
            WEBHOOKS.labels("delivered").inc()
            return Attempt(True)
        log.info("webhook attempt failed: HTTP %d", resp.status_code)
    except httpx.HTTPError as exc:
        log.info("webhook attempt failed: %s", type(exc).__name__)
    WEBHOOKS.labels("retry").inc()
    return Attempt(False, DELIVERY_FAILED)


def deliver(url: str, secret: str, payload: dict, *, attempts: int = 5, backoff_s: float = 0.5,
            timeout_s: float = 5.0, allow_loopback: bool = False) -> tuple[bool, int, str | None]:
    """POST until a 2xx, sleeping between attempts; returns (delivered, attempts made, last error).

    This blocks its thread for as long as the retries take: the service delivers through
    :class:`service.delivery.DeliveryQueue` instead, never on a job thread."""
    body = encode_payload(payload)
    last_error = None
    for n in range(1, attempts + 1):
        result = attempt(url, secret, body, timeout_s=timeout_s, allow_loopback=allow_loopback)
        if result.delivered:
            return True, n, None
        if result.final:
            return False, n, result.error
        last_error = result.error
        if n < attempts:
            time.sleep(backoff_s * 2 ** (n - 1))
    WEBHOOKS.labels("failed").inc()
    return False, attempts, last_error
