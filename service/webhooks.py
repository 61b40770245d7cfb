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

import httpx

from service.observability import WEBHOOKS

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Voxagent-Signature"
TIMESTAMP_HEADER = "X-Voxagent-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300.0) -> bool:
    if abs(time.time() - float(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def deliver(url: str, secret: str, payload: dict, *, attempts: int = 5, backoff_s: float = 0.5,
            timeout_s: float = 5.0) -> tuple[bool, int, str | None]:
    """POST until a 2xx; returns (delivered, attempts made, last error)."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    last_error = None
    for attempt in range(1, attempts + 1):
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(secret, ts, body), "User-Agent": "voxagent-webhook/1"}
        try:
            resp = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
            if 200 <= resp.status_code < 300:
                WEBHOOKS.labels("delivered").inc()
                return True, attempt, None
            last_error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        WEBHOOKS.labels("retry").inc()
        log.info("webhook attempt %d to %s failed: %s", attempt, url, last_error)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    WEBHOOKS.labels("failed").inc()
    return False, attempts, last_error
