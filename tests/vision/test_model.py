"""Network behaviour: several streams on different grids, permutation, phi, gradients, presets."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from vision.config import PRESETS, VisionConfig, get_config
from vision.layers import StreamAttention, reference_shape
from vision.losses import hard_dice, soft_dice, soft_dice_loss
from vision.model import build_vision_net

# Three streams on different grids: isotropic 2 mm, thick-slice axial (6 mm), coarse 3 mm.
SHAPES = [(30, 36, 28), (30, 36, 10), (20, 24, 19)]
SPACINGS = [(2.0, 2.0, 2.0), (2.0, 2.0, 6.0), (3.0, 3.0, 3.0)]


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.rand(1, 1, *s, generator=g) for s in SHAPES]
    phis = [torch.randn(32, generator=g) for _ in SHAPES]
    return xs, phis


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_vision_net("tiny").eval()


def test_streams_of_different_shapes_in_one_call(net):
    xs, phis = _inputs()
    with torch.inference_mode():
        enc = net.encode(xs, SPACINGS, phis)
        assert enc.vectors.shape == (3, 256)
        for s, shape in enumerate(SHAPES):
            out = net.generate(enc, s, phis[0])
            assert out.shape == (1, 1, *shape)
            assert torch.isfinite(out).all()
    assert enc.plans[1].levels[0].flat_axes == (2,)
    assert enc.plans[0].levels[0].flat_axes == ()


def test_streams_interact(net):
    """A stream's encoding depends on the other streams passed with it (eq. 1)."""
    xs, phis = _inputs()
    with torch.inference_mode():
        alone = net.encode(xs[:1], SPACINGS[:1], phis[:1])
        together = net.encode(xs, SPACINGS, phis)
        other = net.encode([xs[0], torch.zeros(1, 1, *SHAPES[1]), xs[2]], SPACINGS, phis)
    for changed in (alone, other):
        for level in range(net.config.levels):
            diff = (changed.streams[0].skips[level] - together.streams[0].skips[level]).abs().max()
            assert diff > (1e-3 if level == 0 else 1e-5), (level, diff)


def test_permuting_streams_permutes_outputs(net):
    xs, phis = _inputs()
    gen_phi = torch.randn(32)
    order = [2, 0, 1]
    with torch.inference_mode():
        enc = net.encode(xs, SPACINGS, phis)
        perm = net.encode([xs[i] for i in order], [SPACINGS[i] for i in order], [phis[i] for i in order])
        for new, old in enumerate(order):
            assert torch.allclose(perm.vectors[new], enc.vectors[old], atol=1e-5)
            a = net.generate(perm, new, gen_phi)
            b = net.generate(enc, old, gen_phi)
            assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_reference_grid_does_not_depend_on_order():
    shapes = [(4, 5, 6), (6, 5, 4), (3, 3, 3)]
    assert reference_shape(shapes) == reference_shape(shapes[::-1]) == (6, 5, 4)


def test_single_stream_attention_matches_eq1():
    """The folded single-stream path equals softmax attention over one key."""
    torch.manual_seed(0)
    attn = StreamAttention(8, 4)
    a = torch.randn(2, 8, 3, 4, 5)
    (fast,) = attn([a])
    # explicit eq. 1 with S = 1: softmax of a single logit is 1, so the output is f(V) + A
    qkv = torch.einsum("oc,bcxyz->boxyz", attn.qkv.weight, a) + attn.qkv.bias.view(1, -1, 1, 1, 1)
    v = qkv[:, 8:]
    expected = a + torch.einsum("oc,bcxyz->boxyz", attn.proj.weight, v) + attn.proj.bias.view(1, -1, 1, 1, 1)
    assert torch.allclose(fast, expected, atol=1e-5)


def test_changing_phi_changes_output(net):
    xs, phis = _inputs()
    with torch.inference_mode():
        enc = net.encode(xs[:1], SPACINGS[:1], phis[:1])
        a = net.generate(enc, 0, torch.zeros(32))
        b = net.generate(enc, 0, torch.ones(32))
        enc2 = net.encode(xs[:1], SPACINGS[:1], [torch.ones(32)])
    assert (a - b).abs().max() > 1e-3
    assert (enc.vectors - enc2.vectors).abs().max() > 1e-4


