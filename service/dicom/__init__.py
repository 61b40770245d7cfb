"""DICOM adapters of the service: analysis results as DICOM SEG + SR (TID 1500), in the source study."""
from service.dicom.results import (
    CAUTION,
    DicomOutputError,
    DicomOutputs,
    build_dicom_results,
    link_metrics,
    package_version,
    ucum_unit,
    write_dicom_results,
)

__all__ = [
    "CAUTION",
    "DicomOutputError",
    "DicomOutputs",
    "build_dicom_results",
    "link_metrics",
    "package_version",
    "ucum_unit",
    "write_dicom_results",
]
