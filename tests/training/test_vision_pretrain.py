"""Stage-1 vision pretraining: a run starts, checkpoints, stops on SIGTERM, resumes, refuses typos."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.training.synthseg_phantom import write_phantom_root
from training.vision_eval import markdown, random_orientation, report, run
from training.vision_pretrain import VARIANTS, PretrainConfig, VisionPretrainer, export, main
from vision.targets import target_mask

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_phantom_root(tmp_path_factory.mktemp("synthseg"))


def smoke(data_root, **changes) -> PretrainConfig:
    return dataclasses.replace(VARIANTS["smoke"], data_root=str(data_root), threads=1, **changes)


def test_run_checkpoints_and_resumes(tmp_path, data_root):
    run_dir = tmp_path / "run"
    trainer = VisionPretrainer(run_dir, smoke(data_root))
    trainer.fit(max_steps=3, workers=0)
    meta = json.loads((run_dir / "trainer_state.json").read_text())
    assert meta["step"] == 3
    for name in ("vision.safetensors", "vision_config.json", "phi_bank.safetensors", "trainer_state.safetensors",
                 "config.json", "log.csv"):
        assert (run_dir / name).is_file(), name
    weights = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    again = VisionPretrainer(run_dir)  # config read from the run directory
    assert again.step == 3 and again.config == trainer.config
    for k, v in again.net.state_dict().items():
        assert np.array_equal(v.numpy(), weights[k].numpy()), k
    assert np.allclose(again.phi.targets.detach().numpy(), trainer.phi.targets.detach().numpy())
    again.fit(max_steps=5, workers=0)
    rows = (run_dir / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]


def test_resume_refuses_a_changed_network_and_records_a_schedule_change(tmp_path, data_root):
    run_dir = tmp_path / "run"
    VisionPretrainer(run_dir, smoke(data_root)).fit(max_steps=1, workers=0)
    wider = smoke(data_root, vision={**VARIANTS["smoke"].vision, "channels": (8, 8, 8)})
    with pytest.raises(ValueError, match="vision"):
        VisionPretrainer(run_dir, wider)
    VisionPretrainer(run_dir, smoke(data_root, lr=1e-4))
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == ["lr"]
    # resuming with the same config again records nothing, from Python or from the command line
    VisionPretrainer(run_dir, smoke(data_root, lr=1e-4))
    (tmp_path / "same.json").write_text((run_dir / "config.json").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "training.vision_pretrain", "--run", str(run_dir), "--config",
                           str(tmp_path / "same.json"), "--max-steps", "1", "--workers", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len((run_dir / "config_history.jsonl").read_text().splitlines()) == len(history)


def test_config_typos_fail_up_front(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lr": 1e-3, "target_per_step": 2}))
    with pytest.raises(ValueError, match="target_per_step"):
        PretrainConfig.from_json(bad)
    with pytest.raises(ValueError, match="unknown vision config keys"):
        PretrainConfig(vision={"chanels": (4, 8)})
    with pytest.raises(TypeError):
        PretrainConfig(synth={"lesion_prob": 0.3})
    assert main(["--run", str(tmp_path / "r"), "--config", str(bad)]) == 2


def test_sigterm_saves_the_last_finished_step(tmp_path, data_root):
    run_dir = tmp_path / "run"
    env = {**os.environ, "VOXAGENT_SYNTHSEG_DIR": str(data_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.vision_pretrain", "--run", str(run_dir),
                             "--variant", "smoke", "--workers", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = run_dir / "log.csv"
    try:
        deadline = time.monotonic() + 300  # a generous bound on a stalled process, not a speed check
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no training step logged"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    meta = json.loads((run_dir / "trainer_state.json").read_text())
    last_logged = int(log.read_text().strip().splitlines()[-1].split(",")[0])
    assert meta["step"] >= last_logged >= 2


def test_random_orientation_is_undone_by_the_affine():
    rng = np.random.default_rng(0)
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    for seed in range(6):
        out, affine, _, _ = random_orientation(np.random.default_rng(seed), arr, (1.0, 2.0, 3.0))
        # each voxel's world position is the same as in the RAS original (affine diag(1, 2, 3))
        idx = np.array(np.unravel_index(rng.integers(out.size), out.shape))
        world = affine[:3, :3] @ idx + affine[:3, 3]
        ras_idx = np.round(world / np.array([1.0, 2.0, 3.0])).astype(int)
        assert out[tuple(idx)] == arr[tuple(ras_idx)]


def test_vision_eval_reports_dice_and_independent_volumes(tmp_path, data_root):
    run_dir = tmp_path / "run"
    VisionPretrainer(run_dir, smoke(data_root)).fit(max_steps=2, workers=0)
    model = export(run_dir, tmp_path / "model")
    targets = ["brain", "left cerebral white matter", "hippocampus"]
    results = run(model, data_root, subjects=["training_seg_01"], targets=targets)
    assert {r.condition for r in results} == {"t1_1mm", "random_5mm"}
    for r in results:
        assert set(r.dice) == set(targets) and all(0.0 <= d <= 1.0 for d in r.dice.values())
    t1 = next(r for r in results if r.condition == "t1_1mm")
    # independent count: the phantom's left WM ellipsoid shell, deformed by at most +-15 % per axis
    from tests.training.synthseg_phantom import phantom_labels
    raw_ml = float(target_mask(phantom_labels(), "left cerebral white matter").sum()) / 1000
    assert 0.55 * raw_ml < t1.truth_ml["left cerebral white matter"] < 1.6 * raw_ml
    rep = report(results)
    assert set(rep["conditions"]) == {"t1_1mm", "random_5mm"}
    assert "| brain |" in markdown(rep)


def test_multilabel_baseline_trains_and_is_scored_by_label_sets(tmp_path, data_root):
    from training.vision_baseline import CLASS_LABELS, MultiLabelPretrainer, class_lut

    lut = class_lut()
    assert len(CLASS_LABELS) == 37 and lut[1012] == lut[1002] != 0 and lut[17] != lut[53]
    config = smoke(data_root, trainer="MultiLabelPretrainer",
                   vision={**VARIANTS["smoke"].vision, "baseline": True, "out_channels": len(CLASS_LABELS)})
    run_dir = tmp_path / "baseline"
    trainer = MultiLabelPretrainer(run_dir, config)
    trainer.fit(max_steps=2, workers=0)
    assert json.loads((run_dir / "trainer_state.json").read_text())["step"] == 2
    with pytest.raises(ValueError, match="out_channels"):
        MultiLabelPretrainer(tmp_path / "wrong", smoke(data_root, trainer="MultiLabelPretrainer"))
    model = export(run_dir, tmp_path / "model")
    results = run(model, data_root, conditions=["t1_1mm"], subjects=["training_seg_02"],
                  targets=["brain", "hippocampus"])
    assert all(0.0 <= d <= 1.0 for d in results[0].dice.values())
    # the CLI picks the trainer class named in the run's config
    assert main(["--run", str(run_dir), "--max-steps", "3", "--workers", "0"]) == 0
    assert json.loads((run_dir / "trainer_state.json").read_text())["step"] == 3


def test_voxagent_eval_vision_writes_json_and_markdown(tmp_path, capsys):
    from cli.main import main as voxagent

    data = write_phantom_root(tmp_path / "data", numbers=(1, 17, 18))
    run_dir = tmp_path / "run"
    VisionPretrainer(run_dir, smoke(data)).fit(max_steps=1, workers=0)
    report_dir = tmp_path / "report"
    assert voxagent(["eval", "--vision", "--model", str(run_dir), "--data", str(data),
                     "--report", str(report_dir)]) == 0
    rep = json.loads((report_dir / "vision_eval.json").read_text())
    assert rep["conditions"]["t1_1mm"]["subjects"] == ["training_seg_17", "training_seg_18"]
    assert len(rep["scans"]) == 4 and "mean_32" in rep["conditions"]["random_5mm"]
    assert "### t1_1mm" in (report_dir / "vision_eval.md").read_text()
    assert voxagent(["eval", "--vision", "--model", str(tmp_path / "missing")]) == 2
    assert "no vision.safetensors" in capsys.readouterr().err


def test_per_target_log_and_summary(tmp_path, data_root, capsys):
    from training.vision_pretrain import target_summary

    run_dir = tmp_path / "run"
    VisionPretrainer(run_dir, smoke(data_root)).fit(max_steps=3, workers=0)
    rows = (run_dir / "targets.csv").read_text().strip().splitlines()
    assert rows[0] == "step,target,dice,truth_voxels" and len(rows) == 1 + 3 * 2  # 2 targets per smoke step
    summary = target_summary(run_dir)
    assert sum(n for _, _, n in summary) == 6 and all(0 <= d <= 1 for _, d, _ in summary)
    assert [d for _, d, _ in summary] == sorted(d for _, d, _ in summary)
    assert main(["--run", str(run_dir), "--summary"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(summary)


def test_a_non_finite_bf16_step_is_redone_in_fp32_and_a_real_divergence_stops(tmp_path, data_root):
    trainer = VisionPretrainer(tmp_path / "run", smoke(data_root, autocast_bf16=True))
    real = trainer._forward_backward
    calls = []

    def flaky(sample, chosen, masks, bf16):
        calls.append(bf16)
        return None if bf16 else real(sample, chosen, masks, bf16)

    trainer._forward_backward = flaky
    trainer.fit(max_steps=2, workers=0)
    assert calls == [True, False, True, False] and trainer.fp32_retries == 2 and trainer.step == 2
    import torch
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())
    trainer._forward_backward = lambda *a: None
    with pytest.raises(FloatingPointError, match="fp32"):
        trainer.fit(max_steps=3, workers=0)


def test_difficulty_sampling_favours_targets_drawn_badly(tmp_path, data_root):
    trainer = VisionPretrainer(tmp_path / "run", smoke(data_root, target_sampling="difficulty"))
    from training.vision_pretrain import BANK_TARGETS

    easy, hard = BANK_TARGETS.index("brain"), BANK_TARGETS.index("left hippocampus")
    trainer.running_dice = {"brain": 0.95, "left hippocampus": 0.0}
    w = trainer.target_weights([easy, hard])
    assert w[1] > 4 * w[0] and abs(w.sum() - 1) < 1e-9
    trainer.fit(max_steps=2, workers=0)
    assert trainer.running_dice  # updated from the steps' per-target Dice, and saved for a resume
    again = VisionPretrainer(tmp_path / "run")
    assert again.running_dice == pytest.approx(trainer.running_dice)
    assert VisionPretrainer(tmp_path / "u", smoke(data_root)).target_weights([easy, hard]) is None
    with pytest.raises(ValueError, match="target_sampling"):
        smoke(data_root, target_sampling="hardest")


def test_dead_targets_restart_from_their_other_side_or_smallest_container(tmp_path, data_root):
    """A target whose output never left ~0 on samples that hold it gets a living phi back."""
    from training.vision_pretrain import BANK_TARGETS, DEAD_LOGIT, REVIVE_MIN_DRAWS

    trainer = VisionPretrainer(tmp_path / "run", smoke(data_root, revive_every=2))
    trainer.fit(max_steps=1, workers=0)  # optimizer moments exist for the phi rows
    idx = {n: BANK_TARGETS.index(n) for n in ("right hippocampus", "left hippocampus", "amygdala",
                                               "left amygdala", "right amygdala", "lesion", "brain")}
    dead = ["right hippocampus", "amygdala", "left amygdala", "right amygdala", "lesion"]
    trainer.present_draws.clear()
    trainer.peak_logit.clear()
    for name in dead:
        trainer.note_peaks([idx[name]] * REVIVE_MIN_DRAWS, [DEAD_LOGIT - 3] * REVIVE_MIN_DRAWS,
                           [50] * REVIVE_MIN_DRAWS)
    trainer.note_peaks([idx["brain"]], [DEAD_LOGIT - 3], [0])  # absent from its sample: not evidence
    for name in ("left hippocampus", "deep gray matter", "brain"):
        trainer.note_peaks([BANK_TARGETS.index(name)] * REVIVE_MIN_DRAWS, [2.0] * REVIVE_MIN_DRAWS,
                           [50] * REVIVE_MIN_DRAWS)
    # drawn too rarely to be called dead, and never seen alive: no source for its other side
    trainer.note_peaks([BANK_TARGETS.index("left accumbens")], [DEAD_LOGIT - 3], [20])
    assert trainer.revival_source("right accumbens", ["right accumbens"]) == "deep gray matter"
    assert sorted(trainer.dead_targets()) == sorted(dead)
    before = trainer.phi.targets.detach().clone()
    moments = trainer.optimizer.state[trainer.phi.targets]["exp_avg_sq"]
    moments.fill_(1.0)  # as after a long run, where every row has had gradients
    done = trainer.revive_dead_targets()
    # mirror first; both amygdalae are dead, so they and their union restart from deep gray matter
    assert done == {"right hippocampus": "left hippocampus", "amygdala": "deep gray matter",
                    "left amygdala": "deep gray matter", "right amygdala": "deep gray matter",
                    "lesion": "brain"}
    rows = trainer.phi.targets.detach()
    for name, source in done.items():
        src = before[BANK_TARGETS.index(source)]
        gap = (rows[idx[name]] - src).abs().max()
        assert 0 < gap < 0.5 * src.abs().mean()  # near its source, nudged apart by noise
        assert moments[idx[name]].abs().sum() == 0
    assert torch_equal(rows[idx["left hippocampus"]], before[idx["left hippocampus"]])
    assert trainer.dead_targets() == [] and trainer.revivals["lesion"] == 1
    trainer.save()
    assert VisionPretrainer(tmp_path / "run").revivals == trainer.revivals
    with pytest.raises(ValueError, match="revive_every"):
        smoke(data_root, revive_every=-1)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_absent_targets_can_be_left_out_of_the_dice_term(tmp_path, data_root):
    """With ``dice_on_absent`` off, an empty target's false positives cost cross-entropy only."""
    import torch
    import torch.nn.functional as F

    logits = torch.full((2, 1, 4, 4, 4), -3.0)
    logits[1, 0, 0, 0, 0] = 2.0  # one confident false positive on the absent target
    masks = torch.zeros_like(logits)
    masks[0, 0, :2] = 1.0
    logits[0, 0, :2] = 3.0
    with_absent = VisionPretrainer(tmp_path / "a", smoke(data_root))
    without = VisionPretrainer(tmp_path / "b", smoke(data_root, dice_on_absent=False))
    loss_a, parts_a = with_absent.loss(logits, masks)
    loss_b, parts_b = without.loss(logits, masks)
    ce = F.binary_cross_entropy_with_logits(logits, masks)
    p = torch.sigmoid(logits[0])
    present_dice = (2 * (p * masks[0]).sum() + 1) / (p.sum() + masks[0].sum() + 1)
    assert loss_b.item() == pytest.approx((1 - present_dice + ce).item(), rel=1e-5)
    assert parts_b["dice"] == pytest.approx(present_dice.item(), rel=1e-5)
    assert loss_a.item() > loss_b.item() + 0.2  # the absent target's Dice ~ 1 / (1.9 + 1) costs the rest
    empty, _ = without.loss(logits[1:], masks[1:])  # no present target at all: CE alone
    assert empty.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits[1:], masks[1:]).item())


