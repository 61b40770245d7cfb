"""Volumes with world geometry, safe reading, exact RAS conforming, measurements in physical units.

Everything here is a pure function of :class:`Volume` objects (array + 4x4 voxel-to-world
affine + metadata): read NIfTI safely (:func:`load_volume`), put scans in RAS order without
resampling and back again exactly (:func:`conform_ras` / :func:`unconform`), resample only when
asked, and measure in millimetres and millilitres through the affine, whatever the orientation.
Refusals are typed :class:`VolumeError` subclasses from :mod:`voxel_ops.errors`.
"""
from voxel_ops.errors import (
    AffineError,
    DataTypeError,
    DimensionError,
    GridMismatchError,
    HeaderError,
    MeasurementError,
    NonFiniteError,
    NotNiftiError,
    SizeLimitError,
    SpacingError,
    TruncatedDataError,
    VolumeError,
    VolumeFileNotFoundError,
)
from voxel_ops.intensity import normalize_intensity
from voxel_ops.io import (
    ReadLimits,
    ReadReport,
    check_affine,
    load_volume,
    load_volume_from_bytes,
    load_volume_with_report,
    save_volume,
)
from voxel_ops.masks import (
    ball_structure,
    crop_to_mask,
    difference,
    dilate_mm,
    erode_mm,
    fill_holes,
    intersection,
    keep_region,
    remove_region,
    threshold,
    union,
)
from voxel_ops.measure import (
    Components,
    asymmetry_index,
    bounding_box_mm,
    centroid_mm,
    change,
    connected_components,
    extents_mm,
    hemisphere,
    intensity_stats,
    largest_component,
    ratio,
    snr,
    volume_ml,
)
from voxel_ops.orientation import RasTransform, conform_ras, unconform
from voxel_ops.resample import resample_like, resample_to_spacing
from voxel_ops.volume import Volume, VolumeMeta

__all__ = [
    "AffineError",
    "Components",
    "DataTypeError",
    "DimensionError",
    "GridMismatchError",
    "HeaderError",
    "MeasurementError",
    "NonFiniteError",
    "NotNiftiError",
    "RasTransform",
    "ReadLimits",
    "ReadReport",
    "SizeLimitError",
    "SpacingError",
    "TruncatedDataError",
    "Volume",
    "VolumeError",
    "VolumeFileNotFoundError",
    "VolumeMeta",
    "asymmetry_index",
    "ball_structure",
    "bounding_box_mm",
    "centroid_mm",
    "change",
    "check_affine",
    "conform_ras",
    "connected_components",
    "crop_to_mask",
    "difference",
    "dilate_mm",
    "erode_mm",
    "extents_mm",
    "fill_holes",
    "hemisphere",
    "intensity_stats",
    "intersection",
    "keep_region",
    "largest_component",
    "load_volume",
    "load_volume_from_bytes",
    "load_volume_with_report",
    "normalize_intensity",
    "ratio",
    "remove_region",
    "resample_like",
    "resample_to_spacing",
    "save_volume",
    "snr",
    "threshold",
    "unconform",
    "union",
    "volume_ml",
]
