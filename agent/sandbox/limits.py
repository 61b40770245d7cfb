"""Bounds on what one job's agent code may consume, and the OS limits of the hosting process.

The interpreter enforces the first kind itself (it refuses before it computes); the second kind is a
backstop for anything the interpreter cannot see, e.g. a library function that allocates too much.
"""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from api_schemas.limits import CALL_TIMEOUT_S, JOB_TIMEOUT_S, MAX_CODE_CHARS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-step and per-job bounds. Defaults fit the task code of the shipped model with wide margin."""

    max_code_chars: int = MAX_CODE_CHARS  # characters of code in one step (after <MOD> stripping)
    max_bracket_depth: int = 32  # nesting of ( [ { checked before ast.parse sees the code
    max_expr_depth: int = 48  # depth of the parsed syntax tree, checked before evaluation
    max_nodes: int = 2000  # syntax-tree nodes in one step
    max_calls_per_step: int = 64
    max_steps: int = 32  # steps per job
    max_int_bits: int = 128  # no integer, literal or computed, may exceed this many bits
    max_str_len: int = 10_000  # characters of any string value
    max_seq_len: int = 256  # elements of any list/tuple value
    max_streams: int = 8  # volumes in one encode()
    max_outputs: int = 16  # output() calls per job
    max_response_chars: int = 20_000  # all respond() text of a job together
    max_format_width: int = 200  # width in an f-string format spec
    call_timeout_s: float = CALL_TIMEOUT_S  # wall time of one library call
    job_timeout_s: float = JOB_TIMEOUT_S  # wall time of all steps of a job together
    use_alarm: bool = True  # preempt long calls with SIGALRM when running in the main thread
    # Bytes of volumes the job's library calls may hold at once (input scans excluded: the service
    # bounds them at upload). Checked before a call from an estimate and after it exactly.
    max_memory_bytes: int = 1024**3


def apply_process_limits(address_space_mb: int | None, cpu_seconds: int | None) -> None:
    """Cap the calling process's virtual memory and CPU time (worker start-up).

    Exceeding the address space makes allocations fail with MemoryError; exceeding the CPU soft
    limit delivers SIGXCPU (default action: terminate), the hard limit a few seconds later SIGKILL.
    Note that torch reserves a lot of virtual address space: workers that import torch need several GB.
    """
    if address_space_mb is not None:
        soft = int(address_space_mb) * 1024 * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    if cpu_seconds is not None:
        soft = int(cpu_seconds)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new_hard = soft + 5 if hard == resource.RLIM_INFINITY else min(hard, soft + 5)
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, new_hard), new_hard))
    logger.info("process limits set: address_space_mb=%s cpu_seconds=%s", address_space_mb, cpu_seconds)