def test_baseline_variant_ignores_phi_but_shares_the_code():
    torch.manual_seed(0)
    base = build_vision_net("tiny", baseline=True).eval()
    xs, phis = _inputs()
    with torch.inference_mode():
        enc = base.encode(xs[:1], SPACINGS[:1], phis[:1])
        a = base.generate(enc, 0, torch.zeros(32))
        b = base.generate(enc, 0, torch.ones(32))
    assert torch.allclose(a, b)
    full = build_vision_net("tiny")
    n_full = sum(p.numel() for p in full.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    assert n_full - n_base == 32 * sum(2 * c for c in full.config.channels)  # the phi columns only


def test_gradients_reach_phi_and_every_parameter():
    torch.manual_seed(0)
    net = build_vision_net("tiny")
    xs, _ = _inputs()
    phis = [torch.randn(32, requires_grad=True) for _ in SHAPES[:2]]
    gen_phis = [torch.randn(32, requires_grad=True) for _ in range(2)]
    enc = net.encode(xs[:2], SPACINGS[:2], phis)
    outs = net.generate_many(enc, [0, 1], gen_phis)
    loss = sum(o.sigmoid().mean() for o in outs) + enc.vectors.pow(2).mean()
    loss.backward()
    for p in phis + gen_phis:
        assert p.grad is not None and p.grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_single_stream_generate_gradient_reaches_its_phi():
    torch.manual_seed(0)
    net = build_vision_net("tiny")
    xs, phis = _inputs()
    gen_phi = torch.randn(32, requires_grad=True)
    enc = net.encode(xs[:1], SPACINGS[:1], phis[:1])
    net.generate(enc, 0, gen_phi).mean().backward()
    assert gen_phi.grad.abs().sum() > 0


def test_presets_match_the_paper_and_the_agents():
    paper = get_config("paper")
    assert paper.levels == 6 and paper.channels == (32, 96, 96, 96, 96, 96)
    assert paper.attn_dim == 32 and paper.phi_dim == 32 and paper.encoding_dim == 512
    assert paper.min_spacing is None
    tiny = get_config("tiny")
    assert tiny.encoding_dim == 256 and tiny.phi_dim == 32 and tiny.levels == 4
    assert VisionConfig.from_dict(__import__("json").loads(paper.to_json())) == paper
    with pytest.raises(ValueError):
        get_config("huge")
    assert set(PRESETS) >= {"tiny", "paper"}


def test_intensity_ceiling_defaults_to_what_old_checkpoints_were_trained_with():
    from vision.config import NEW_NETWORK_CEILING

    saved_before = json.loads(get_config("tiny").to_json())
    del saved_before["intensity_ceiling"]  # configs written before the field existed
    assert VisionConfig.from_dict(saved_before).intensity_ceiling == 1.0
    assert all(cfg.intensity_ceiling == NEW_NETWORK_CEILING > 1.0 for cfg in PRESETS.values())
    with pytest.raises(ValueError, match="intensity_ceiling"):
        VisionConfig(intensity_ceiling=0.9)


def test_network_input_follows_the_config_ceiling():
    from vision.preprocess import network_input
    from voxel_ops.volume import Volume, VolumeMeta

    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, (24, 20, 16)).astype(np.float32)
    data[:3, :3, :3] = 150.0  # 27 voxels: above the 99.5th percentile (38 voxels)
    vol = Volume(data[::-1].copy(), np.diag([-2.0, 2.0, 3.0, 1.0]), VolumeMeta())  # stored L->R: conformed to RAS
    old = network_input(vol, replace(get_config("tiny"), intensity_ceiling=1.0))
    new = network_input(vol, get_config("tiny"))
    assert old.tensor.shape == (1, 1, 24, 20, 16) and old.spacing == (2.0, 2.0, 3.0)
    assert float(old.tensor.max()) == 1.0 and float(new.tensor.max()) > 1.5
    assert float(new.tensor[0, 0, :3, :3, :3].min()) > 1.5  # the bright block, now at the RAS origin


