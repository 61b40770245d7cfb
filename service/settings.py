"""Service settings, read from `VOXAGENT_*` environment variables (pydantic-settings).

One object decides the deployment shape: with no broker URL everything runs in-process
(embedded default: thread pool, SQLite, files under ``data_dir``); with
``VOXAGENT_BROKER_URL=redis://...`` jobs go through Celery and live in Redis.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api_schemas import limits


def _default_data_dir() -> Path:
    return Path.home() / ".voxagent"


# The shipped checkpoint: the one default for every models directory (service, workers, CLI).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models" / "voxagent-tiny"


def _default_models_dir() -> Path:
    return DEFAULT_MODELS_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXAGENT_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Artifacts, SQLite job store, logs.")
    broker_url: str | None = Field(default=None, description="redis://... switches to Celery dispatch.")
    result_backend: str | None = Field(default=None, description="Celery result backend; defaults to broker_url.")
    models_dir: Path = Field(default_factory=_default_models_dir, description="Checkpoint directory to serve.")
    worker_queues: str = Field(default="",
                               description="Queues this worker process consumes (set by `voxagent worker`).")

    host: str = "127.0.0.1"
    port: int = 8000

    auth: str = Field(default="keys", description="'keys' (API keys required) or 'off' (single tenant 'default').")

    max_upload_bytes: int = 512 * 1024 * 1024
    # Memory budgets (service.memory): refused with 413 (or 503 + Retry-After while the shared budget
    # is busy) before the memory is spent.
    max_upload_decoded_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0,
        description="What validating one upload may allocate, judged from its header before decompressing "
                    "(voxels, plus the reader's scaled copy and finiteness mask).")
    upload_memory_bytes: int = Field(default=1024 * 1024 * 1024, gt=0,
                                     description="All uploads being validated at once, together.")
    upload_memory_wait_s: float = Field(default=10.0, ge=0,
                                        description="How long an upload waits for the shared budget before a 503.")
    max_json_body_bytes: int = Field(default=1024 * 1024, gt=0,
                                     description="Request bodies other than multipart uploads (JSON): larger is a "
                                                 "413, by Content-Length or while counting, never read whole.")
    job_memory_bytes: int = Field(default=1024 * 1024 * 1024, gt=0,
                                  description="Volumes one job's library calls may hold at once (sandbox budget).")
    worker_address_space_mb: int = Field(
        default=16384, ge=0,
        description="RLIMIT_AS of each agent worker process (agent.sandbox.apply_process_limits), a backstop "
                    "for allocations the sandbox cannot see; 0 = no limit. Not applied where CUDA is in use "
                    "(the CUDA runtime reserves far more address space than it uses).")
    # prompt and code sizes are not settings: the request schemas enforce `api_schemas.limits`
    max_volumes_per_analysis: int = limits.MAX_VOLUMES_PER_ANALYSIS
    max_wait_s: float = 30.0
    workers: int = Field(default=2, description="Embedded dispatcher threads.")
    tenant_concurrency: int = Field(default=64, description="Queued+running jobs per tenant before 429.")
    queue_limit: int = Field(default=256, description="Queued+running jobs in total before 429.")
    tenant_running_limit: int = Field(
        default=2, ge=0, description="Distributed: running jobs of one tenant while another tenant's job waits "
                                     "(service.workers.fairness; 0 = off). Embedded job threads are shared "
                                     "fairly by service.dispatch.fair.")
    max_batch_items: int = limits.MAX_BATCH_ITEMS
    task_time_limit_s: int = limits.TASK_TIME_LIMIT_S
    agent_max_wall_s: float = Field(default=limits.AGENT_MAX_WALL_S,
                                    description="Wall-time budget of the agent loop per job.")
    agent_max_steps: int = 12
    retry_after_s: int = 5
    webhook_attempts: int = 5
    webhook_backoff_s: float = 0.5
    webhook_timeout_s: float = 5.0
    # deliveries run off the job threads (service.delivery), with a budget per tenant
    webhook_threads: int = Field(default=4, ge=1, description="Delivery threads per process.")
    webhook_tenant_in_flight: int = Field(default=1, ge=1,
                                          description="Attempts of one tenant running at once (per process).")
    webhook_tenant_pending: int = Field(default=100, ge=1,
                                        description="Deliveries of one tenant waiting (queued or between retries).")
    webhook_allow_loopback: bool = Field(
        default=False, description="Allow webhooks to loopback addresses (development and tests only); "
                                   "private and link-local addresses are refused regardless.")
    routing_rules: Path | None = Field(
        default=None, description="YAML file of DICOM routing rules and per-tenant DICOMweb destinations "
                                  "(service.dicom.routing); validated at start.")
    log_json: bool = True
    # Who may read the service-wide routes. /readyz is open by default: orchestrators (Kubernetes,
    # compose health checks) probe without credentials, and it says only whether a job sent now would
    # run. /metrics holds every tenant's request and job counts: an API key unless opened here (or
    # scrape it from a separate port, `voxagent worker --metrics-port`).
    readyz_public: bool = Field(default=True, description="/readyz without an API key.")
    metrics_public: bool = Field(default=False, description="/metrics without an API key.")

    # Jobs lost to a vanished worker (service.tasks.lease, service.reaper): a running job holds a
    # lease its worker renews every heartbeat_s; once it lapses (lease_s without a heartbeat) the
    # reaper requeues the job, up to max_attempts starts in all, then fails it with the reason.
    lease_s: float = Field(default=30.0, gt=0, description="A running job's lease without a heartbeat.")
    heartbeat_s: float = Field(default=10.0, gt=0, description="Lease renewals and worker presence beats.")
    reaper_interval_s: float = Field(default=10.0, gt=0, description="Seconds between reaper sweeps.")
    max_attempts: int = Field(default=3, ge=1, description="Starts of one job before a lost worker fails it.")
    store_retry_s: float = Field(default=60.0, ge=0,
                                 description="How long a finished job retries writing its result through a "
                                             "job-store outage before giving the job to the reaper.")
    worker_name: str = Field(default="", description="This worker's Celery node name (set by `voxagent worker`).")
    test_gate_dir: Path | None = Field(default=None,
                                       description="Tests only: a job waits at its start while "
                                                   "<dir>/closed exists (service.tasks.gate).")

    @property
    def distributed(self) -> bool:
        return bool(self.broker_url)

    @property
    def worker_queue_list(self) -> list[str]:
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def visibility_timeout_s(self) -> int:
        """Redis redelivers unacked tasks after this; it must outlast the longest task."""
        return self.task_time_limit_s * 2 + 60


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
