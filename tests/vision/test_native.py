"""Native-space geometry: per-level kernel/pooling decisions and exact output grids."""
from __future__ import annotations

import pytest
import torch

from vision.config import get_config
from vision.layers import NativeConv3d
from vision.model import build_vision_net
from vision.native import plan_stream, working_grid

THICK = (0.9, 0.9, 5.0)
SHAPE = (157, 189, 31)


def _permute(seq, axis):
    """Move the last (thick) entry to position ``axis``."""
    seq = list(seq)
    thick = seq.pop()
    seq.insert(axis, thick)
    return tuple(seq)


@pytest.mark.parametrize(
    ("spacing", "flat_expected"),
    [
        ((1.0, 1.0, 2.0), ()),  # omega == 2 exactly: still 3D
        ((1.0, 1.0, 2.05), (2,)),  # just above 2: 2D along the thick axis
        ((3.0, 1.0, 1.0), (0,)),
        ((1.0, 5.0, 1.0), (1,)),
        ((1.0, 1.0, 1.0), ()),
    ],
)
def test_2d_kernel_exactly_when_omega_above_2(spacing, flat_expected):
    plan = plan_stream((64, 64, 64), spacing, get_config("paper"))
    level0 = plan.levels[0]
    assert level0.flat_axes == flat_expected
    for level in plan.levels:
        assert level.uses_2d_kernel == (level.omega > 2.0)
        finest = min(level.spacing)
        assert level.flat_axes == tuple(a for a in range(3) if level.spacing[a] / finest > 2.0)
        for a in range(3):  # flat axes are never pooled, the others are while they have voxels
            if a in level.flat_axes or level.shape[a] == 1 or level is plan.levels[-1]:
                assert level.pool[a] == 1
            else:
                assert level.pool[a] == 2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thick_axis_keeps_spacing_until_omega_at_most_2(axis):
    plan = plan_stream(_permute(SHAPE, axis), _permute(THICK, axis), get_config("paper"))
    thick = [lvl.spacing[axis] for lvl in plan.levels]
    inplane = [min(lvl.spacing) for lvl in plan.levels]
    # 0.9 -> 1.8 -> 3.6 in-plane; 5 mm stays 5 mm while omega > 2 (levels 0 and 1), then pools.
    assert thick[:3] == [5.0, 5.0, 5.0]
    assert [lvl.flat_axes for lvl in plan.levels[:3]] == [(axis,), (axis,), ()]
    assert thick[3] == 10.0
    assert inplane[:3] == pytest.approx([0.9, 1.8, 3.6])


def test_native_conv_2d_path_never_mixes_slices_and_shares_the_central_kernel():
    conv = NativeConv3d(2, 3)
    x = torch.zeros(1, 2, 9, 8, 7)
    x[:, :, :, :, 3] = torch.randn(1, 2, 9, 8)
    out = conv(x, flat_axes=(2,))
    assert out.shape == (1, 3, 9, 8, 7)
    bias_only = conv.bias.view(1, 3, 1, 1)
    for k in range(7):
        if k != 3:
            assert torch.allclose(out[..., k], bias_only.expand_as(out[..., k]), atol=1e-6)
    as_2d = torch.nn.functional.conv2d(x[..., 3], conv.weight[:, :, :, :, 1], conv.bias, padding=1)
    assert torch.allclose(out[..., 3], as_2d, atol=1e-5)
    out.sum().backward()
    grad = conv.weight.grad
    assert grad[:, :, :, :, 1].abs().sum() > 0
    assert grad[:, :, :, :, 0].abs().sum() == 0 and grad[:, :, :, :, 2].abs().sum() == 0
    # the 3D path on the same input does spread across slices
    assert not torch.allclose(conv(x)[..., 2], bias_only.expand_as(out[..., 2]))


def test_min_spacing_reduces_only_finer_axes():
    shape, spacing = working_grid((157, 189, 31), THICK, 2.0)
    assert shape[2] == 31 and spacing[2] == 5.0
    assert shape[:2] == (71, 86)
    assert all(1.9 < s <= 2.0 for s in spacing[:2])
    assert working_grid((10, 10, 10), (3.0, 3.0, 3.0), 2.0) == ((10, 10, 10), (3.0, 3.0, 3.0))


@pytest.mark.parametrize("min_spacing", [2.0, None], ids=["reduced", "native"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_output_grid_equals_input_grid_and_network_follows_plan(min_spacing, axis):
    torch.manual_seed(0)
    net = build_vision_net("tiny", min_spacing=min_spacing)
    shape, spacing = _permute(SHAPE, axis), _permute(THICK, axis)
    calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for name, module in net.named_modules():
        if isinstance(module, NativeConv3d):
            module.register_forward_hook(
                lambda m, args, out, name=name: calls.append((name, tuple(args[1]), tuple(out.shape[2:])))
            )
    x = torch.rand(1, 1, *shape)
    with torch.inference_mode():
        enc = net.encode([x], [spacing], [torch.randn(32)])
        logits = net.generate(enc, 0, torch.randn(32))
    assert logits.shape == (1, 1, *shape)
    assert torch.isfinite(logits).all()
    plan = enc.streams[0].plan
    assert plan.levels[0].flat_axes == (axis,)
    for n, skip in enumerate(enc.streams[0].skips):
        assert tuple(skip.shape[2:]) == plan.levels[n].shape
    # every convolution used the plan's kernel decision for the grid it ran on
    by_shape = {lvl.shape: lvl.flat_axes for lvl in plan.levels}
    assert len(calls) == 2 * net.config.levels
    for _, flat, out_shape in calls:
        assert by_shape[out_shape] == flat
