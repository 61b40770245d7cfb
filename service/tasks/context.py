"""What a task function needs from its host: stores, settings and a vision client per job."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.settings import Settings
from service.storage import ArtifactStore, RecordStore
from service.tasks.lease import EMBEDDED_NODE, SYSTEM_CLOCK, Clock


@dataclass
class TaskContext:
    settings: Settings
    records: RecordStore
    artifacts: ArtifactStore
    vision_client: Callable[[str], Any]  # job_id -> VisionClient (local engine or Celery queue "vision")
    node: str = EMBEDDED_NODE  # who runs the jobs: "embedded", or the Celery node name (job leases)
    clock: Clock = SYSTEM_CLOCK  # the time of job leases; tests inject their own
    deliveries: Any = None  # service.delivery.DeliveryQueue of this process (None: the process-wide one)

    @classmethod
    def embedded(cls, settings: Settings, records: RecordStore, artifacts: ArtifactStore,
                 node: str = EMBEDDED_NODE) -> "TaskContext":
        def local_client(job_id: str):
            return LazyLocalVisionClient(settings.models_dir)

        return cls(settings, records, artifacts, local_client, node=node)


class LazyLocalVisionClient:
    """The process's resident engine, fetched on the first vision call: programs that never
    encode (measurements on given masks) do not wait for the network to load."""

    def __init__(self, models_dir) -> None:
        self.models_dir = models_dir
        self._client = None

    def _get(self):
        if self._client is None:
            from agent.vision_client import LocalVisionClient
            from service.tasks import resources

            self._client = LocalVisionClient(resources.vision_engine(self.models_dir))
        return self._client

    def encode(self, volumes, phis, job_id):
        return self._get().encode(volumes, phis, job_id)

    def generate(self, handle, stream, phi):
        return self._get().generate(handle, stream, phi)

    def release(self, job_id: str) -> None:
        if self._client is not None:
            self._client.release(job_id)
