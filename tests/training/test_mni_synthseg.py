"""The MNI152 template as extra anatomy of the vision trainer (training.synth.mni_synthseg, mni_share)."""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.training.synthseg_phantom import write_phantom_root
from training.synth import synthseg
from training.synth.anatomy import load_template_map
from training.synth.mni_synthseg import MNI_SUPERVISED, MNI_TARGETS, PAD_MM, MNILabelMaps
from training.synth.synthseg import LabelMaps, Priors, SynthSegGenerator, SynthSettings
from training.vision_pretrain import BANK_TARGETS, VARIANTS, PretrainConfig, SynthStream, VisionPretrainer
from vision.targets import LESION_TARGETS, target_mask

SUBJECTS = ["training_seg_01", "training_seg_02", "training_seg_03"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_phantom_root(tmp_path_factory.mktemp("synthseg"))


@pytest.fixture(scope="module")
def mni_gen(data_root):
    return SynthSegGenerator(MNILabelMaps(), Priors(data_root), SynthSettings(elastic_mm=0.0, thick_slice_prob=0.0))


@pytest.fixture(scope="module")
def template_masks():
    """Brain, CSF and intracranial space straight from the template's maps (1 mm, the template's grid)."""
    t1, _ = load_template_map("t1")
    gm, _ = load_template_map("gm")
    wm, _ = load_template_map("wm")
    parenchyma = (gm + wm) >= 0.5
    pieces, _ = ndimage.label(parenchyma)
    parenchyma = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    brain = ndimage.binary_fill_holes(parenchyma)
    hull = ndimage.binary_fill_holes(ndimage.binary_dilation((gm + wm) > 0.3, iterations=3))
    icv = brain | (hull & (t1 > 0.05))
    return {"brain": brain, "csf": icv & ~parenchyma, "intracranial volume": icv}


@pytest.fixture(scope="module")
def template_counts(template_masks):
    return {name: int(m.sum()) for name, m in template_masks.items()}


def smoke(data_root, **changes) -> PretrainConfig:
    return dataclasses.replace(VARIANTS["smoke"], data_root=str(data_root), threads=1, autocast_bf16=False,
                               **changes)


def test_supervised_set_is_tissue_level_only():
    assert set(MNI_TARGETS) == {"brain", "csf", "intracranial volume"}
    assert set(MNI_SUPERVISED) == set(MNI_TARGETS) | set(LESION_TARGETS)
    for never in ("gray matter", "white matter", "cerebral cortex", "left hemisphere", "ventricles",
                  "left hippocampus", "brain-stem"):
        assert never not in MNI_SUPERVISED


def test_unaugmented_mni_sample_truth_equals_the_template_count(mni_gen, template_counts):
    s = mni_gen.sample(np.random.default_rng(0), patch_mm=None, augment=False, thick=False)
    assert s.subject == "mni152_2009" and s.spacing == (1.0, 1.0, 1.0)
    labels = s.labels.numpy()
    for name, count in template_counts.items():
        assert int(target_mask(labels, name).sum()) == count, name
    assert 1700 < template_counts["brain"] / 1000 < 1800  # mL at 1 mm: the (large) MNI152 brain
    assert 140 < template_counts["csf"] / 1000 < 180


def test_deformed_mni_sample_truth_is_the_template_under_the_same_geometry(mni_gen, template_masks, monkeypatch):
    """Full augmentation (affine, elastic field): the truth is the template's own masks warped by the grid."""
    gen = SynthSegGenerator(mni_gen.maps, mni_gen.priors, SynthSettings(thick_slice_prob=0.0))
    grids = []
    draw = gen._sample_grid

    def recording(*args):
        grids.append(draw(*args))
        return grids[-1]

    monkeypatch.setattr(gen, "_sample_grid", recording)
    s = gen.sample(np.random.default_rng(2), patch_mm=128)
    assert len(grids) == 1
    crop = tuple(slice(int(o), int(o) + n) for o, n in zip(gen.maps.crop_origin, gen.maps.maps[0].shape))
    for name, mask in template_masks.items():
        source = np.ascontiguousarray(np.pad(mask, PAD_MM)[crop])  # the map's padding and crop, nothing else
        warped = torch.nn.functional.grid_sample(torch.from_numpy(source)[None, None].float(), grids[0],
                                                 mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
        want_ml = float(warped.sum()) / 1000
        got_ml = float(target_mask(s.labels.numpy(), name).sum()) / 1000
        assert got_ml == want_ml and want_ml > 10, name


def test_scaled_mni_sample_volume_follows_the_affine(mni_gen, template_counts, monkeypatch):
    scale = np.diag([1.1, 0.95, 1.05])  # output mm -> template mm; a sample voxel covers det(scale) template mm^3
    monkeypatch.setattr(synthseg, "_random_affine", lambda rng, s: scale)
    gen = SynthSegGenerator(mni_gen.maps, mni_gen.priors, dataclasses.replace(mni_gen.settings, center_pull=1.0))
    s = gen.sample(np.random.default_rng(1), patch_mm=200, thick=False)
    voxel_ml = float(np.prod(s.spacing)) / 1000
    # the thin sulcal CSF is not volume-preserving under nearest resampling on an axis-aligned grid
    # (-4 % here); the two large masks are, to well under 1 %
    for name in ("brain", "intracranial volume"):
        got_ml = float(target_mask(s.labels.numpy(), name).sum()) * voxel_ml
        want_ml = template_counts[name] / 1000 / float(np.linalg.det(scale))
        assert got_ml == pytest.approx(want_ml, rel=0.01), name


def test_mni_share_zero_leaves_the_stream_as_it_was(data_root, monkeypatch):
    cfg = smoke(data_root, whole_volume_share=0.3, synth={"lesion_probability": 0.5})
    import training.synth.mni_synthseg as mni

    monkeypatch.setattr(mni, "MNILabelMaps", lambda: pytest.fail("built the MNI map at mni_share=0"))
    got = list(itertools.islice(iter(SynthStream(cfg, SUBJECTS, 0)), 3))
    # the stream's recipe before mni_share existed
    gen = SynthSegGenerator(LabelMaps(data_root, SUBJECTS), Priors(data_root), SynthSettings(**cfg.synth))
    rng = np.random.default_rng([cfg.seed, 0])
    for sample in got:
        whole = rng.random() < cfg.whole_volume_share
        want = gen.sample(rng, patch_mm=None if whole else 32)
        assert sample["supervised"] is None and sample["patch_mm"] == (0 if whole else 32)
        assert torch.equal(sample["labels"], want.labels) and sample["spacing"] == want.spacing
        assert sample["contrast"] == want.contrast


def test_mni_share_one_streams_mni_samples(data_root):
    first = next(iter(SynthStream(smoke(data_root, mni_share=1.0), SUBJECTS, 0)))
    assert first["supervised"] == MNI_SUPERVISED
    assert set(first["present"].tolist()) <= {0, 2, 3, 4, 24, 41, 42, 43}  # segmentation space of the map


def test_trainer_draws_only_supervised_targets_on_mni_samples(tmp_path, data_root):
    drawn: list[tuple[tuple[str, ...] | None, list[str]]] = []

    class Recording(VisionPretrainer):
        def choose_targets(self, present, k=None, supervised=None):
            chosen = super().choose_targets(present, k, supervised)
            drawn.append((supervised, [BANK_TARGETS[i] for i in chosen]))
            return chosen

    trainer = Recording(tmp_path / "run", smoke(data_root, mni_share=1.0, targets_per_step=4))
    trainer.fit(max_steps=2, workers=0)
    assert len(drawn) == 2
    for supervised, names in drawn:
        assert tuple(supervised) == MNI_SUPERVISED
        assert sorted(names) == sorted(MNI_TARGETS)  # 4 asked, only 3 defined: each once
    logged = (tmp_path / "run" / "targets.csv").read_text().splitlines()[1:]
    assert {row.split(",")[1] for row in logged} == set(MNI_TARGETS)
    # with lesions on, lesion targets may be drawn too, and still nothing else
    lesions = Recording(tmp_path / "lesions", smoke(data_root, mni_share=1.0, synth={"lesion_probability": 1.0}))
    present = np.array([0, 2, 3, 24, 41, 1001, 1004])
    names = {BANK_TARGETS[i] for _ in range(60) for i in lesions.choose_targets(present, 4, MNI_SUPERVISED)}
    assert names <= set(MNI_SUPERVISED) and names & set(LESION_TARGETS)


def test_mni_share_is_checked_and_resumable(tmp_path, data_root):
    with pytest.raises(ValueError, match="mni_share"):
        PretrainConfig(mni_share=1.5)
    run_dir = tmp_path / "run"
    VisionPretrainer(run_dir, smoke(data_root)).fit(max_steps=1, workers=0)
    VisionPretrainer(run_dir, smoke(data_root, mni_share=0.2))
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == ["mni_share"] and history[-1]["old"] == {"mni_share": 0.0}
    assert PretrainConfig.from_json(run_dir / "config.json").mni_share == 0.2
    from training.vision_baseline import MultiLabelPretrainer

    with pytest.raises(ValueError, match="mni_share"):
        MultiLabelPretrainer(tmp_path / "baseline", dataclasses.replace(
            VARIANTS["multilabel_baseline"], data_root=str(data_root), mni_share=0.1))
