"""What an analysis produces: the contract between sandbox, agent runtime, workers and clients."""
from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Metric(BaseModel):
    """One number the analysis computed, with its unit and the step that computed it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What was measured, e.g. 'lesion volume'.")
    value: float | int | str | bool = Field(description="The value; numbers are in `unit`.")
    unit: str | None = Field(default=None, description="Physical unit, e.g. 'mL', 'mm', '%'; null when unitless.")
    step: int | None = Field(default=None, description="Index of the step (0-based) whose code produced it.")


class OutputVolume(BaseModel):
    """A volume the analysis marked as a result (e.g. a segmentation), on the input's own grid."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str | None = Field(default=None, description="Local file path (CLI) or artifact id (API).")
    kind: str = Field(default="mask", description="'mask' (uint8 0/1) or 'image'.")
    step: int | None = None
    source: str | None = Field(default=None, description="Name of the input scan whose grid it lies on.")
    snapshot: str | None = Field(default=None, description="PNG of a mask over its scan (three planes through "
                                 "its centroid, legend): artifact id (API, see the job's `snapshot:` link) "
                                 "or local path (CLI).")


class StepTrace(BaseModel):
    """One plan-execute-feedback step: the code, what it read back, and what went wrong."""

    model_config = ConfigDict(extra="forbid")

    index: int
    code: str
    feedback: list[str] = Field(default_factory=list, description="Text of every read() in this step.")
    error: str | None = None
    duration_s: float = 0.0
    phi_count: int = Field(default=0, description="Latent instructions (phi) consumed by vision calls.")
    phis: list[list[float]] | None = Field(default=None, description=(
        "The model's phi vectors of this step, one per <MOD> marker in `code` (float32 values); "
        "`voxagent exec --phis RESULT.json` replays the steps with them."))
    confidence: float | None = Field(default=None, ge=0.0, le=1.0, description=(
        "The model's probability of the least probable token it wrote this step with (greedy "
        "decoding; None for scripted programs). Below 0.5 the result carries a warning."))


class ReportSentence(BaseModel):
    """One sentence of the answer and what it rests on: the metrics whose values it states, and the step.

    Filled by the agent (``agent.grounding``) from the answer's text and the recorded metrics. A number
    that no metric accounts for is listed in ``unlinked`` and never linked by guess.
    """

    model_config = ConfigDict(extra="forbid")

    text: str
    metrics: list[str] = Field(default_factory=list, description="Names of the metrics whose values the "
                               "sentence states, in the order they appear.")
    metric_indices: list[int] = Field(default_factory=list, description="The same metrics as indices into "
                                      "the result's `metrics` (names may repeat).")
    step: int | None = Field(default=None, description="Index of the trace step that computed the sentence's "
                             "values (the latest of them when they come from several); null without numbers.")
    unlinked: list[str] = Field(default_factory=list, description="Numbers in the sentence that no metric "
                                "accounts for.")


class AnalysisStatus(str, Enum):
    """How an analysis ended (a job that ran to the end; the job's own status is `JobStatus`)."""

    succeeded = "succeeded"
    no_answer = "no_answer"
    failed = "failed"


class AnalysisResult(BaseModel):
    """The document a user gets back, from the CLI (`voxagent run/exec --json`) or the API."""

    model_config = ConfigDict(extra="forbid")

    status: AnalysisStatus = Field(default=AnalysisStatus.succeeded,
                                   description="'succeeded', 'no_answer' or 'failed'.")
    text: str = Field(default="", description="The answer in words.")
    metrics: list[Metric] = Field(default_factory=list)
    outputs: list[OutputVolume] = Field(default_factory=list)
    trace: list[StepTrace] = Field(default_factory=list)
    error: str | None = None
    report: list[ReportSentence] = Field(default_factory=list,
                                         description="The answer sentence by sentence, each linked to the "
                                                     "metrics and the trace step its numbers come from.")
    warnings: list[str] = Field(default_factory=list,
                                description="What the user should know about how the answer came about "
                                            "(e.g. steps that failed and were retried).")
    model: str | None = Field(default=None, description="Model name and version that produced it.")
    input_checksums: dict[str, str] = Field(default_factory=dict, description="sha256 per input scan name.")
    timings_s: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
