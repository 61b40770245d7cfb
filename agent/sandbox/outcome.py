"""What one executed step hands back to the agent runtime (contract between sandbox and runtime)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from api_schemas import Metric, OutputVolume


@dataclass
class Feedback:
    """One `read(x)`: a value becomes text tokens; an encoding becomes embedding vectors."""

    text: str | None = None
    vectors: np.ndarray | None = None  # (n_streams, d) interpretable encoding vectors


@dataclass
class StepOutcome:
    """Result of executing one step of agent code in the persistent environment."""

    feedback: list[Feedback] = field(default_factory=list)
    error: str | None = None  # violation or runtime error, phrased as feedback for the agent
    stopped: bool = False  # stop() was called
    phis_used: int = 0  # how many phi vectors the step's vision calls consumed
    responses: list[str] = field(default_factory=list)  # respond(text) calls of this step
    metrics: list[Metric] = field(default_factory=list)  # values produced this step, with units
    outputs: list[OutputVolume] = field(default_factory=list)  # output(mask, name) calls
    duration_s: float = 0.0
