"""The decoder's conv over an (upsampled, skip) pair equals the conv over their concatenation."""
from __future__ import annotations

import pytest
import torch

from vision.layers import NativeConv3d


@pytest.mark.parametrize("flat", [(), (2,)])
def test_conv_of_parts_equals_conv_of_concatenation(flat):
    torch.manual_seed(0)
    conv = NativeConv3d(12, 8)
    a, b = torch.randn(2, 4, 6, 7, 5), torch.randn(2, 8, 6, 7, 5)
    whole = conv(torch.cat([a, b], 1), flat)
    parts = conv((a, b), flat)
    assert torch.allclose(whole, parts, atol=1e-5)
    # gradients reach both parts as they would through the concatenation
    a.requires_grad_(True)
    conv((a, b), flat).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expects 12 input channels"):
        NativeConv3d(12, 8)((torch.randn(1, 4, 3, 3, 3), torch.randn(1, 4, 3, 3, 3)))
