"""The decoder layers of ``DecodeSession`` as one TorchScript function.

Decoding one token of the tiny preset is ~60 small tensor ops; on a 2-core CPU the Python and
dispatcher overhead of eager mode (~7 us per op) cost as much as the matrix products. Scripting
the layer loop runs it in the TorchScript interpreter instead (about 1.3x more tokens per second,
measured by ``bench.agent``). ``torch.compile`` was measured too: a minute of compilation and slower
decoding with a growing KV cache, so it is not used.

No ``from __future__ import annotations`` here: TorchScript reads the annotations themselves.
"""
import logging
import warnings
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without weight. Written out: ``torch.rms_norm`` on CPU adds dtype round trips that
    cost more than the arithmetic for one token."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def decoder_layers(
    x: torch.Tensor,
    qkv_t: List[torch.Tensor],
    o_t: List[torch.Tensor],
    gate_up_t: List[torch.Tensor],
    down_t: List[torch.Tensor],
    kv_cache: torch.Tensor,
    rotation: torch.Tensor,
    blocked: Optional[torch.Tensor],
    final_norm: torch.Tensor,
    p0: int,
    num_heads: int,
    head_dim: int,
    eps: float,
) -> torch.Tensor:
    """Run ``T = x.shape[0]`` new positions through every layer, writing their k, v at ``p0``.

    Weights as prepared by ``VoxAgentModel.fused_weights`` ((in, out), RMSNorm weights folded in,
    q/k dims interleaved so the rotary embedding is one complex multiply by ``rotation``).
    ``blocked`` (T, p0 + T) masks future positions when T > 1. Returns the final hidden states
    (T, d), after the model's last norm (weight ``final_norm``).
    """
    T = x.shape[0]
    p1 = p0 + T
    half = head_dim // 2
    for i in range(len(qkv_t)):
        kv = kv_cache[i]
        qkv = torch.mm(unit_rms(x, eps), qkv_t[i]).view(T, 3, num_heads, head_dim)
        torch.view_as_complex(qkv[:, :2].view(T, 2, num_heads, half, 2)).mul_(rotation)  # rotates q, k
        kv[:, :, p0:p1] = qkv[:, 1:].permute(1, 2, 0, 3)
        scores = torch.bmm(qkv[:, 0].transpose(0, 1), kv[0, :, :p1].transpose(1, 2))  # (H, T, p1)
        if blocked is not None:
            scores.masked_fill_(blocked, float("-inf"))
        att = torch.bmm(scores.softmax(-1), kv[1, :, :p1])  # (H, T, hd)
        x = torch.addmm(x, att.transpose(0, 1).reshape(T, num_heads * head_dim), o_t[i])
        gate_up = torch.mm(unit_rms(x, eps), gate_up_t[i])
        inner = gate_up.shape[1] // 2
        x = torch.addmm(x, F.silu(gate_up[:, :inner]).mul_(gate_up[:, inner:]), down_t[i])
    return unit_rms(x, eps) * final_norm


_compiled: Optional[Callable[..., torch.Tensor]] = None


def compiled_decoder_layers() -> Callable[..., torch.Tensor]:
    """The scripted ``decoder_layers`` (built once per process); eager if scripting is unavailable."""
    global _compiled
    if _compiled is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript announces its deprecation on every use
                _compiled = torch.jit.script(decoder_layers)
        except Exception as exc:  # noqa: BLE001 - any scripting failure leaves the (identical) eager path
            logger.warning("TorchScript unavailable (%s); decoding runs eagerly", exc)
            _compiled = decoder_layers
    return _compiled
