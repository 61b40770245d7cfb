"""Synthesis: determinism, geometry under random headers, lesion ground truth matching label maps."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from training.synth import CaseSpec, LesionSpec, ScanSpec, synthesize_case
from training.synth.lesions import HYPER, HYPO, ISO

LESION_SPEC = CaseSpec(
    scans=(ScanSpec("t1", "T1"), ScanSpec("t1c", "T1C"), ScanSpec("flair", "FLAIR"), ScanSpec("dwi", "DWI"),
           ScanSpec("adc", "ADC")),
    lesions=LesionSpec(count=(1, 3), heterogeneous_prob=0.5, edema_prob=0.5),
)
LONG_SPEC = CaseSpec(
    scans=(ScanSpec("flair_a", "FLAIR", 0), ScanSpec("flair_b", "FLAIR", 1)),
    lesions=LesionSpec(count=(1, 1), growth_range=(2.0, 2.6), stable_prob=0.0, radius_mm=(9.0, 14.0)),
)


def _ratio(case, scan: str, lesion: int) -> float:
    img = case.scans[scan].array
    les = case.mask("lesion", scan, lesion=lesion).array > 0
    wm = case.mask("white matter", scan).array > 0
    return float(img[les].mean() / img[wm].mean())


def test_same_seed_same_arrays_and_different_seed_differs():
    a, b, c = (synthesize_case(s, LESION_SPEC) for s in (7, 7, 8))
    for name in a.scans:
        np.testing.assert_array_equal(a.scans[name].array, b.scans[name].array)
        np.testing.assert_array_equal(a.labels[name].array, b.labels[name].array)
        np.testing.assert_array_equal(a.scans[name].affine, b.scans[name].affine)
    assert [t.volume_ml for t in a.lesions] == [t.volume_ml for t in b.lesions]
    assert any(a.scans[n].shape != c.scans[n].shape or not np.array_equal(a.scans[n].array, c.scans[n].array)
               for n in a.scans)


@pytest.mark.parametrize("seed", [0, 3])
def test_random_orientation_preserves_world_positions(seed):
    spec = CaseSpec(scans=(ScanSpec("t2", "T2"),), lesions=LesionSpec(count=(1, 1)))
    ras = synthesize_case(seed, replace(spec, reorient=False))
    rnd = synthesize_case(seed, spec)
    assert ras.labels["t2"].orientation == ("R", "A", "S")
    lab0, lab1 = ras.labels["t2"], rnd.labels["t2"]
    assert sorted(lab0.shape) == sorted(lab1.shape)
    rng = np.random.default_rng(seed)
    ijk1 = np.stack([rng.integers(0, n, 4000) for n in lab1.shape], axis=1)
    ijk0 = lab0.world_to_voxel(lab1.voxel_to_world(ijk1))
    np.testing.assert_allclose(ijk0, np.rint(ijk0), atol=1e-6)
    ijk0 = np.rint(ijk0).astype(int)
    got = lab1.array[tuple(ijk1.T)]
    want = lab0.array[tuple(ijk0.T)]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rnd.scans["t2"].array[tuple(ijk1.T)], ras.scans["t2"].array[tuple(ijk0.T)])


def test_images_follow_labels_t1_contrast():
    for seed in range(3):
        case = synthesize_case(seed)
        img = case.scans["t1"].array
        m = {t: img[case.mask(t, "t1").array > 0].mean()
             for t in ("white matter", "gray matter", "cerebrospinal fluid")}
        assert m["white matter"] > m["gray matter"] > m["cerebrospinal fluid"]
        assert case.scans["t1"].meta.modality == "T1"


def test_target_masks_partition_the_brain():
    case = synthesize_case(11, LESION_SPEC)
    brain = case.mask("brain", "flair").array
    parts = sum(case.mask(t, "flair").array.astype(int) for t in
                ("gray matter", "white matter", "cerebrospinal fluid", "lesion", "edema"))
    np.testing.assert_array_equal(parts, brain)
    halves = case.mask("left hemisphere", "flair").array.astype(int) + case.mask("right hemisphere", "flair").array
    np.testing.assert_array_equal(halves, brain)
    vol_ml = brain.sum() * case.labels["flair"].voxel_volume_mm3 / 1000
    assert 1200 < vol_ml < 2600  # a plausible intracranial volume after random scaling


def test_lesion_truth_matches_label_maps():
    for seed in range(4):
        case = synthesize_case(seed, LESION_SPEC)
        assert case.lesions
        for truth in case.lesions:
            mask = case.mask("lesion", "flair", lesion=truth.index)
            expected = mask.array.sum() * mask.voxel_volume_mm3 / 1000
            assert truth.volume_ml["flair"] == pytest.approx(expected, rel=1e-6)
            assert truth.volume_ml["flair"] > 0
            # side recorded from the template agrees with where the voxels are in this scan's world
            world = mask.voxel_to_world(np.argwhere(mask.array > 0))
            frac_right = float((world[:, 0] > 0).mean())
            if truth.side == "left":
                assert frac_right < 0.1
            elif truth.side == "right":
                assert frac_right > 0.9
            else:
                assert 0.05 < frac_right < 0.95
            right_half = case.mask("right hemisphere", "flair").array > 0
            assert (truth.side == "right") == bool(right_half[mask.array > 0].mean() > 0.95)


def test_recorded_signal_classes_show_in_the_images():
    checked = 0
    for seed in range(5):
        case = synthesize_case(seed, LESION_SPEC)
        for truth in case.lesions:
            if truth.volume_ml["t1"] < 0.3:
                continue
            for scan, fam in (("t1", "T1"), ("t1c", "T1C"), ("flair", "FLAIR"), ("dwi", "DWI"), ("adc", "ADC")):
                r = _ratio(case, scan, truth.index)
                cls = truth.signal[fam]
                if cls == HYPER:
                    assert r > 1.2, (seed, fam, r)
                elif cls == HYPO:
                    assert r < 0.8, (seed, fam, r)
                else:
                    assert cls == ISO and 0.9 < r < 1.1, (seed, fam, r)
                checked += 1
            assert truth.enhancing == (truth.signal["T1C"] == HYPER and truth.signal["T1"] != HYPER)
            assert truth.restricting == (truth.signal["DWI"] == HYPER and truth.signal["ADC"] == HYPO)
    assert checked >= 10


def test_growth_between_sessions_is_recorded():
    for seed in range(3):
        case = synthesize_case(seed, LONG_SPEC)
        assert case.sessions[0] < case.sessions[1]
        assert case.scans["flair_a"].meta.acquisition_date == case.sessions[0]
        (truth,) = case.lesions
        assert truth.growth_factor >= 2.0
        v0, v1 = truth.volume_ml["flair_a"], truth.volume_ml["flair_b"]
        assert truth.growth_percent == pytest.approx(100 * (v1 - v0) / v0)
        assert truth.growth_percent > 40


def test_thick_slices_have_the_requested_spacing():
    spec = CaseSpec(thick_prob=1.0, slice_mm=(5.0, 5.0), inplane_mm=(2.0, 2.0))
    axes = set()
    for seed in range(4):
        vol = synthesize_case(seed, spec).scans["t1"]
        sp = np.array(vol.spacing)
        assert np.sum(np.isclose(sp, 5.0)) == 1 and np.sum(np.isclose(sp, 2.0)) == 2
        axes.add(vol.orientation[int(np.argmax(sp))])
    assert len(axes) >= 2  # the thick axis varies


def test_shells_are_in_the_image_but_not_in_brain_targets():
    spec = CaseSpec(shells_prob=1.0, crop_prob=0.0, margin_mm=(25.0, 30.0))
    case = synthesize_case(5, spec)
    skull = case.mask("skull", "t1").array > 0
    assert skull.sum() > 1000
    assert not np.any(skull & (case.mask("brain", "t1").array > 0))
    air = case.labels["t1"].array == 0
    img = case.scans["t1"].array
    assert abs(img[skull].mean() - img[air].mean()) > 0  # shells carry their own intensity


def test_real_template_t1_option_keeps_t1_contrast_and_changes_the_image():
    plain = synthesize_case(4, CaseSpec(thick_prob=0.0))
    real = synthesize_case(4, CaseSpec(thick_prob=0.0, template_t1_prob=1.0))
    np.testing.assert_array_equal(plain.labels["t1"].array, real.labels["t1"].array)
    assert not np.array_equal(plain.scans["t1"].array, real.scans["t1"].array)
    img = real.scans["t1"].array
    m = {t: img[real.mask(t, "t1").array > 0].mean() for t in ("white matter", "gray matter", "cerebrospinal fluid")}
    assert m["white matter"] > m["gray matter"] > m["cerebrospinal fluid"]
