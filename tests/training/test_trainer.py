"""Joint trainer: a few steps on one repeated task lower the loss; resume continues from the saved step."""
from __future__ import annotations

import csv
from functools import lru_cache

import pytest
import torch

from training.trainer import STATE_FILE, TrainConfig, train


@lru_cache(maxsize=1)
def _fixed_task():
    from training.tasks import sample_task

    # a segmentation task: two steps, one encode and one generate (phi and Dice both exercised)
    return sample_task(12345, "segment")


def _cfg(**kw) -> TrainConfig:
    # coarse vision grid (8 mm) and a small vocabulary keep a step well under a second on CPU
    base = dict(vision_min_spacing=8.0, vocab_size=400, corpus_tasks=3, lm_only_tasks=0, warmup_steps=1,
                checkpoint_minutes=1000.0, threads=1)
    base.update(kw)
    return TrainConfig.for_preset("tiny", **base)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_loss_decreases_on_a_repeated_instance(tmp_path):
    result = train(_cfg(), tmp_path, max_steps=30, export=False, progress=False,
                   task_source=lambda index: _fixed_task())
    rows = _rows(tmp_path / "log.csv")
    assert len(rows) == 30 and result.step == 30
    first = sum(float(r["loss"]) for r in rows[:3]) / 3
    last = sum(float(r["loss"]) for r in rows[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert float(rows[-1]["dice_loss"]) < float(rows[0]["dice_loss"])  # the vision net learned too
    assert float(rows[-1]["token_acc"]) > float(rows[0]["token_acc"])


def test_resume_continues_from_saved_step(tmp_path):
    task = lambda index: _fixed_task()
    train(_cfg(), tmp_path, max_steps=2, export=False, progress=False, task_source=task)
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 2
    result = train(_cfg(), tmp_path, max_steps=4, resume=True, export=False, progress=False, task_source=task)
    assert result.step == 4
    assert [int(r["step"]) for r in _rows(tmp_path / "log.csv")] == [1, 2, 3, 4]
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 4 and state["tasks_seen"] == 4


def test_resume_after_a_kill_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    """A kill (no handler runs) leaves log rows past the last checkpoint; resume logs those steps again."""
    task = lambda index: _fixed_task()
    train(_cfg(), tmp_path, max_steps=2, export=False, progress=False, task_source=task)
    log = tmp_path / "log.csv"
    rows = log.read_text().splitlines(keepends=True)
    log.write_text("".join(rows) + rows[-1].replace("2,", "3,", 1) + rows[-1].replace("2,", "4,", 1))
    assert [int(r["step"]) for r in _rows(log)] == [1, 2, 3, 4]  # what the killed run left
    train(_cfg(), tmp_path, max_steps=5, resume=True, export=False, progress=False, task_source=task)
    assert [int(r["step"]) for r in _rows(log)] == [1, 2, 3, 4, 5]


def test_export_writes_models_layout(tmp_path):
    from agent.phi_bank import PhiBank
    from training.trainer import build_networks, build_tokenizer, export_model

    cfg = _cfg()
    tok = build_tokenizer(cfg, tmp_path / "tokenizer.model")
    model, net = build_networks(cfg, tok)
    out = export_model(tmp_path / "model", model, tok, net, PhiBank.default())
    for name in ("agent_config.json", "agent.safetensors", "tokenizer.model", "vision_config.json",
                 "vision.safetensors", "phi_bank.safetensors"):
        assert (out / name).is_file(), name
    from agent.runtime import AgentRuntime
    from vision.engine import VisionEngine

    AgentRuntime.from_checkpoint(out)
    assert VisionEngine.load(out).config.min_spacing == 8.0


def test_old_runs_resume_without_cross_entropy(tmp_path):
    """A checkpoint saved before bce_weight existed trained on soft Dice alone, and resumes that way."""
    task = lambda index: _fixed_task()
    train(_cfg(bce_weight=0.5), tmp_path, max_steps=1, export=False, progress=False, task_source=task)
    state_path = tmp_path / "checkpoint" / STATE_FILE
    state = torch.load(state_path, weights_only=False)
    assert state["config"]["bce_weight"] == 0.5
    del state["config"]["bce_weight"]
    torch.save(state, state_path)
    log = tmp_path / "log.csv"
    old_header = "step,tasks_seen,loss,ce,dice_loss,token_acc,lr,grad_norm,seconds,families,phi_loss,phi_probe_acc"
    lines = log.read_text().splitlines()
    log.write_text("\r\n".join([old_header] + [line.rsplit(",", 1)[0] for line in lines[1:]]) + "\r\n")

    train(_cfg(), tmp_path, max_steps=2, resume=True, export=False, progress=False, task_source=task)
    import json

    assert json.loads((tmp_path / "train_config.json").read_text())["bce_weight"] == 0.0
    rows = _rows(log)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert float(rows[1]["bce_loss"]) > 0  # logged (not weighted) and the header names it


def test_cooldown_scale_is_flat_then_linear_to_zero():
    from training.trainer import cooldown_scale

    assert cooldown_scale(0.5, 0.0) == 1.0 and cooldown_scale(0.99, 0.0) == 1.0  # no cooldown: constant
    assert cooldown_scale(0.0, 0.2) == 1.0 and cooldown_scale(0.79, 0.2) == 1.0
    assert cooldown_scale(0.8, 0.2) == pytest.approx(1.0)
    assert cooldown_scale(0.9, 0.2) == pytest.approx(0.5)
    assert cooldown_scale(1.0, 0.2) == 0.0 and cooldown_scale(1.5, 0.2) == 0.0


def test_cooldown_lowers_the_logged_learning_rate_at_the_end_of_the_budget(tmp_path):
    task = lambda index: _fixed_task()
    train(_cfg(lr=1e-3), tmp_path, max_steps=4, export=False, progress=False, task_source=task, cooldown=0.5)
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "log.csv")]
    # progress before steps 1..4 is 0, 1/4, 2/4, 3/4 of the budget; decay over the last half
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])


