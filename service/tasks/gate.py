"""A test hook: hold jobs at their start until a test opens the gate (``settings.test_gate_dir``).

The reliability tests kill a worker or restart Redis while a job is running. Rather than guess how
long a job takes, they close the gate (create ``<dir>/closed``), wait for the marker a claimed job
writes (``started.<job id>.<attempt>``, holding its lease owner, so the test knows which process to
kill), do their damage, and remove ``closed``; ``passed.<job id>.<attempt>`` tells them the job went
on. Off unless the setting is given; the wait is bounded so a forgotten gate delays a job, never
strands it.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
MAX_HOLD_S = 600.0


def marker(gate_dir: Path, job_id: str, attempt: int, event: str = "started") -> Path:
    return Path(gate_dir) / f"{event}.{job_id}.{attempt}"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # the test never reads half a marker


def wait_at_gate(gate_dir: Path | None, job_id: str, attempt: int, owner: str, max_hold_s: float = MAX_HOLD_S) -> None:
    if gate_dir is None:
        return
    gate_dir = Path(gate_dir)
    gate_dir.mkdir(parents=True, exist_ok=True)
    _write(marker(gate_dir, job_id, attempt), owner)
    deadline = time.monotonic() + max_hold_s
    while (gate_dir / "closed").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    _write(marker(gate_dir, job_id, attempt, "passed"), owner)
    log.info("job passed the test gate (attempt %d)", attempt)