def test_paper_preset_runs_on_a_small_odd_grid():
    torch.manual_seed(0)
    net = build_vision_net("paper").eval()
    x = torch.rand(1, 1, 33, 27, 9)
    with torch.inference_mode():
        enc = net.encode([x], [(1.0, 1.0, 4.0)], [torch.randn(32)])
        out = net.generate(enc, 0, torch.randn(32))
    assert out.shape == x.shape
    assert enc.vectors.shape == (1, 512)
    assert len(enc.streams[0].skips) == 6


def test_input_validation(net):
    xs, phis = _inputs()
    with pytest.raises(ValueError):
        net.encode(xs, SPACINGS[:2], phis)
    with pytest.raises(ValueError):
        net.encode([torch.rand(1, 2, 8, 8, 8)], [(1, 1, 1)], [torch.randn(32)])
    with pytest.raises(ValueError):
        net.encode(xs[:1], SPACINGS[:1], [torch.randn(16)])
    with pytest.raises(ValueError):
        net.encode(xs[:1], [(1.0, 0.0, 1.0)], phis[:1])
    with torch.inference_mode():
        enc = net.encode(xs[:1], SPACINGS[:1], phis[:1])
    with pytest.raises(IndexError):
        net.generate(enc, 1, phis[0])


def test_soft_dice():
    t = torch.zeros(1, 1, 4, 4, 4)
    t[..., :2] = 1
    assert soft_dice(t, t).item() == pytest.approx(1.0)
    assert soft_dice(1 - t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert hard_dice(t * 0.9, t) == pytest.approx(1.0)
    big = torch.full_like(t, 20.0) * (2 * t - 1)
    assert soft_dice_loss(big, t).item() < 1e-3


def test_voxel_bce_pushes_back_on_a_false_positive_blob():
    """Why the trainer adds voxel CE: on a small target under a large blob, soft Dice's gradient vanishes."""
    from vision.losses import voxel_bce_loss

    target = torch.zeros(1, 1, 32, 32, 32)
    target[..., 14:17, 14:17, 14:17] = 1  # 27 voxels
    logits = torch.full_like(target, 4.0)  # p ~ 0.98 everywhere: a blob 1200x the target
    logits.requires_grad_(True)
    soft_dice_loss(logits, target).backward()
    dice_push = logits.grad[target == 0].abs().mean().item()
    logits.grad = None
    voxel_bce_loss(logits, target).backward()
    bce_push = logits.grad[target == 0].abs().mean().item()
    assert bce_push > 100 * dice_push, (bce_push, dice_push)
    assert voxel_bce_loss(torch.full_like(target, -20.0) + 40 * target, target).item() < 1e-6


def test_balanced_voxel_bce_weighs_a_small_target_as_much_as_its_background():
    """Grid-averaged CE barely charges an empty answer for a 27-voxel target; the balanced one charges half."""
    from vision.losses import VOXEL_CE, balanced_voxel_bce_loss, voxel_bce_loss

    target = torch.zeros(1, 1, 32, 32, 32)
    target[..., 14:17, 14:17, 14:17] = 1  # 27 of 32,768 voxels
    empty = torch.full_like(target, -6.0)  # p 0.0025 everywhere: "no lesion"
    grid, balanced = voxel_bce_loss(empty, target).item(), balanced_voxel_bce_loss(empty, target).item()
    assert grid < 0.01  # 27 voxels of CE 6 spread over the grid
    assert balanced == pytest.approx(0.5 * (6.0 + 0.0025), abs=0.01)  # half the mean inside, half outside
    perfect = torch.full_like(target, -20.0) + 40 * target
    assert balanced_voxel_bce_loss(perfect, target).item() < 1e-6
    # no target: only the background half, which equals the grid average
    none = torch.zeros_like(target)
    assert balanced_voxel_bce_loss(empty, none).item() == pytest.approx(voxel_bce_loss(empty, none).item())
    assert set(VOXEL_CE) == {"grid", "balanced"}
