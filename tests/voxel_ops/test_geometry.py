"""Analytic phantoms: measurements match geometry, whatever the storage orientation or obliquity."""
from __future__ import annotations

import math

import numpy as np
import pytest

import voxel_ops as vo
from tests.voxel_ops.phantoms import SEMI_AXES_MM, SPACING, ellipsoid, grid_affine, reoriented, rotation

SHAPE = (48, 44, 32)
CENTRE = (0.23, -0.41, 0.77)
ORIENTATIONS = ["RAS", "LAS", "LPS", "PSR", "SLP", "IRA", "ALI", "RSP"]
ANALYTIC_ML = 4.0 / 3.0 * math.pi * math.prod(SEMI_AXES_MM) / 1000.0


@pytest.fixture(scope="module")
def phantom() -> vo.Volume:
    return ellipsoid(grid_affine(SPACING, SHAPE), SHAPE, CENTRE, SEMI_AXES_MM)


def test_phantom_has_at_least_ten_voxels_per_semi_axis():
    assert all(a / s >= 10 for a, s in zip(SEMI_AXES_MM, SPACING))


def test_volume_within_one_percent_of_analytic(phantom):
    assert vo.volume_ml(phantom) == pytest.approx(ANALYTIC_ML, rel=0.01)


def test_extents_within_one_voxel(phantom):
    ext = vo.extents_mm(phantom)
    measured = (ext["left_right"], ext["anterior_posterior"], ext["superior_inferior"])
    for m, a, s in zip(measured, SEMI_AXES_MM, SPACING):
        assert abs(m - 2 * a) <= s


def test_centroid_and_bbox(phantom):
    assert np.allclose(vo.centroid_mm(phantom), CENTRE, atol=0.1)
    lo, hi = vo.bounding_box_mm(phantom)
    for axis in range(3):
        assert abs(lo[axis] - (CENTRE[axis] - SEMI_AXES_MM[axis])) <= SPACING[axis]
        assert abs(hi[axis] - (CENTRE[axis] + SEMI_AXES_MM[axis])) <= SPACING[axis]


def _measure(vol: vo.Volume) -> dict:
    return {
        "volume": vo.volume_ml(vol),
        "extents": tuple(vo.extents_mm(vol).values()),
        "bbox": vo.bounding_box_mm(vol),
        "centroid": vo.centroid_mm(vol),
        "hemisphere": vo.hemisphere(vol, midline_x_mm=-5.0),
        "components": vo.connected_components(vol).volumes_ml,
    }


def _assert_same(a: dict, b: dict) -> None:
    """Equal up to the float32 precision in which NIfTI-1 stores the affine."""
    assert a["volume"] == pytest.approx(b["volume"], rel=1e-6)
    assert np.allclose(a["extents"], b["extents"], atol=1e-4)
    assert np.allclose(np.ravel(a["bbox"]), np.ravel(b["bbox"]), atol=1e-4)
    assert np.allclose(a["centroid"], b["centroid"], atol=1e-4)
    assert a["hemisphere"] == b["hemisphere"]
    assert np.allclose(a["components"], b["components"])


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_same_object_in_any_orientation_measures_the_same(phantom, codes, tmp_path):
    stored = reoriented(phantom, codes)
    assert "".join(stored.orientation) == codes
    path = vo.save_volume(stored, tmp_path / f"phantom_{codes}.nii.gz")
    loaded = vo.load_volume(path)
    assert "".join(loaded.orientation) == codes
    _assert_same(_measure(loaded), _measure(phantom))


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_conform_unconform_is_exact(phantom, codes):
    stored = reoriented(phantom, codes)
    ras, transform = vo.conform_ras(stored)
    assert ras.orientation == ("R", "A", "S")
    # every storage of one object conforms to the very same RAS array and affine
    assert np.array_equal(ras.array, phantom.array)
    assert np.allclose(ras.affine, phantom.affine, atol=1e-9)
    back = vo.unconform(ras, transform)
    assert back.array.dtype == stored.array.dtype
    assert np.array_equal(back.array, stored.array)
    assert np.array_equal(back.affine, stored.affine)


OBLIQUE = [rotation("z", 30), rotation("x", -20) @ rotation("y", 15), rotation("y", 50) @ rotation("z", -35)]


@pytest.mark.parametrize("rot", OBLIQUE, ids=["z30", "x-20y15", "y50z-35"])
def test_oblique_grid_measures_the_world_object(rot, tmp_path):
    """An ellipsoid whose principal axes follow an oblique grid: volume, centroid and world-RAS extents
    stay analytic."""
    affine = grid_affine(SPACING, SHAPE, rotation=rot, centre_world=CENTRE)
    vol = ellipsoid(affine, SHAPE, CENTRE, SEMI_AXES_MM, axes=rot)
    assert vo.volume_ml(vol) == pytest.approx(ANALYTIC_ML, rel=0.01)
    assert np.allclose(vo.centroid_mm(vol), CENTRE, atol=0.15)
    # world half-extent of a rotated ellipsoid along world axis i: sqrt(sum_j (R_ij a_j)^2)
    analytic = 2 * np.sqrt(((rot * np.asarray(SEMI_AXES_MM)) ** 2).sum(axis=1))
    voxel_projection = np.abs(affine[:3, :3]).sum(axis=1)
    ext = np.array(list(vo.extents_mm(vol).values()))
    assert np.all(np.abs(ext - analytic) <= voxel_projection)
    # and the oblique object stored in other orientations measures identically
    reference = _measure(vol)
    for codes in ("LPS", "PSR", "IRA"):
        stored = vo.load_volume(vo.save_volume(reoriented(vol, codes), tmp_path / f"obl_{codes}.nii"))
        _assert_same(_measure(stored), reference)
        ras, transform = vo.conform_ras(stored)
        back = vo.unconform(ras, transform)
        assert np.array_equal(back.array, stored.array) and np.array_equal(back.affine, stored.affine)


def test_resample_to_isotropic_keeps_volume(phantom):
    iso = vo.resample_to_spacing(phantom, 1.0, order=0)
    assert iso.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert iso.array.dtype == phantom.array.dtype
    assert vo.volume_ml(iso) == pytest.approx(ANALYTIC_ML, rel=0.03)
    assert np.allclose(vo.centroid_mm(iso), CENTRE, atol=0.5)
    linear = vo.resample_to_spacing(phantom.with_array(phantom.array.astype(np.float32)), 1.0)
    assert linear.array.dtype == np.float32
    assert 0.0 <= linear.array.min() and linear.array.max() <= 1.0


def test_resample_like_same_grid_is_identity(phantom):
    image = phantom.with_array(phantom.array.astype(np.float32) * 7.0)
    same = vo.resample_like(image, phantom)
    assert np.allclose(same.array, image.array, atol=1e-5)
    labels = vo.resample_like(reoriented(phantom, "LPS"), phantom, order=0)
    assert np.array_equal(labels.array, phantom.array)


def test_unconform_refuses_another_grid(phantom):
    _, transform = vo.conform_ras(reoriented(phantom, "LPS"))
    other = vo.Volume(np.zeros((5, 5, 5)), np.eye(4))
    with pytest.raises(vo.GridMismatchError):
        vo.unconform(other, transform)
