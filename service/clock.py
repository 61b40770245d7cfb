"""The service's one source of "now" for records: ISO 8601 UTC text, and epoch seconds."""
from __future__ import annotations

import time
from datetime import datetime, timezone


def utcnow() -> tuple[str, float]:
    """(ISO 8601 UTC, epoch seconds) of the same instant."""
    now = time.time()
    return datetime.fromtimestamp(now, timezone.utc).isoformat(), now


def now_iso() -> str:
    return utcnow()[0]
