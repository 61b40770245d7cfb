"""Typed refusals: every way a volume can be unusable gets its own class and a plain message.

All derive from :class:`VolumeError` (itself a ``ValueError``) so callers that only care about
"bad input" catch one thing, while the service can map each class to a precise 4xx detail.
"""
from __future__ import annotations


class VolumeError(ValueError):
    """A volume (file, array or geometry) that voxagent cannot use, with the reason in words."""


class VolumeFileNotFoundError(VolumeError, FileNotFoundError):
    """The path does not name a readable regular file."""


class NotNiftiError(VolumeError):
    """The bytes are not a single-file NIfTI-1/NIfTI-2 image (bad magic, header size, gzip stream)."""


class HeaderError(VolumeError):
    """The NIfTI header is internally inconsistent (data offset, scaling, dimension count)."""


class DataTypeError(VolumeError):
    """The voxel data type is unknown or not a plain real number type (complex, RGB, bit)."""


class TruncatedDataError(VolumeError):
    """The file ends before all the voxels its header declares."""


class SizeLimitError(VolumeError):
    """The image (declared or actual) is larger than the configured limits allow."""


class DimensionError(VolumeError):
    """The image is not a usable 3D volume (2D, real 4D without a chosen frame, 5D, zero-sized axis)."""


class AffineError(VolumeError):
    """The voxel-to-world affine is missing, non-finite or singular."""


class SpacingError(VolumeError):
    """A voxel spacing is outside the plausible range for brain imaging."""


class NonFiniteError(VolumeError):
    """The voxel data holds NaN or infinite values and the caller asked to refuse them."""


class GridMismatchError(VolumeError):
    """Two volumes that must share one voxel grid (image and mask) do not."""


class MeasurementError(VolumeError):
    """A measurement is undefined for its input (empty mask, zero denominator, zero noise)."""


__all__ = [
    "AffineError",
    "DataTypeError",
    "DimensionError",
    "GridMismatchError",
    "HeaderError",
    "MeasurementError",
    "NonFiniteError",
    "NotNiftiError",
    "SizeLimitError",
    "SpacingError",
    "TruncatedDataError",
    "VolumeError",
    "VolumeFileNotFoundError",
]
