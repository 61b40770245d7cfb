"""A stored input volume, as the API describes it after validating the upload."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class DicomSeriesInfo(BaseModel):
    """Where a volume read from DICOM came from: results (SEG, SR) are written into this study."""

    study_instance_uid: str
    series_instance_uid: str
    dicom_modality: str | None = Field(default=None, description="The DICOM Modality attribute, e.g. 'MR'.")
    instances: int = Field(description="DICOM objects of the series (headers kept for the results).")


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
    series_description: str | None = None
    dicom: DicomSeriesInfo | None = Field(default=None, description="Set when the volume was read from DICOM.")
    frame: int | None = Field(default=None, description="The frame (0-based) of a 4D NIfTI upload that was "
                                                        "stored; the 3D volume analyses read.")
    created_at: datetime