def _interrupting_source(at: int, raise_it):
    def source(index):
        if index == at:
            raise_it()
        return _fixed_task()
    return source


def _keyboard_interrupt():
    raise KeyboardInterrupt


def _sigterm():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    return None


@pytest.mark.parametrize("raise_it", [_keyboard_interrupt, _sigterm], ids=["ctrl-c", "sigterm"])
def test_interrupt_saves_the_last_finished_step_and_resume_loses_nothing(tmp_path, raise_it):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    result = train(_cfg(), tmp_path, max_steps=10, export=True, progress=False,
                   task_source=_interrupting_source(3, raise_it))
    assert result.interrupted and result.step == 3 and result.model_dir is None  # no export when cut
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 3 and state["tasks_seen"] == 3  # the half-done task 3 is redone on resume
    seen = []
    result = train(_cfg(), tmp_path, max_steps=5, resume=True, export=False, progress=False,
                   task_source=lambda index: seen.append(index) or _fixed_task())
    assert not result.interrupted and result.step == 5 and seen == [3, 4]
    assert [int(r["step"]) for r in _rows(tmp_path / "log.csv")] == [1, 2, 3, 4, 5]


def test_cli_rejects_a_cooldown_outside_the_budget(tmp_path, capsys):
    from cli.main import main

    assert main(["train", "--steps", "1", "--cooldown", "1.5", "--out", str(tmp_path)]) == 2
    assert "--cooldown" in capsys.readouterr().err
    assert not (tmp_path / "log.csv").exists()


def test_joint_weights_steer_the_joint_family_draw_deterministically():
    from training.tasks import FAMILIES
    from training.trainer import joint_family

    assert joint_family({}, 0, 5) is None  # no weights: the task's own uniform draw
    only = {name: 0.0 for name in FAMILIES} | {"lesion_count": 1.0}
    assert {joint_family(only, 0, i) for i in range(50)} == {"lesion_count"}
    boosted = {"lesion_count": 9.0}  # 9 of 28 odds
    draws = [joint_family(boosted, 3, i) for i in range(3000)]
    share = draws.count("lesion_count") / len(draws)
    assert abs(share - 9 / (len(FAMILIES) + 8)) < 0.03
    assert draws == [joint_family(boosted, 3, i) for i in range(3000)]
    assert draws != [joint_family(boosted, 4, i) for i in range(3000)]


@pytest.mark.parametrize("spec", ["lesion=2", "lesion_count", "lesion_count=x", "lesion_count=-1",
                                  "lesion_count=nan", "lesion_count=inf"])
def test_joint_weights_spec_errors_name_the_problem(spec):
    from training.trainer import parse_joint_weights

    with pytest.raises(ValueError, match="lesion"):
        parse_joint_weights(spec)


def test_joint_weights_cannot_silence_every_family():
    from training.tasks import FAMILIES
    from training.trainer import parse_joint_weights

    assert parse_joint_weights(" lesion_count=4, lesion_side=2.5 ,") == {"lesion_count": 4.0, "lesion_side": 2.5}
    with pytest.raises(ValueError, match="above 0"):
        parse_joint_weights(",".join(f"{name}=0" for name in FAMILIES))


def test_cli_rejects_unknown_joint_weight_families(tmp_path, capsys):
    from cli.main import main

    assert main(["train", "--steps", "1", "--joint-weights", "hippocampus=3", "--out", str(tmp_path)]) == 2
    assert "--joint-weights" in capsys.readouterr().err
    assert not (tmp_path / "log.csv").exists()


