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

from service.netguard import Destination, DestinationRefused, check_url
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


def _pinned_request(client: httpx.Client, url: str, dest: Destination, body: bytes,
                    headers: dict[str, str]) -> httpx.Request:
    """A request to the checked address itself (Host and TLS name kept), so the name cannot be
    rebound to a private address between the check and the connection."""
    target = httpx.URL(url)
    headers = {**headers, "Host": target.netloc.decode("ascii")}  # no userinfo: check_url refused it
    extensions = {"sni_hostname": dest.host} if dest.scheme == "https" else {}
    return client.build_request("POST", target.copy_with(host=dest.address), content=body, headers=headers,
                                extensions=extensions)


def deliver(url: str, secret: str, payload: dict, *, attempts: int = 5, backoff_s: float = 0.5,
            timeout_s: float = 5.0, allow_loopback: bool = False) -> tuple[bool, int, str | None]:
    """POST until a 2xx; returns (delivered, attempts made, last error).

    Each attempt checks the destination again after DNS resolution: a private, loopback or
    link-local address is refused without a connection. ``last_error`` names no address, port or
    socket error, so it tells nothing about what listens where.
    """
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    last_error = None
    for attempt in range(1, attempts + 1):
        try:
            dest = check_url(url, allow_loopback=allow_loopback)
        except DestinationRefused as exc:
            WEBHOOKS.labels("refused").inc()
            log.warning("webhook refused before connecting: %s", exc)
            return False, attempt, str(exc)
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(secret, ts, body), "User-Agent": "voxagent-webhook/1"}
        try:
            with httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False) as client:
                resp = client.send(_pinned_request(client, url, dest, body, headers))
            if 200 <= resp.status_code < 300:
                WEBHOOKS.labels("delivered").inc()
                return True, attempt, None
            last_error = f"HTTP {resp.status_code}"
        except httpx.TimeoutException:
            last_error = "no response in time"
        except httpx.HTTPError as exc:
            last_error = "delivery failed"
            log.info("webhook attempt %d failed: %s", attempt, type(exc).__name__)
        WEBHOOKS.labels("retry").inc()
        log.info("webhook attempt %d failed: %s", attempt, last_error)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    WEBHOOKS.labels("failed").inc()
    return False, attempts, last_error
