"""What a library function may touch while it runs: the vision client, phis, the step's outcome."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.phi_bank import PhiBank
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

    def take_phi(self, keys: Iterable[int | str], fallback: Callable[[], Any]) -> Any:
        """The agent's phi for a marked argument (first matching key), else the bank's."""
        for key in keys:
            if key in self.call_phis:
                self.outcome.phis_used += 1
                return self.call_phis[key]
        return fallback()
