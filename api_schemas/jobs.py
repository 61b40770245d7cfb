"""The state of one analysis as a job: where it is, and its result when done."""
from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field

from api_schemas.requests import VolumeInput
from api_schemas.results import AnalysisResult


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
ACTIVE = frozenset({JobStatus.queued, JobStatus.running})
# the same as plain strings, for records stored as JSON and status guards of the record store
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
ACTIVE_VALUES = tuple(sorted(s.value for s in ACTIVE))


class JobProgress(BaseModel):
    """Where a running prompt analysis is: the step the agent works on (1-based) of at most ``max_steps``."""

    step: int = Field(ge=0)
    max_steps: int = Field(ge=1)


class Job(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    prompt: str | None = None
    code: str | None = None
    volumes: list[VolumeInput] = Field(default_factory=list)
    batch_id: str | None = None
    result: AnalysisResult | None = Field(default=None, description="Present once the job has finished.")
    error: str | None = None
    progress: JobProgress | None = Field(default=None, description="Running prompt analyses: step k of at most n.")
    links: dict[str, str] = Field(default_factory=dict)


class JobList(BaseModel):
    items: list[Job]
