"""The phi probe: every <MOD> of every family's program gets a label, and the probe loss pulls the
phis of different targets apart (the collapse it exists to prevent: one phi for every target)."""
from __future__ import annotations

import torch

from training.phi_probe import PhiProbe, mod_labels
from training.tasks import FAMILIES, sample_task
from training.trainer import TrainConfig, build_networks, build_tokenizer
from training.trajectory import run_trajectory


def test_mod_labels_name_targets_and_modalities_in_marker_order():
    code = 'e = encode(t1<MOD>, flair<MOD>)\nwm = generate(e, flair<MOD>, "white matter")\nv = volume(wm)'
    assert mod_labels(code, {"t1": "T1", "flair": "FLAIR"}) == ["encode:T1", "encode:FLAIR",
                                                                 "generate:white matter"]
    assert mod_labels('respond("no volumes here")', {}) == []
    assert mod_labels("x = t1<MOD>", {}) is None  # a marker outside encode/generate


def test_every_family_labels_all_markers_of_its_trajectory(tmp_path):
    cfg = TrainConfig.for_preset("tiny", vision_min_spacing=8.0, vocab_size=400, corpus_tasks=3, threads=1)
    tok = build_tokenizer(cfg, tmp_path / "tokenizer.model")
    model, net = build_networks(cfg, tok)
    labelled = 0
    for name in sorted(FAMILIES):
        sample, case = sample_task(321, name)
        traj = run_trajectory(model, tok, net, sample, case, joint=False)
        n_mod = sum(code.count("<MOD>") for code in sample.steps)
        assert traj.mod_labels is not None, name
        assert len(traj.mod_labels) == n_mod == (0 if traj.mod_phis is None else traj.mod_phis.shape[0]), name
        generated = [f"generate:{target}" for _, target in sample.generate_calls]
        assert [lab for lab in traj.mod_labels if lab.startswith("generate:")] == generated, name
        labelled += n_mod
    assert labelled > 2 * len(FAMILIES)


def test_probe_loss_separates_collapsed_phis():
    torch.manual_seed(0)
    source = torch.nn.Linear(4, 32)  # stands in for the agent: phis of 3 targets from their embeddings
    embed = torch.randn(3, 4) * 0.01  # nearly identical inputs: collapsed phis
    probe = PhiProbe(32)
    params = list(source.parameters()) + [embed.requires_grad_()] + list(probe.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    labels = ["generate:brain", "generate:white matter", "generate:lesion"]
    first = None
    for _ in range(60):
        phis = torch.nn.functional.silu(source(embed))
        loss = probe.loss(phis, labels)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    phis = torch.nn.functional.silu(source(embed)).detach()
    cos = torch.nn.functional.cosine_similarity(phis[:, None], phis[None], dim=-1)
    assert float(loss.detach()) < 0.1 * first
    assert probe.accuracy(phis, labels) == 1.0
    assert float(cos[~torch.eye(3, dtype=torch.bool)].max()) < 0.99
    assert probe.loss(phis[:0], []) == 0.0


def test_eval_reports_phi_separation_of_the_bank(tmp_path):
    import numpy as np

    from agent.phi_bank import DEFAULT_MODALITIES, DEFAULT_TARGETS, PhiBank
    from training.evaluate import phi_separation

    default = PhiBank.default()
    encode = {m: default.encode_phi(m) for m in DEFAULT_MODALITIES}
    apart = tmp_path / "apart"
    apart.mkdir()
    PhiBank(encode, {t: default.generate_phi(t) for t in DEFAULT_TARGETS}).save(apart / "phi_bank.safetensors")
    collapsed = tmp_path / "collapsed"
    collapsed.mkdir()
    one = np.linspace(0.1, 2.0, 32).astype(np.float32)
    PhiBank(encode, {t: one * (1 + 0.001 * i) for i, t in enumerate(DEFAULT_TARGETS)}).save(
        collapsed / "phi_bank.safetensors")
    assert phi_separation(apart)["max_cosine"] < 0.9
    assert phi_separation(collapsed)["mean_cosine"] > 0.999
    assert phi_separation(tmp_path) == {}
