"""Everything a request handler needs, built once at start-up and kept on ``app.state``."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.clock import now_iso, utcnow
from service.delivery import DeliveryQueue
from service.dispatch import Dispatcher, make_dispatcher
from service.memory import ByteBudget
from service.reaper import Reaper
from service.settings import Settings
from service.storage import ArtifactStore, RecordStore, open_record_store
from service.tasks.context import TaskContext
from service.tasks.lease import LeasePolicy

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    records: RecordStore
    artifacts: ArtifactStore
    dispatcher: Dispatcher
    ctx: TaskContext
    reaper: Reaper | None = field(default=None)
    upload_budget: ByteBudget = field(default_factory=lambda: ByteBudget(1024 * 1024 * 1024))

    @classmethod
    def build(cls, settings: Settings) -> "ServiceState":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        records = open_record_store(settings)
        artifacts = ArtifactStore(settings.artifacts_dir)
        ctx = TaskContext.embedded(settings, records, artifacts)
        # webhooks: off the job threads; at start-up it sends what a previous process left pending
        ctx.deliveries = DeliveryQueue(settings, records, node=ctx.node)
        dispatcher = make_dispatcher(settings, ctx)
        # jobs of a previous process (embedded restart) or of a lost worker are requeued or failed
        reaper = Reaper(ctx, dispatcher, LeasePolicy.from_settings(settings), settings.reaper_interval_s).start()
        return cls(settings, records, artifacts, dispatcher, ctx, reaper,
                   upload_budget=ByteBudget(settings.upload_memory_bytes))

    def close(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()
        self.dispatcher.shutdown()
        if self.ctx.deliveries is not None:
            self.ctx.deliveries.close()
        self.records.close()


__all__ = ["ServiceState", "now_iso", "utcnow"]
