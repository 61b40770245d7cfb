"""probe_volume: what a read would allocate, from the header alone (issue 23: budgets before decompressing)."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from voxel_ops import NotNiftiError, probe_volume


def _header(shape, dtype) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), 1)
    return hdr


@pytest.mark.parametrize("dtype, mask", [(np.int16, 0), (np.float32, 1), (np.float64, 1)])
def test_the_probe_reads_the_header_only(tmp_path, dtype, mask):
    p = tmp_path / "claims.nii.gz"
    # only the header: a reader would find the data missing, the probe never looks for it
    p.write_bytes(gzip.compress(_header((512, 512, 512), dtype).binaryblock + b"\0" * 4))
    probe = probe_volume(p)
    voxels = 512**3
    assert probe.shape == (512, 512, 512) and probe.compressed
    assert probe.data_bytes == voxels * np.dtype(dtype).itemsize
    assert probe.peak_bytes == 352 + probe.data_bytes + mask * voxels  # buffer (header too) + finiteness mask


def test_scaling_adds_the_float_copy(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 5, 6), dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    p = tmp_path / "scaled.nii"
    nib.save(img, p)
    probe = probe_volume(p)
    assert probe.peak_bytes == 352 + 120 * 2 + 120 * 4 + 120 and not probe.compressed


def test_not_nifti_is_refused_as_the_reader_would(tmp_path):
    p = tmp_path / "x.nii"
    p.write_bytes(b"hello" * 100)
    with pytest.raises(NotNiftiError):
        probe_volume(p)
