"""The OS limits of a worker process (``agent.sandbox.apply_process_limits``), set at its start.

The sandbox budgets what it can see (volumes its library calls create); a library function may still
allocate transiently far more (a resample, a morphology on a big grid). An address-space limit turns
such an allocation into a MemoryError, which the sandbox reports as the step's error, instead of the
kernel's OOM killer taking the whole worker and every job on it. Set per process because prefork
children are separate processes (Celery's worker_process_init), and the solo/threads pools run
tasks in the worker process itself. Not applied where CUDA is in use: its runtime reserves far more
virtual address space than it ever touches, so any useful limit would break it.
"""
from __future__ import annotations

import logging
import sys

from service.settings import Settings

log = logging.getLogger(__name__)


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - unknown means: assume it is, and set no limit
        return True


def apply_worker_limits(settings: Settings) -> bool:
    """Cap this process's address space at ``worker_address_space_mb``; True if a limit was set."""
    from agent.sandbox import apply_process_limits

    if settings.worker_address_space_mb <= 0:
        return False
    if _cuda_in_use() or ("vision" in settings.worker_queue_list and _cuda_available()):
        log.info("no address-space limit: this worker uses CUDA")
        return False
    try:
        apply_process_limits(address_space_mb=settings.worker_address_space_mb, cpu_seconds=None)
    except (ValueError, OSError) as exc:  # below what the process already holds, or not permitted
        log.warning("address-space limit of %d MB not set: %s", settings.worker_address_space_mb, exc)
        return False
    return True


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, no CUDA
        return False
