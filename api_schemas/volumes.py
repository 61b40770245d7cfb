"""A stored input volume, as the API describes it after validating the upload."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class VolumeInfo(BaseModel):
    id: str
    filename: str
    size_bytes: int
    sha256: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str = Field(description="Axis codes of the header, e.g. 'RAS' or 'LPI'.")
    dtype: str
    modality: str | None = None
    date: str | None = None
    created_at: datetime
