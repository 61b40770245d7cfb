"""The tiny preset can fit one synthetic case: the whole forward/backward path learns."""
from __future__ import annotations

import pytest
import torch

from tests.vision.synthetic import ellipsoid_case
from vision.losses import hard_dice, soft_dice_loss
from vision.model import build_vision_net


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a shared 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_tiny_preset_overfits_one_case_to_dice_095(one_thread):
    torch.manual_seed(0)
    image, target = ellipsoid_case((48, 48, 48))
    net = build_vision_net("tiny")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    phi_enc, phi_gen = torch.randn(32), torch.randn(32)
    dice = 0.0
    for _ in range(300):
        enc = net.encode([image], [(2.0, 2.0, 2.0)], [phi_enc])
        logits = net.generate(enc, 0, phi_gen)
        dice = hard_dice(torch.sigmoid(logits.detach()), target)
        if dice >= 0.95:
            break
        loss = soft_dice_loss(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert dice >= 0.95
    with torch.inference_mode():  # the fitted weights reproduce it outside the training loop
        final = torch.sigmoid(net.generate(net.encode([image], [(2.0, 2.0, 2.0)], [phi_enc]), 0, phi_gen))
    assert hard_dice(final, target) >= 0.95
