"""Persistence: artifacts on the file system, records (jobs, volumes, batches, keys) in SQLite or Redis."""
from service.storage.artifacts import ArtifactStore, ArtifactWriter, UploadTooLarge
from service.storage.models import ArtifactRecord, BatchRecord, JobRecord, StoredRecord, VolumeRecord
from service.storage.records import ACTIVE_STATUSES, RecordStore, open_record_store

__all__ = ["ACTIVE_STATUSES", "ArtifactRecord", "ArtifactStore", "ArtifactWriter", "BatchRecord", "JobRecord",
           "RecordStore", "StoredRecord", "UploadTooLarge", "VolumeRecord", "open_record_store"]
