"""Fixtures of the service tests: small scans with known answers, real redis-server."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.service import procs

CODE = ('m = threshold(scan, 50)\nv = volume(m)\nread(v)\noutput(m, "bright")\n'
        'respond(f"bright volume {v}")')


def write_scan(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small scan on a non-RAS, anisotropic grid with a bright block; returns (array, affine)."""
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0, 40, size=(20, 22, 18)).astype(np.float32)
    arr[5:10 + seed % 3, 6:12, 4:9] = 100 + seed
    aff = np.array([[-1.5, 0, 0, 20.0], [0, 0, 2.0, -30.0], [0, 1.2, 0, -8.0], [0, 0, 0, 1]])  # L, S, A axes
    nib.save(nib.Nifti1Image(arr, aff), path)
    return arr, aff


@pytest.fixture
def scan_file(tmp_path: Path):
    p = tmp_path / "scan.nii.gz"
    arr, aff = write_scan(p)
    return p, arr, aff


def expected_ml(arr: np.ndarray, aff: np.ndarray) -> float:
    return float((arr > 50).sum() * abs(np.linalg.det(aff[:3, :3])) / 1000.0)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis")
    proc, url = procs.start_redis(tmp)
    yield url
    proc.stop()
