"""Measurements and mask/field-of-view operations on small grids whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import voxel_ops as vo
from tests.voxel_ops.phantoms import ellipsoid, grid_affine, reoriented

SPACING = (0.8, 1.0, 2.5)
SHAPE = (60, 50, 24)


def _grid(array, spacing=SPACING) -> vo.Volume:
    return vo.Volume(array, grid_affine(spacing, np.shape(array)))


def _box(lo, hi, shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    a = np.zeros(shape, dtype=dtype)
    a[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return a


def test_volume_and_extents_of_a_box():
    mask = _grid(_box((10, 5, 3), (30, 15, 9)))
    assert vo.volume_ml(mask) == pytest.approx(20 * 10 * 6 * 0.8 * 1.0 * 2.5 / 1000)
    ext = vo.extents_mm(mask)
    assert ext == pytest.approx({"left_right": 16.0, "anterior_posterior": 10.0, "superior_inferior": 15.0})


def test_probability_masks_are_thresholded_at_one_half():
    probs = _box((10, 5, 3), (30, 15, 9)).astype(np.float32) * 0.9 + 0.3  # inside 1.2, outside 0.3
    assert vo.volume_ml(_grid(probs)) == vo.volume_ml(_grid(_box((10, 5, 3), (30, 15, 9))))


def test_empty_mask_measurements_are_refused_clearly():
    empty = _grid(np.zeros(SHAPE, dtype=np.uint8))
    assert vo.volume_ml(empty) == 0.0
    for fn in (vo.bounding_box_mm, vo.extents_mm, vo.centroid_mm, vo.hemisphere):
        with pytest.raises(vo.MeasurementError, match="empty"):
            fn(empty)
    assert vo.connected_components(empty).count == 0


def test_intensity_stats_and_snr():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 5.0, SHAPE).astype(np.float32)
    inside = _box((10, 5, 3), (30, 25, 15)).astype(bool)
    image[inside] += 100.0
    img, mask = _grid(image), _grid(inside.astype(np.uint8))
    stats = vo.intensity_stats(img, mask)
    values = image[inside].astype(np.float64)
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["median"] == pytest.approx(np.median(values))
    assert stats["std"] == pytest.approx(values.std())
    assert (stats["min"], stats["max"]) == (pytest.approx(values.min()), pytest.approx(values.max()))
    background = _grid((~inside).astype(np.uint8))
    assert vo.snr(img, mask, background) == pytest.approx(100.0 / 5.0, rel=0.05)
    assert vo.snr(img, mask) == pytest.approx(100.0 / 5.0, rel=0.05)  # std inside is the noise here too
    with pytest.raises(vo.GridMismatchError):
        vo.intensity_stats(img, vo.Volume(inside.astype(np.uint8), np.eye(4)))
    with pytest.raises(vo.MeasurementError):
        vo.snr(_grid(np.ones(SHAPE, dtype=np.float32)), mask)


def test_scalar_measures():
    assert vo.asymmetry_index(11.0, 9.0) == pytest.approx(0.2)
    assert vo.asymmetry_index(9.0, 11.0) == pytest.approx(-0.2)
    assert vo.ratio(3.0, 4.0) == 0.75
    assert vo.change(10.0, 12.5) == {"absolute": 2.5, "percent": 25.0}
    assert vo.change(0.0, 1.0)["percent"] is None
    for bad in (lambda: vo.asymmetry_index(1.0, -1.0), lambda: vo.ratio(1.0, 0.0)):
        with pytest.raises(vo.MeasurementError):
            bad()


def test_connected_components_sorted_by_size():
    array = _box((2, 2, 2), (6, 6, 6)) | _box((20, 20, 10), (30, 30, 20)) | _box((40, 40, 2), (42, 42, 3))
    array[45, 45, 22] = 1
    array[46, 46, 23] = 1  # touches the previous voxel at a corner: one piece with 26-connectivity
    mask = _grid(array)
    comps = vo.connected_components(mask)
    voxel_ml = 0.8 * 1.0 * 2.5 / 1000
    assert comps.count == 4
    assert comps.volumes_ml == pytest.approx(tuple(v * voxel_ml for v in (1000, 64, 4, 2)))
    labels = comps.labels.array
    assert labels.dtype == np.int32 and labels[25, 25, 15] == 1 and labels[3, 3, 3] == 2 and labels[0, 0, 0] == 0
    assert vo.connected_components(mask, connectivity=6).count == 5
    largest = vo.largest_component(mask)
    assert largest.array.dtype == np.uint8 and int(largest.array.sum()) == 1000 and largest.array[25, 25, 15] == 1


@pytest.mark.parametrize("codes", ["RAS", "LAS", "PSR"])
def test_hemisphere_follows_world_x_not_array_axes(codes):
    affine = grid_affine(SPACING, SHAPE)  # world x = 0 at the grid centre
    left = ellipsoid(affine, SHAPE, (-10.0, 0.0, 0.0), (5.0, 5.0, 8.0))
    right = ellipsoid(affine, SHAPE, (10.0, 0.0, 0.0), (5.0, 5.0, 8.0))
    both = vo.union(left, right)
    assert vo.hemisphere(reoriented(left, codes)) == "left"
    assert vo.hemisphere(reoriented(right, codes)) == "right"
    assert vo.hemisphere(reoriented(both, codes)) == "bilateral"
    assert vo.hemisphere(reoriented(left, codes), midline_x_mm=-20.0) == "right"


@pytest.mark.parametrize("codes", ["RAS", "LPI", "PSR"])
def test_components_are_picked_by_world_direction_and_brightness_in_any_orientation(codes):
    affine = grid_affine(SPACING, SHAPE)
    high = ellipsoid(affine, SHAPE, (8.0, -5.0, 12.0), (4.0, 4.0, 6.0))  # right, posterior, superior
    low = ellipsoid(affine, SHAPE, (-8.0, 6.0, -12.0), (5.0, 5.0, 7.0))  # left, anterior, inferior (larger)
    both = reoriented(vo.union(high, low), codes)
    high_r, low_r = reoriented(high, codes), reoriented(low, codes)
    expect = {"superior": high_r, "right": high_r, "posterior": high_r,
              "inferior": low_r, "left": low_r, "anterior": low_r}
    for direction, piece in expect.items():
        picked = vo.extreme_component(both, direction)
        assert picked.array.dtype == np.uint8 and np.array_equal(picked.array, piece.array), direction
    image = both.with_array(np.where(high_r.array > 0, 80.0, 0.0) + np.where(low_r.array > 0, 40.0, 0.0))
    assert np.array_equal(vo.brightest_component(image, both).array, high_r.array)
    with pytest.raises(vo.MeasurementError):
        vo.extreme_component(both, "up")
    single = reoriented(low, codes)
    assert np.array_equal(vo.extreme_component(single, "superior").array, single.array)


def test_union_intersection_difference():
    a, b = _grid(_box((0, 0, 0), (10, 10, 10))), _grid(_box((5, 5, 5), (15, 15, 15)))
    assert int(vo.union(a, b).array.sum()) == 2000 - 125
    assert int(vo.intersection(a, b).array.sum()) == 125
    assert int(vo.difference(a, b).array.sum()) == 1000 - 125
    assert vo.union(a, b).array.dtype == np.uint8
    with pytest.raises(vo.GridMismatchError):
        vo.union(a, vo.Volume(b.array, np.eye(4)))


@pytest.mark.parametrize("mm", [1.0, 2.6, 6.0])
def test_dilation_is_the_anisotropic_ball(mm):
    array = np.zeros(SHAPE, dtype=np.uint8)
    array[30, 25, 12] = 1
    grown = vo.dilate_mm(_grid(array), mm).array.astype(bool)
    ijk = np.stack(np.nonzero(grown), axis=1) - [30, 25, 12]
    dist = np.linalg.norm(ijk * np.asarray(SPACING), axis=1)
    assert np.all(dist <= mm + 1e-6)
    assert grown.sum() == vo.ball_structure(SPACING, mm).sum()  # every offset within mm is present


def test_large_radius_path_matches_structuring_element():
    mask = ellipsoid(grid_affine(SPACING, SHAPE), SHAPE, (0, 0, 0), (9.0, 8.0, 15.0))
    for mm in (3.0, 4.5):
        structure = vo.ball_structure(SPACING, mm)
        assert structure.size > 125  # the distance-transform path is the one under test
        expected_grow = ndimage.binary_dilation(mask.array.astype(bool), structure)
        expected_shrink = ndimage.binary_erosion(mask.array.astype(bool), structure, border_value=0)
        assert np.array_equal(vo.dilate_mm(mask, mm).array.astype(bool), expected_grow)
        assert np.array_equal(vo.erode_mm(mask, mm).array.astype(bool), expected_shrink)


def test_erosion_and_closing_of_a_box():
    box = _grid(_box((20, 15, 6), (40, 35, 18)))
    eroded = vo.erode_mm(box, 2.5)  # 3 voxels in x (0.8 mm), 2 in y, 1 in z
    assert np.array_equal(eroded.array, _box((23, 17, 7), (37, 33, 17)))
    closed = vo.erode_mm(vo.dilate_mm(box, 2.0), 2.0)
    assert np.array_equal(closed.array, box.array)
    assert np.array_equal(vo.erode_mm(box, 0).array, box.array)
    with pytest.raises(vo.VolumeError):
        vo.dilate_mm(box, -1.0)


def test_erosion_treats_outside_the_field_of_view_as_outside():
    full = _grid(np.ones(SHAPE, dtype=np.uint8))
    eroded = vo.erode_mm(full, 1.0)
    assert eroded.array[0].sum() == 0 and eroded.array[30, 25, 12] == 1


def test_fill_holes():
    shell = _box((10, 10, 5), (30, 30, 15)) - _box((12, 12, 7), (28, 28, 13))
    open_cup = shell.copy()
    open_cup[15:20, 15:20, 13:15] = 0  # a channel from the cavity to the outside
    assert np.array_equal(vo.fill_holes(_grid(shell)).array, _box((10, 10, 5), (30, 30, 15)))
    assert np.array_equal(vo.fill_holes(_grid(open_cup)).array, open_cup)


def test_crop_keeps_world_positions():
    image = _grid(np.random.default_rng(1).random(SHAPE).astype(np.float32))
    mask = _grid(_box((20, 15, 6), (30, 25, 12)))
    cropped = vo.crop_to_mask(image, mask, margin_mm=2.0)
    assert cropped.shape == (10 + 2 * 3, 10 + 2 * 2, 6 + 2 * 1)
    # the same world point carries the same value before and after
    world = image.voxel_to_world(np.array([25, 20, 9]))
    ijk = np.round(cropped.world_to_voxel(world)).astype(int)
    assert cropped.array[tuple(ijk)] == image.array[25, 20, 9]
    cropped_mask = vo.crop_to_mask(mask, mask, margin_mm=2.0)
    assert np.allclose(vo.centroid_mm(cropped_mask), vo.centroid_mm(mask))
    edge = vo.crop_to_mask(image, _grid(_box((0, 0, 0), (2, 2, 2))), margin_mm=50.0)
    assert edge.shape[0] <= SHAPE[0] and np.allclose(edge.affine, image.affine)
    with pytest.raises(vo.VolumeError):
        vo.crop_to_mask(image, _grid(np.zeros(SHAPE, dtype=np.uint8)))


def test_keep_and_remove_region():
    image = _grid(np.full(SHAPE, 7, dtype=np.int16))
    mask = _grid(_box((0, 0, 0), (10, 10, 10)))
    kept, removed = vo.keep_region(image, mask), vo.remove_region(image, mask)
    assert kept.array.dtype == np.int16 and int(kept.array.sum()) == 7 * 1000
    assert int(removed.array.sum()) == 7 * (np.prod(SHAPE) - 1000)
    assert int(image.array.sum()) == 7 * np.prod(SHAPE)  # input untouched


def test_normalize_intensity():
    rng = np.random.default_rng(2)
    data = rng.normal(100, 10, SHAPE).astype(np.float32)
    data[0, 0, 0] = 1e6  # a hot voxel must not squash the contrast
    norm = vo.normalize_intensity(_grid(data))
    assert norm.array.dtype == np.float32 and norm.array.min() == 0.0 and norm.array.max() == 1.0
    assert 0.4 < float(np.median(norm.array)) < 0.6
    assert np.all(vo.normalize_intensity(_grid(np.ones(SHAPE))).array == 0)


def test_normalize_intensity_ceiling_keeps_a_bright_region_and_bounds_a_hot_spot():
    rng = np.random.default_rng(4)
    data = rng.normal(100, 5, SHAPE).astype(np.float32)
    bright = (slice(0, 6), slice(0, 6), slice(0, 6))  # 216 voxels above the 99.5th percentile (360 voxels)
    data[bright] = rng.normal(130, 5, (6, 6, 6))
    data[-1, -1, -1] = 1e6
    flat = vo.normalize_intensity(_grid(data)).array
    kept = vo.normalize_intensity(_grid(data), ceiling=3.0).array
    inside = np.zeros(SHAPE, bool)
    inside[bright] = True
    assert float(np.mean(flat[inside] == 1.0)) > 0.4  # ceiling 1 flattens most of the bright region
    assert float(np.mean(kept[inside] >= 3.0)) < 0.01 and float(kept[inside].std()) > 2 * float(flat[inside].std())
    assert kept[-1, -1, -1] == np.float32(3.0) and kept.max() == np.float32(3.0)  # the hot spot is bounded
    assert np.array_equal(kept[~inside & (kept <= 1.0)], flat[~inside & (kept <= 1.0)])  # same scale below 1
    with pytest.raises(vo.VolumeError):
        vo.normalize_intensity(_grid(data), ceiling=0.5)


@pytest.mark.parametrize("rot_deg", [0.0, 17.0])
@pytest.mark.parametrize("codes", ["RAS", "SPL"])
def test_bounding_box_equals_brute_force_over_voxel_centres(rot_deg, codes):
    from tests.voxel_ops.phantoms import rotation

    rng = np.random.default_rng(3)
    array = (ndimage.gaussian_filter(rng.random((30, 26, 14)), 2) > 0.52).astype(np.uint8)
    vol = reoriented(vo.Volume(array, grid_affine(SPACING, array.shape, rotation=rotation("z", rot_deg))), codes)
    xyz = vol.voxel_to_world(np.stack(np.nonzero(vol.array), axis=1))
    half = 0.5 * np.abs(vol.affine[:3, :3]).sum(axis=1)
    lo, hi = vo.bounding_box_mm(vol)
    assert np.allclose(lo, xyz.min(axis=0) - half) and np.allclose(hi, xyz.max(axis=0) + half)
    assert np.allclose(vo.centroid_mm(vol), xyz.mean(axis=0))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("n_inside", [1, 2, 7, 1000])
def test_intensity_stats_match_numpy_for_every_type(dtype, n_inside):
    rng = np.random.default_rng(n_inside)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-1e3, 1e3)
    image = rng.uniform(lo, hi, SHAPE).astype(dtype)
    inside = np.zeros(SHAPE, dtype=bool)
    inside.ravel()[rng.choice(inside.size, n_inside, replace=False)] = True
    stats = vo.intensity_stats(_grid(image), _grid(inside.astype(np.uint8)))
    values = image[inside].astype(np.float64)
    expected = {"mean": values.mean(), "median": np.median(values), "std": values.std(), "min": values.min(),
                "max": values.max()}
    assert stats == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_snr_matches_numpy_definition(dtype):
    rng = np.random.default_rng(5)
    image = rng.normal(300, 40, SHAPE).astype(dtype)
    inside = _box((5, 5, 5), (25, 25, 15)).astype(bool)
    background = _box((40, 30, 2), (55, 45, 20)).astype(bool)
    img = _grid(image)
    signal, noise = image[inside].astype(np.float64), image[background].astype(np.float64)
    assert vo.snr(img, _grid(inside.astype(np.uint8)), _grid(background.astype(np.uint8))) == pytest.approx(
        signal.mean() / noise.std(), rel=1e-9
    )
    assert vo.snr(img, _grid(inside.astype(np.uint8))) == pytest.approx(signal.mean() / signal.std(), rel=1e-9)


def test_fill_holes_matches_scipy_on_a_porous_blob():
    rng = np.random.default_rng(11)
    blob = ndimage.gaussian_filter(rng.random(SHAPE), 1.5) > 0.5
    mask = _grid(blob.astype(np.uint8))
    expected = ndimage.binary_fill_holes(blob)
    assert expected.sum() > blob.sum()  # the blob really has cavities
    assert np.array_equal(vo.fill_holes(mask).array.astype(bool), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.float32])
def test_percentiles_match_numpy(dtype):
    from voxel_ops.intensity import percentiles

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-50.0, 50.0)
    array = rng.uniform(lo, hi, (17, 13, 11)).astype(dtype)
    pcts = (0.0, 0.5, 13.7, 50.0, 99.5, 100.0)
    assert percentiles(array, pcts) == pytest.approx(tuple(np.percentile(array, pcts)), rel=1e-9, abs=1e-9)
    norm = vo.normalize_intensity(_grid(array))
    assert norm.array.min() == 0.0 and norm.array.max() == 1.0
