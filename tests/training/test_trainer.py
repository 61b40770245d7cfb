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
    task = lambda index: _fixed_task()  # noqa: E731
    train(_cfg(), tmp_path, max_steps=2, export=False, progress=False, task_source=task)
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 2
    result = train(_cfg(), tmp_path, max_steps=4, resume=True, export=False, progress=False, task_source=task)
    assert result.step == 4
    assert [int(r["step"]) for r in _rows(tmp_path / "log.csv")] == [1, 2, 3, 4]
    state = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 4 and state["tasks_seen"] == 4


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
    task = lambda index: _fixed_task()  # noqa: E731
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
