"""What a library function may touch while it runs: the vision client, phis, the step's outcome."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.phi_bank import PhiBank
from agent.sandbox.errors import SandboxCancelled, SandboxTimeout
from agent.sandbox.limits import SandboxLimits
from agent.sandbox.outcome import StepOutcome
from agent.vision_client import VisionClient
from voxel_ops import Volume


class StopSignal(Exception):
    """Raised by stop(): the interpreter ends the step (and the job) right there."""


@dataclass
class CallContext:
    """One per sandbox (job); `outcome`, `step` and `call_phis` are reset by the interpreter."""

    client: VisionClient
    phi_bank: PhiBank
    job_id: str
    limits: SandboxLimits
    output_dir: Path | None
    record: Callable[[Any], None]  # the metrics rule: called with every value read, formatted or responded
    outcome: StepOutcome = field(default_factory=StepOutcome)
    step: int = 0
    call_phis: dict[int | str, Any] = field(default_factory=dict)  # agent phis for this call's marked args
    output_volumes: dict[str, Volume] = field(default_factory=dict)  # every output() of the job, by name
    response_chars: int = 0
    # Safe points (checkpoint): the interpreter sets the running call's deadline; the job's host may
    # give a cancel flag. SIGALRM preempts calls only in the main thread, so in worker threads these
    # checks, made between calls and by library functions between their expensive parts, are what
    # stops a call that ran out of time or a job that was cancelled.
    clock: Callable[[], float] = time.perf_counter
    deadline: float | None = None
    call_name: str = ""
    call_budget_s: float = 0.0
    cancelled: Callable[[], bool] | None = None

    def checkpoint(self) -> None:
        """Raise if the job was cancelled or the running call is past its time limit."""
        if self.cancelled is not None and self.cancelled():
            raise SandboxCancelled("the analysis was cancelled")
        if self.deadline is not None and self.clock() > self.deadline:
            raise SandboxTimeout(f"{self.call_name}() ran past its time limit of {self.call_budget_s:.3g} s")

    def take_phi(self, keys: Iterable[int | str], fallback: Callable[[], Any]) -> Any:
        """The agent's phi for a marked argument (first matching key), else the bank's."""
        for key in keys:
            if key in self.call_phis:
                self.outcome.phis_used += 1
                return self.call_phis[key]
        return fallback()
