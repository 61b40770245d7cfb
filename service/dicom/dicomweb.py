"""DICOMweb STOW-RS out: send DICOM instances to a PACS, through the SSRF guard, with retries.

Every attempt checks the destination again with :func:`service.netguard.check_url` (after DNS
resolution) and connects to the checked address itself (:func:`service.webhooks._pinned_request`),
so a configured name cannot be rebound to an address inside the deployment. Transient failures
(connection errors, timeouts, 408, 429, 5xx) are retried with exponential backoff; a refusal that
will not change (another 4xx, a 409 "nothing stored") ends the attempts at once. Error texts name
no address, port or socket error (what listens where stays unknown to the tenant).

The body is built here: multipart/related (RFC 2387) of ``application/dicom`` parts is a boundary,
one header line and the bytes per part; the boundary is random and checked not to occur in any
part. (The parsing side, where malformed input is the risk, uses python-multipart.)
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import httpx

from service.netguard import DestinationRefused, check_url
from service.webhooks import _pinned_request

log = logging.getLogger(__name__)

TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class StowResult:
    delivered: bool
    attempts: int
    last_error: str | None = None
    status_code: int | None = None


def multipart_related(instances: list[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a STOW-RS request carrying ``instances`` (Part 10 files)."""
    while True:
        boundary = f"voxagent-{uuid.uuid4().hex}"
        marker = boundary.encode()
        if not any(marker in part for part in instances):
            break
    chunks: list[bytes] = []
    for part in instances:
        chunks += [b"--", marker, b"\r\nContent-Type: application/dicom\r\n\r\n", part, b"\r\n"]
    chunks += [b"--", marker, b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_rs(base_url: str, instances: list[bytes], *, headers: dict[str, str] | None = None,
            auth: tuple[str, str] | None = None, attempts: int = 5, backoff_s: float = 1.0,
            timeout_s: float = 30.0, allow_loopback: bool = False) -> StowResult:
    """POST ``instances`` to ``<base_url>/studies`` until a 200/202 or a permanent refusal."""
    url = base_url.rstrip("/") + "/studies"
    body, content_type = multipart_related(instances)
    extra = {**(headers or {}), "Content-Type": content_type, "Accept": "application/dicom+json",
             "User-Agent": "voxagent-stow/1"}
    last_error: str | None = None
    status: int | None = None
    for attempt in range(1, attempts + 1):
        try:
            dest = check_url(url, allow_loopback=allow_loopback)
        except DestinationRefused as exc:
            log.warning("STOW-RS destination refused before connecting: %s", exc)
            return StowResult(False, attempt, f"destination {exc}")
        try:
            with httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False,
                              auth=httpx.BasicAuth(*auth) if auth else None) as client:
                resp = client.send(_pinned_request(client, url, dest, body, extra))
            status = resp.status_code
            if status in (200, 202):
                if status == 202:
                    log.warning("STOW-RS destination stored only part of the instances (202)")
                return StowResult(True, attempt, None if status == 200 else "HTTP 202 (partly stored)", status)
            last_error = f"HTTP {status}"
            if status not in TRANSIENT:
                log.warning("STOW-RS refused permanently: %s", last_error)
                return StowResult(False, attempt, last_error, status)
        except httpx.TimeoutException:
            last_error = "no response in time"
        except httpx.HTTPError as exc:
            last_error = "delivery failed"
            log.info("STOW-RS attempt %d: %s", attempt, type(exc).__name__)
        log.info("STOW-RS attempt %d failed: %s", attempt, last_error)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return StowResult(False, attempts, last_error, status)
