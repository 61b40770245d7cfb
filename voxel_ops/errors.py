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


class DicomError(VolumeError):
    """A DICOM folder, archive or series that cannot become one volume (base of the DICOM refusals).

    Messages name series by number, description and UID and slices by position in mm, never by a
    patient attribute (name, ID, birth date) or a file name (which often holds one).
    """


class NoDicomFilesError(DicomError):
    """The folder or archive holds no DICOM file at all (empty, or other files only)."""


class UnsafeArchiveError(DicomError):
    """A ``.zip`` that must not be opened: path traversal, links, encryption, corrupt headers."""


class ArchiveLimitError(DicomError, SizeLimitError):
    """A folder or ``.zip`` with more files or more (uncompressed) bytes than the limits allow."""


class MixedSeriesError(DicomError):
    """Several image series where one was expected and none was chosen."""


class SeriesNotFoundError(DicomError):
    """The chosen series (UID or index) is not in the folder or archive."""


class NonImageDicomError(DicomError):
    """DICOM objects without a usable image (SR, SEG, RTSTRUCT, presentation states, no PixelData, colour)."""


class DicomHeaderError(DicomError, HeaderError):
    """A DICOM header lacks (or garbles) an attribute that geometry or pixels need."""


class MissingSliceError(DicomError):
    """A gap in the slice positions: one or more slices of the series are not there."""


class DuplicateSliceError(DicomError):
    """Two or more slices at the same position (repeated files, several echoes or time points)."""


class InconsistentGeometryError(DicomError):
    """Slices that disagree on orientation, pixel spacing, matrix size or spacing between slices."""


class UnsupportedTransferSyntaxError(DicomError):
    """Pixel data encoded in a transfer syntax this reader cannot decode at all."""


class UnsupportedDicomError(DicomError):
    """A DICOM image layout this reader does not handle (Siemens mosaic, classic multi-frame, colour)."""


class MissingDecoderError(UnsupportedTransferSyntaxError):
    """Compressed pixel data whose decoder is not installed; the message names the pip package."""


__all__ = [
    "AffineError",
    "ArchiveLimitError",
    "DataTypeError",
    "DicomError",
    "DicomHeaderError",
    "DimensionError",
    "DuplicateSliceError",
    "GridMismatchError",
    "HeaderError",
    "InconsistentGeometryError",
    "MeasurementError",
    "MissingDecoderError",
    "MissingSliceError",
    "MixedSeriesError",
    "NoDicomFilesError",
    "NonFiniteError",
    "NonImageDicomError",
    "NotNiftiError",
    "SeriesNotFoundError",
    "SizeLimitError",
    "SpacingError",
    "TruncatedDataError",
    "UnsafeArchiveError",
    "UnsupportedDicomError",
    "UnsupportedTransferSyntaxError",
    "VolumeError",
    "VolumeFileNotFoundError",
]
