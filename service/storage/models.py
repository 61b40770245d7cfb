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


class RoutingRef(BaseModel):
    """What a routed job's completion needs: the rule that started it and the study record to update."""

    rule: str
    study_record_id: str
    dicom_scan: str  # the scan whose study receives the SEG and SR


class LeaseRecord(BaseModel):
    """Who runs a job now, and until when that claim holds without a heartbeat (service.tasks.lease)."""

    owner: str  # node/host/pid/boot of the worker process
    host: str
    pid: int
    acquired_ts: float
    heartbeat_ts: float
    expires_ts: float


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
    attempt: int = 0  # starts so far; a lost worker's job is started again up to settings.max_attempts
    lease: LeaseRecord | None = None  # set while running
    dispatched_ts: float | None = None  # last time a task message was sent for it (None: at creation)
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None  # api_schemas.results.AnalysisResult, as JSON
    error: str | None = None
    progress: dict[str, int] | None = None  # api_schemas.jobs.JobProgress while a prompt runs
    routing: RoutingRef | None = None  # set for jobs started by a routing rule (service.dicom.routing)


class WebhookRecord(BaseModel):
    url: str
    delivered: bool = False
    attempts: int = 0
    last_error: str | None = None


class WebhookDeliveryRecord(StoredRecord):
    """A batch's completion webhook until it is delivered or given up (service.delivery).

    The secret is not copied here: it is read from the batch record (``webhook_secret``) when an
    attempt is signed. ``body`` is the exact JSON that is signed and sent on every attempt."""

    KIND: ClassVar[str] = "webhook_delivery"

    created_at: str
    batch_id: str
    url: str
    body: str
    status: str  # pending | delivered | dead
    attempts: int = 0  # attempts started (one is counted before it is sent)
    due_ts: float  # epoch seconds of the next attempt
    owner: str  # the process whose queue holds it (service.tasks.lease.Owner id)
    last_error: str | None = None
    finished_at: str | None = None


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


class DicomSourceRef(BaseModel):
    """The DICOM series a volume was read from; ``headers`` is the artifact holding its instances'
    headers without pixel data, which the SEG and SR writers need to copy and reference."""

    study_instance_uid: str
    series_instance_uid: str
    dicom_modality: str | None = None
    instances: int
    headers: str


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
    series_description: str | None = None
    dicom: DicomSourceRef | None = None  # set for volumes read from DICOM (service.dicom.ingest)
    frame: int | None = None  # the frame of a 4D NIfTI upload that was stored


class ArtifactRecord(StoredRecord):
    """An output volume of a job, stored under its artifact id."""

    KIND: ClassVar[str] = "artifact"

    job_id: str
    name: str
    kind: str | None = None
    source: str | None = None
    source_volume_id: str | None = None
    sha256: str


class StudyRecord(StoredRecord):
    """A DICOM study that arrived by STOW-RS: its series, and what routing did with it.

    Every study is recorded, also one that matches no rule (``status`` "unmatched"), so nothing that
    a PACS sent disappears without a trace.
    """

    KIND: ClassVar[str] = "study"

    created_at: str
    study_instance_uid: str
    series: list[dict[str, Any]] = Field(default_factory=list)  # service.dicom.stow.SeriesOutcome dumps
    status: str = "stored"  # stored (no rules) | unmatched | routed | rejected (no series stored)
    rule: str | None = None
    job_id: str | None = None
    routing_error: str | None = None
    delivery: dict[str, Any] | None = None  # {status, delivery_id, attempts, last_error} (service.dicom.routing)


class DeliveryRecord(StoredRecord):
    """One push of results to a DICOMweb destination; status "dead_letter" when every attempt failed."""

    KIND: ClassVar[str] = "dicom_delivery"

    created_at: str
    job_id: str
    study_record_id: str
    destination: str
    status: str  # delivered | dead_letter
    attempts: int
    last_error: str | None = None
    instances: list[str] = Field(default_factory=list)  # SOP Instance UIDs sent


__all__ = ["ArtifactRecord", "BatchRecord", "DeliveryRecord", "DicomSourceRef", "JobRecord", "RoutingRef",
           "StoredRecord", "StudyRecord", "VolumeRecord", "WebhookDeliveryRecord", "WebhookRecord"]
