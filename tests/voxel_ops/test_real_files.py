"""Real anatomy: the MNI152 2009 template shipped in nilearn, and nibabel's own test images.

Brain definition used here: voxels where the GM + WM probability maps sum above 0.5 (the maps are
stored as uint8 0..255, so > 127.5 / 255). CSF is left out, so this is brain tissue volume.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pytest

import voxel_ops as vo

MNI_DIR = Path(nilearn.__file__).parent / "datasets" / "data"
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _mni(kind: str) -> vo.Volume:
    return vo.load_volume(MNI_DIR / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")


@pytest.fixture(scope="module")
def mni():
    t1, gm, wm = _mni("t1"), _mni("gm"), _mni("wm")
    brain = t1.with_array(((gm.array.astype(np.uint16) + wm.array) > 127).astype(np.uint8))
    return t1, gm, wm, brain


def test_mni_template_loads_with_its_geometry(mni):
    t1 = mni[0]
    assert t1.shape == (197, 233, 189)
    assert t1.spacing == (1.0, 1.0, 1.0) and t1.orientation == ("R", "A", "S")
    assert t1.meta.source_name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    ras, transform = vo.conform_ras(t1)
    assert transform.is_identity and np.array_equal(ras.array, t1.array)


def test_mni_brain_measures_like_a_brain(mni):
    t1, gm, wm, brain = mni
    volume = vo.volume_ml(brain)
    assert 1100.0 <= volume <= 1800.0
    gm_ml = vo.volume_ml(gm.with_array(gm.array > 127))
    wm_ml = vo.volume_ml(wm.with_array(wm.array > 127))
    assert 400.0 < wm_ml < gm_ml < volume
    ext = vo.extents_mm(brain)
    assert 120 <= ext["left_right"] <= 170
    assert 150 <= ext["anterior_posterior"] <= 200
    assert 110 <= ext["superior_inferior"] <= 170
    assert ext["anterior_posterior"] > ext["left_right"]
    centroid = vo.centroid_mm(brain)
    assert abs(centroid[0]) < 2.0  # symmetric template, centred on the midline
    assert vo.hemisphere(brain) == "bilateral"
    comps = vo.connected_components(brain)
    assert comps.volumes_ml[0] > 0.99 * volume
    # tissue is brighter in white than in gray matter on T1
    gm_mean = vo.intensity_stats(t1, gm.with_array(gm.array > 127))["mean"]
    wm_mean = vo.intensity_stats(t1, wm.with_array(wm.array > 127))["mean"]
    assert wm_mean > gm_mean
    assert vo.snr(t1, brain) > 3.0


def test_mni_left_and_right_hemispheres_are_near_symmetric(mni):
    brain = mni[3]
    x = brain.voxel_to_world(np.array([[i, 0, 0] for i in range(brain.shape[0])]))[:, 0]
    left = brain.with_array(brain.array * (x < 0)[:, None, None])
    right = brain.with_array(brain.array * (x > 0)[:, None, None])
    assert vo.hemisphere(left) == "left" and vo.hemisphere(right) == "right"
    assert abs(vo.asymmetry_index(vo.volume_ml(left), vo.volume_ml(right))) < 0.02


def test_mni_round_trip_through_disk_in_another_orientation(mni, tmp_path):
    from tests.voxel_ops.phantoms import reoriented

    brain = mni[3]
    stored = vo.load_volume(vo.save_volume(reoriented(brain, "PIL"), tmp_path / "brain_pil.nii.gz"))
    assert stored.array.dtype == np.uint8
    assert vo.volume_ml(stored) == pytest.approx(vo.volume_ml(brain))
    assert vo.extents_mm(stored) == pytest.approx(vo.extents_mm(brain), abs=1e-4)
    ras, _ = vo.conform_ras(stored)
    assert np.array_equal(ras.array, brain.array)


NIBABEL_3D = ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"]
NIBABEL_4D = ["example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii"]


@pytest.mark.parametrize("name", NIBABEL_3D + NIBABEL_4D)
def test_nibabel_images_match_nibabel(name):
    path = NIBABEL_DATA / name
    ref = nib.load(path)
    expected = np.asanyarray(ref.dataobj)
    if expected.ndim == 4:
        assert name in NIBABEL_4D
        with pytest.raises(vo.DimensionError, match="frame"):
            vo.load_volume(path)
        expected = expected[..., 1]
        vol = vo.load_volume(path, frame=1)
    else:
        vol = vo.load_volume(path)
    assert vol.shape == expected.shape[:3]
    assert np.allclose(vol.array, expected, rtol=1e-6, atol=1e-3)
    assert np.allclose(vol.affine, ref.affine, atol=1e-5)
    whole = vol.with_array(np.ones(vol.shape, dtype=np.uint8))
    zooms = np.asarray(ref.header.get_zooms()[:3], dtype=float)
    assert vo.volume_ml(whole) == pytest.approx(np.prod(vol.shape) * np.prod(zooms) / 1000, rel=1e-5)
    ras, transform = vo.conform_ras(vol)
    assert ras.orientation == ("R", "A", "S")
    back = vo.unconform(ras, transform)
    assert np.array_equal(back.array, vol.array) and np.array_equal(back.affine, vol.affine)


def test_nibabel_image_with_nan_voxels_is_refused_or_zeroed():
    path = NIBABEL_DATA / "resampled_anat_moved.nii"
    expected_bad = int((~np.isfinite(np.asanyarray(nib.load(path).dataobj))).sum())
    assert expected_bad > 0
    with pytest.raises(vo.NonFiniteError):
        vo.load_volume(path)
    vol, report = vo.load_volume_with_report(path, nonfinite="zero")
    assert report.nonfinite_count == expected_bad and np.isfinite(vol.array).all()


def test_cifti_file_is_refused_as_not_a_volume():
    with pytest.raises(vo.DimensionError):
        vo.load_volume(NIBABEL_DATA / "row_major.dconn.nii")
