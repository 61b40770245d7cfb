"""Typed records of the record store: jobs, batches, volumes and output artifacts.

The store keeps JSON documents (SQLite or Redis); these models are what the service reads and
writes through `RecordStore.get_record` / `put_record` / `update_record` / `list_records`, so a
misspelt field or a wrong status type fails where it is written, not where it is read. Unknown
keys are kept (``extra="allow"``): a record written by another version round-trips unchanged.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from api_schemas.batches import BatchStatus
from api_schemas.jobs import JobStatus


class StoredRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    KIND: ClassVar[str]

    id: str
    tenant: str
    created_at_ts: float


class JobRecord(StoredRecord):
    KIND: ClassVar[str] = "job"

    status: JobStatus
    created_at: str
    prompt: str | None = None
    code: str | None = None
    volumes: list[dict[str, Any]] = Field(default_factory=list)  # api_schemas.requests.VolumeInput dumps
    scan_names: list[str] = Field(default_factory=list)
    batch_id: str | None = None
    label: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None  # api_schemas.results.AnalysisResult, as JSON
    error: str | None = None
    progress: dict[str, int] | None = None  # api_schemas.jobs.JobProgress while a prompt runs


class WebhookRecord(BaseModel):
    url: str
    delivered: bool = False
    attempts: int = 0
    last_error: str | None = None


class BatchRecord(StoredRecord):
    KIND: ClassVar[str] = "batch"

    status: BatchStatus
    created_at: str
    job_ids: list[str]
    labels: list[str | None] = Field(default_factory=list)
    webhook: WebhookRecord | None = None
    webhook_secret: str | None = None
    counts: dict[str, int] | None = None  # frozen when the batch completes
    finished_at: str | None = None


class VolumeRecord(StoredRecord):
    """A validated input volume (written by `service.volumes`)."""

    KIND: ClassVar[str] = "volume"

    artifact: str
    filename: str
    size_bytes: int
    sha256: str
    created_at: str
    shape: list[int]
    spacing: list[float]
    orientation: str
    dtype: str
    modality: str | None = None
    date: str | None = None


class ArtifactRecord(StoredRecord):
    """An output volume of a job, stored under its artifact id."""

    KIND: ClassVar[str] = "artifact"

    job_id: str
    name: str
    kind: str | None = None
    source: str | None = None
    source_volume_id: str | None = None
    sha256: str


__all__ = ["ArtifactRecord", "BatchRecord", "JobRecord", "StoredRecord", "VolumeRecord", "WebhookRecord"]
