"""Volumes with world geometry, safe reading, exact RAS conforming, measurements in physical units."""
from voxel_ops.volume import Volume, VolumeMeta

__all__ = ["Volume", "VolumeMeta"]