def test_small_patches_centre_on_deep_structures_and_take_more_targets(tmp_path, data_root):
    from training.synth.synthseg import DEEP_LABELS, LabelMaps, Priors, SynthSegGenerator, SynthSettings

    # 1 mm slices: with a thick axis the labels come on the acquired grid, where 7 voxels span 35 mm
    gen = SynthSegGenerator(LabelMaps(data_root), Priors(data_root), SynthSettings(thick_slice_prob=0.0))
    rng = np.random.default_rng(0)
    for _ in range(6):
        labels = gen.sample(rng, patch_mm=24, deep=True).labels.numpy()
        c = np.array(labels.shape) // 2
        near = labels[c[0] - 3:c[0] + 4, c[1] - 3:c[1] + 4, c[2] - 3:c[2] + 4]
        assert np.isin(near, DEEP_LABELS).any()  # elastic warping moves the centre by a few mm at most
    trainer = VisionPretrainer(tmp_path / "run", smoke(data_root, small_patch_share=1.0, small_patch_mm=32,
                                                       small_patch_targets=5))
    trainer.fit(max_steps=2, workers=0)
    assert len(trainer.last_targets) == 5
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert rows and all(r["patch_mm"] == "32" for r in rows)
    with pytest.raises(ValueError, match="small_patch_share"):
        smoke(data_root, small_patch_share=1.5)


def test_parallel_synthesis_workers_draw_different_samples(data_root, monkeypatch):
    """With several workers (the GPU runs use 14), each must draw its own stream: a shared seed would
    hand the network the same sample once per worker. The worker is simulated in-process: forking
    DataLoader workers from a test process that already runs threads can deadlock."""
    import signal
    from types import SimpleNamespace

    import torch

    from training.vision_pretrain import SynthStream

    config = smoke(data_root, whole_volume_share=0.0, small_patch_share=0.0)

    def first_image(worker):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
        monkeypatch.setattr(signal, "signal", lambda *args: None)  # a worker ignores stop signals
        return next(iter(SynthStream(config, ["training_seg_01"], 0)))["image"]

    a, b = first_image(SimpleNamespace(id=0, num_workers=2)), first_image(SimpleNamespace(id=1, num_workers=2))
    assert a.shape != b.shape or not torch.equal(a, b)
    # a single worker, or none, keeps the stream runs always had
    assert torch.equal(first_image(SimpleNamespace(id=0, num_workers=1)), first_image(None))
