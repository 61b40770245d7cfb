"""Fixtures: a small synthetic head (brain ellipsoid + a left-sided lesion) with a RAS affine."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from agent.sandbox import Sandbox, SandboxLimits
from voxel_ops import Volume, VolumeMeta

SPACING = 2.0
SHAPE = (24, 28, 24)


def phantom(modality: str = "T1", lesion_value: float = 200.0, lesion_radius_mm: float = 8.0) -> Volume:
    """Brain ellipsoid (100) with a spherical lesion (lesion_value) centred at x = -16 mm (left)."""
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-(SHAPE[0] - 1) * SPACING / 2, -(SHAPE[1] - 1) * SPACING / 2, -(SHAPE[2] - 1) * SPACING / 2]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).astype(float)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    array = np.zeros(SHAPE, dtype=np.float32)
    brain = (xyz[..., 0] / 20) ** 2 + (xyz[..., 1] / 24) ** 2 + (xyz[..., 2] / 20) ** 2 <= 1
    array[brain] = 100.0
    lesion = np.linalg.norm(xyz - np.array([-10.0, 0.0, 0.0]), axis=-1) <= lesion_radius_mm
    array[lesion] = lesion_value
    return Volume(array, affine, VolumeMeta(modality=modality))


class RecordingClient:
    """Plumbing-only stand-in for the vision service (used where the real engine is not the subject)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def encode(self, volumes, phis, job_id):
        self.calls.append(("encode", len(volumes), [np.asarray(p).copy() for p in phis], job_id))

        class Handle:
            vectors = np.ones((len(volumes), 8), dtype=np.float32)

        return Handle()

    def generate(self, handle, stream, phi):
        self.calls.append(("generate", stream, np.asarray(phi).copy()))
        vol = self.volumes_for_generate
        return vol.with_array((vol.array > 150).astype(np.float32))

    def release(self, job_id):
        self.calls.append(("release", job_id))


@pytest.fixture
def t1() -> Volume:
    return phantom()


@pytest.fixture
def make_sandbox(t1: Volume) -> Callable[..., Sandbox]:
    def make(limits: SandboxLimits | None = None, client=None, **kwargs) -> Sandbox:
        if client is None:
            client = RecordingClient()
            client.volumes_for_generate = t1
        scans = kwargs.pop("scans", None) or {"t1": t1}
        return Sandbox(scans, client=client, limits=limits, **kwargs)

    return make


@pytest.fixture(scope="session")
def engine():
    """The real vision engine, random-init tiny preset: mask values are arbitrary, geometry is not."""
    from vision.engine import VisionEngine

    eng = VisionEngine("tiny", device="cpu")
    yield eng
    eng.close()


@pytest.fixture
def real_sandbox(engine, t1):
    from agent.vision_client import LocalVisionClient

    def make(scans=None, **kwargs) -> Sandbox:
        return Sandbox(scans or {"t1": t1}, client=LocalVisionClient(engine), **kwargs)

    return make
