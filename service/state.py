"""Everything a request handler needs, built once at start-up and kept on ``app.state``."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from service.clock import now_iso, utcnow
from service.dispatch import Dispatcher, make_dispatcher
from service.settings import Settings
from service.storage import ArtifactStore, RecordStore, open_record_store
from service.tasks.context import TaskContext

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    records: RecordStore
    artifacts: ArtifactStore
    dispatcher: Dispatcher
    ctx: TaskContext

    @classmethod
    def build(cls, settings: Settings) -> "ServiceState":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        records = open_record_store(settings)
        artifacts = ArtifactStore(settings.artifacts_dir)
        ctx = TaskContext.embedded(settings, records, artifacts)
        return cls(settings, records, artifacts, make_dispatcher(settings, ctx), ctx)

    def close(self) -> None:
        self.dispatcher.shutdown()
        self.records.close()


__all__ = ["ServiceState", "now_iso", "utcnow"]
