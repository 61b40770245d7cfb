"""The SynthSeg-style generator and the target table, on a phantom data folder with known sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.synthseg_phantom import phantom_labels, write_phantom_root
from training.synth.synthseg import LabelMaps, Priors, SynthSegGenerator, SynthSettings, split_subjects
from training.synth.synthseg_lesions import LesionSettings, paint_lesions
from vision.targets import (
    LESION_TARGETS,
    SYNTHSEG_STRUCTURES,
    TARGETS,
    UnknownTargetError,
    canonical_target,
    segmentation_labels,
    target_mask,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_phantom_root(tmp_path_factory.mktemp("synthseg"))


@pytest.fixture(scope="module")
def generator(root):
    return SynthSegGenerator(LabelMaps(root), Priors(root))


# -- target table --------------------------------------------------------------------------------
def test_table_names_every_synthseg_structure_once():
    assert len(SYNTHSEG_STRUCTURES) == 32
    labels = [next(iter(TARGETS[n].labels)) for n in SYNTHSEG_STRUCTURES]
    assert sorted(labels) == sorted({2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
                                     41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60})


def test_groups_are_made_of_their_parts():
    assert TARGETS["hippocampus"].labels == {17, 53}
    assert TARGETS["lateral ventricles"].labels == {4, 5, 43, 44}
    assert TARGETS["ventricles"].labels == {4, 5, 43, 44, 14, 15}
    assert 24 not in TARGETS["brain"].labels and 24 in TARGETS["csf"].labels
    assert TARGETS["csf"].labels >= TARGETS["ventricles"].labels
    assert TARGETS["intracranial volume"].labels == TARGETS["brain"].labels | TARGETS["csf"].labels
    assert TARGETS["gray matter"].labels == {3, 42, 8, 47, 10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54,
                                             26, 58, 28, 60}
    assert TARGETS["white matter"].labels == {2, 41, 7, 46}
    assert not TARGETS["left hemisphere"].labels & TARGETS["right hemisphere"].labels
    assert {14, 15, 16, 24}.isdisjoint(TARGETS["left hemisphere"].labels)


def test_synonyms_and_unknown_targets():
    assert canonical_target("  Grey   Matter ") == "gray matter"
    assert canonical_target("brainstem") == "brain-stem"
    assert canonical_target("cerebrospinal fluid") == "csf"
    assert canonical_target("tumor") == "lesion"
    with pytest.raises(UnknownTargetError) as err:
        canonical_target("spleen")
    assert "spleen" in str(err.value) and "left hippocampus" in str(err.value)


def test_segmentation_space_folds_generation_labels():
    seg = segmentation_labels(np.array([25, 57, 136, 164, 30, 502, 2, 1012]))
    assert seg.tolist() == [2, 41, 4, 44, 0, 0, 2, 1012]


# -- label maps and generator ----------------------------------------------------------------------
def test_label_maps_are_ras_and_cropped(root):
    maps = LabelMaps(root, ["training_seg_01"])
    ras = maps.maps[0].numpy()
    raw = phantom_labels()
    # cropping keeps every voxel: counts per label are those of the file
    for label in (2, 41, 17, 53, 507):
        assert int((ras == label).sum()) == int((raw == label).sum())
    # RAS: the left white matter (2) lies at smaller x than the right (41)
    assert np.argwhere(ras == 2)[:, 0].mean() < np.argwhere(ras == 41)[:, 0].mean()
    # LIA's second axis is inferior: the brain-stem (below the centre in the file) must be low in S
    assert np.argwhere(ras == 16)[:, 2].mean() < np.argwhere(ras == 10)[:, 2].mean()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="label maps"):
        LabelMaps(tmp_path)


def test_split_holds_out_subjects_17_and_18(tmp_path):
    (tmp_path / "label_maps").mkdir()
    for i in range(1, 19):
        (tmp_path / "label_maps" / f"training_seg_{i:02d}.nii.gz").touch()
    train, val = split_subjects(tmp_path)
    assert val == ["training_seg_17", "training_seg_18"] and len(train) == 16 and not set(train) & set(val)


def test_unaugmented_whole_sample_keeps_the_anatomy(generator):
    s = generator.sample(np.random.default_rng(0), patch_mm=None, subject=0, augment=False, contrast="T1",
                         thick=False, skull_strip=False)
    assert s.spacing == (1.0, 1.0, 1.0) and s.image.shape == s.labels.shape
    raw = phantom_labels()
    # the whole-volume box keeps every intracranial voxel: volumes are those of the file
    for target in ("left cerebral white matter", "right hippocampus", "brain", "csf"):
        assert int(target_mask(s.labels.numpy(), target).sum()) == int(target_mask(segmentation_labels(raw),
                                                                                     target).sum())


def test_contrast_orderings(generator):
    def mean_of(sample, labels):
        m = np.isin(sample.labels.numpy(), labels)
        return float(sample.image.numpy()[m].mean())

    rng = np.random.default_rng(1)
    t1 = generator.sample(rng, patch_mm=None, subject=0, augment=False, contrast="T1", thick=False,
                          skull_strip=False)
    t2 = generator.sample(rng, patch_mm=None, subject=0, augment=False, contrast="T2", thick=False,
                          skull_strip=False)
    assert mean_of(t1, [2, 41]) > mean_of(t1, [3, 42]) > mean_of(t1, [24])
    assert mean_of(t2, [24]) > mean_of(t2, [3, 42]) > mean_of(t2, [2, 41])


def test_thick_slices_and_patches(generator):
    s = generator.sample(np.random.default_rng(2), patch_mm=40, thick=True, slice_mm=5)
    axis = s.spacing.index(5.0)
    assert sorted(s.spacing) == [1.0, 1.0, 5.0]
    assert s.image.shape[axis] == 8 and s.labels.shape == s.image.shape
    assert all(n == 40 for i, n in enumerate(s.image.shape) if i != axis)
    assert torch.isfinite(s.image).all() and float(s.image.min()) >= 0


def test_skull_strip_leaves_nothing_outside_the_intracranial_space(generator):
    s = generator.sample(np.random.default_rng(3), patch_mm=None, subject=1, augment=False, skull_strip=True,
                         thick=False)
    outside = s.labels.numpy() == 0
    assert float(s.image.numpy()[outside].max()) == 0.0
    assert float(s.image.numpy()[~outside].max()) > 0.0


def test_lesions_are_painted_with_their_side(root):
    maps = LabelMaps(root, ["training_seg_01"])
    rng = np.random.default_rng(4)
    sided = 0
    for _ in range(10):
        labels = maps.maps[0].to(torch.int64).clone()
        before = labels.clone()
        painted = paint_lesions(rng, labels, LesionSettings(probability=1.0, radius_mm=(3, 6), edema_prob=0.0))
        changed = labels != before
        for lesion in painted:
            hemi = int(before[lesion.center])
            assert hemi in (2, 41)
            sided += 1
            side_target = "right hemisphere" if lesion.right else "left hemisphere"
            assert (hemi == 41) == lesion.right
            assert target_mask(labels[lesion.center].reshape(1).numpy(), side_target)[0]
        # only parenchyma becomes lesion: never CSF, skull or air
        assert not np.isin(before[changed].numpy(), [0, 24, 515, 507]).any()
        assert set(np.unique(labels[changed].numpy())) <= {1001, 1002, 1003, 1004, 1011, 1012, 1013, 1014}
    assert sided >= 5


def test_generator_with_lesions_lets_lesion_targets_be_drawn(root):
    gen = SynthSegGenerator(LabelMaps(root), Priors(root), SynthSettings(lesion_probability=1.0))
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(4):
        s = gen.sample(rng, patch_mm=None)
        found += int(any(target_mask(s.labels.numpy(), t).any() for t in LESION_TARGETS))
    assert found >= 3


def test_voxagent_functions_lists_the_target_table(capsys):
    import json

    from cli.main import main as voxagent

    assert voxagent(["functions", "--targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(TARGETS)
    hippo = next(r for r in rows if r["name"] == "left hippocampus")
    assert hippo["labels"] == [17] and hippo["side"] == "left"
    assert voxagent(["functions", "--targets"]) == 0
    assert "brain-stem" in capsys.readouterr().out


def test_head_point_share_moves_patches_off_the_brain(root):
    """With every centre drawn over the whole field of view, some small patches hold no brain at all;
    with brain-voxel centres (the default) every patch holds some."""
    import dataclasses

    maps, priors = LabelMaps(root), Priors(root)
    base = SynthSegGenerator(maps, priors)
    spread = SynthSegGenerator(maps, priors, dataclasses.replace(base.settings, head_point_share=1.0))

    def brain_share(gen: SynthSegGenerator, seed: int) -> float:
        s = gen.sample(np.random.default_rng(seed), patch_mm=16, thick=False)
        return float(target_mask(s.labels.numpy(), "brain").mean())

    assert min(brain_share(base, k) for k in range(12)) > 0.0
    assert min(brain_share(spread, k) for k in range(12)) == 0.0
