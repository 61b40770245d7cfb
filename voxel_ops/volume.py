"""The one volume type every package passes around: voxels plus their place in the world.

Geometry is held once, in the 4x4 voxel-to-world affine (RAS+ world, millimetres, as NIfTI
defines it). Spacing, orientation codes and coordinate mappings are derived from it on demand so
that they can never disagree with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class VolumeMeta:
    """What a clinician would want to know about where a scan came from."""

    modality: str | None = None  # e.g. "T1", "T2", "FLAIR", "CT", "DWI", "ADC"
    acquisition_date: str | None = None  # ISO 8601 date, e.g. "2024-03-01"
    series_description: str | None = None
    source_name: str | None = None  # file name or DICOM series UID it was read from


@dataclass
class Volume:
    """A 3D image: ``array[i, j, k]`` sits at world point ``affine @ [i, j, k, 1]``."""

    array: np.ndarray
    affine: np.ndarray
    meta: VolumeMeta = field(default_factory=VolumeMeta)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3D, got an array of shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = (int(s) for s in self.array.shape)  # 3D by construction
        return x, y, z

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (lengths of the affine's columns)."""
        x, y, z = (float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))
        return x, y, z

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Axis codes such as ('R', 'A', 'S'): the world direction each array axis points to."""
        return tuple(nib.aff2axcodes(self.affine))

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map (..., 3) voxel indices to (..., 3) world coordinates in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def with_array(self, array: np.ndarray, **meta_changes: str | None) -> "Volume":
        """A new volume on the same grid (e.g. a mask derived from this image)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.array.shape}")
        return Volume(array, self.affine.copy(), replace(self.meta, **meta_changes))

    def same_grid(self, other: "Volume", atol: float = 1e-4) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))