@pytest.mark.slow
def test_training_draws_joint_tasks_from_the_weighted_families(tmp_path):
    from training.tasks import FAMILIES

    weights = {name: 0.0 for name in FAMILIES} | {"volume": 1.0}
    train(_cfg(joint_weights=weights, lm_only_tasks=1), tmp_path, max_steps=2, export=False, progress=False)
    families = [r["families"].split("+") for r in _rows(tmp_path / "log.csv")]
    assert [f[0] for f in families] == ["volume", "volume"]
    assert all(f[1].endswith("(lm)") for f in families)


def test_balanced_voxel_ce_is_recorded_and_kept_on_resume(tmp_path):
    import json

    task = lambda index: _fixed_task()
    train(_cfg(), tmp_path / "grid", max_steps=1, export=False, progress=False, task_source=task)
    train(_cfg(voxel_ce="balanced"), tmp_path, max_steps=1, export=False, progress=False, task_source=task)
    assert json.loads((tmp_path / "train_config.json").read_text())["voxel_ce"] == "balanced"
    # same seed, same first prediction (the rare-prior head: p ~ 0 everywhere); the target's half costs more
    grid = float(_rows(tmp_path / "grid" / "log.csv")[0]["bce_loss"])
    assert float(_rows(tmp_path / "log.csv")[0]["bce_loss"]) > 2 * grid
    train(_cfg(), tmp_path, max_steps=2, resume=True, export=False, progress=False, task_source=task)
    assert json.loads((tmp_path / "train_config.json").read_text())["voxel_ce"] == "balanced"


def test_cli_refuses_an_unknown_voxel_ce(tmp_path, capsys):
    from cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--steps", "1", "--voxel-ce", "focal", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--voxel-ce" in capsys.readouterr().err


def test_an_unknown_voxel_ce_is_refused_before_training():
    """Raised by the config itself: at the first step it would be a KeyError, which skips the task."""
    with pytest.raises(ValueError, match="voxel_ce"):
        _cfg(voxel_ce="focal")


@pytest.mark.slow
def test_vision_channels_build_the_network_and_a_resume_keeps_them(tmp_path):
    import json

    from vision.checkpoint import load_vision

    task = lambda index: _fixed_task()
    train(_cfg(vision_channels=(16, 32, 32, 32)), tmp_path, max_steps=1, export=False, progress=False,
          task_source=task)
    assert load_vision(tmp_path / "checkpoint").config.channels == (16, 32, 32, 32)
    assert json.loads((tmp_path / "train_config.json").read_text())["vision_channels"] == [16, 32, 32, 32]
    # resuming with the default config: the saved run's width wins, the weights load into it
    train(_cfg(), tmp_path, max_steps=2, resume=True, export=False, progress=False, task_source=task)
    assert load_vision(tmp_path / "checkpoint").config.channels == (16, 32, 32, 32)
    assert len(_rows(tmp_path / "log.csv")) == 2


def test_impossible_vision_channels_are_refused_before_training(tmp_path, capsys):
    from cli.main import main

    with pytest.raises(ValueError, match="group_size"):
        _cfg(vision_channels=(3, 5))
    assert _cfg(vision_channels=[8, 8]).vision_channels == (8, 8)  # as read back from train_config.json
    for bad in ("3,5", "a,b"):
        assert main(["train", "--steps", "1", "--vision-channels", bad, "--out", str(tmp_path / "x")]) == 2
        assert "--vision-channels" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_to_change_the_width_of_a_checkpoint(tmp_path, capsys):
    from cli.main import main

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / STATE_FILE).write_bytes(b"")
    assert main(["train", "--steps", "1", "--resume", "--vision-channels", "16,32,32,32", "--out", str(tmp_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_a_defective_task_is_skipped_but_a_bug_stops_the_run(tmp_path):
    """Only a TaskDefect (a task synthesis or its ground-truth program could not produce) is skipped;
    anything else, e.g. the KeyError of a mistyped name, fails the run instead of skipping every task."""
    from training.errors import SynthesisError
    from training.trajectory import TrajectoryError

    calls = {"n": 0}

    def flaky(index):
        calls["n"] += 1
        if index == 0:
            raise SynthesisError("no room for a lesion in wm on side left")
        if index == 1:
            raise TrajectoryError("segment seed 1 step 0: name 'x' is not defined")
        return _fixed_task()

    result = train(_cfg(), tmp_path / "ok", max_steps=1, export=False, progress=False, task_source=flaky)
    assert result.step == 1 and calls["n"] == 3  # two skipped, the third trained

    def typo(index):
        raise KeyError("unknown target 'whte matter'")

    with pytest.raises(KeyError, match="whte matter"):
        train(_cfg(), tmp_path / "bug", max_steps=1, export=False, progress=False, task_source=typo)
