"""Building blocks of the vision network: native-space conv, phi mixing, stream attention (eq. 1).

Streams may live on different grids, so blocks take *lists* of tensors, one ``(B, C, X, Y, Z)``
tensor per stream, and every per-voxel layer runs stream by stream. Only the stream attention needs
the streams on one grid; see :class:`StreamAttention`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NativeConv3d(nn.Module):
    """A 3x3x3 convolution that becomes a per-slice 2D convolution along thick axes.

    Along a "flat" axis the kernel is cut to its central slice (kernel size 1, no padding), so the
    same parameters serve the 3D path and the 2D path (VoxelPrompt A.1), and a thick-slice scan is
    never blurred across slices that are 5 mm apart.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_channels * 27)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor | Sequence[Tensor], flat_axes: Sequence[int] = ()) -> Tensor:
        """``x`` may be a sequence of tensors standing for their channel concatenation: the decoder's
        (upsampled, skip) pair is convolved part by part and summed, which is the same convolution
        without materialising the concatenated tensor (two full copies on a 1 mm scan)."""
        weight: Tensor = self.weight
        padding = [1, 1, 1]
        for axis in flat_axes:
            weight = weight.narrow(2 + axis, 1, 1)
            padding[axis] = 0
        parts = [x] if isinstance(x, Tensor) else list(x)
        if sum(p.shape[1] for p in parts) != weight.shape[1]:
            raise ValueError(f"conv expects {weight.shape[1]} input channels, got {[p.shape[1] for p in parts]}")
        out: Tensor | None = None
        start = 0
        for part in parts:
            # channels-last keeps CPU (oneDNN) convolutions, forward and backward, on their fast path.
            part = part.contiguous(memory_format=torch.channels_last_3d)
            w = weight.narrow(1, start, part.shape[1])
            start += part.shape[1]
            y = F.conv3d(part, w, self.bias if out is None else None, padding=tuple(padding))
            out = y if out is None else out + y
        assert out is not None
        return out


def pointwise(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply a (out, in) matrix at every voxel of a (B, in, X, Y, Z) tensor.

    Always on a channels-last tensor (a no-op for the conv outputs that feed it): on CPU, a 1x1x1
    convolution with a bias over a channels-first tensor takes a path whose sums depend on the
    intra-op thread count, so the same scan gave different masks in a 1-thread CLI and a 2-thread
    service (tests/reliability/test_determinism.py). The channels-last path does not.
    """
    return F.conv3d(x.contiguous(memory_format=torch.channels_last_3d), weight[:, :, None, None, None], bias)


def group_norm(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """Group norm over a channels-first tensor: PyTorch's CPU kernel for channels-last input splits
    each group's mean/variance sums by thread, so its result depended on the thread count; the
    channels-first kernel reduces each group in one thread, in a fixed order."""
    return norm(x.contiguous())


def _apply_affine(a: Tensor, weight: Tensor, shift: Tensor) -> Tensor:
    """``weight @ a + shift[b]`` at every voxel; the shift is folded into the conv when B == 1."""
    if shift.shape[0] == 1:
        return pointwise(a, weight, shift[0])
    return pointwise(a, weight) + shift[:, :, None, None, None]


class PhiMix(nn.Module):
    """Concatenate the stream's phi to every voxel's channels, then a linear layer back to c.

    Computed without materialising the concatenation: the phi part of the linear layer is a
    per-sample bias, identical in value to ``Linear(cat(a, phi))``.
    """

    def __init__(self, channels: int, phi_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(channels + phi_dim, channels)

    def affine(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """The layer as ``a -> W a + shift`` with a per-sample shift (B, c)."""
        w_feat = self.linear.weight[:, : self.channels]
        w_phi = self.linear.weight[:, self.channels :]
        return w_feat, F.linear(phi, w_phi, self.linear.bias)

    def forward(self, a: Tensor, phi: Tensor) -> Tensor:
        weight, shift = self.affine(phi)
        return _apply_affine(a, weight, shift)


class PlainMix(nn.Module):
    """Single-task baseline (paper 5.2): the phi mixing layer without phi."""

    def __init__(self, channels: int, phi_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def affine(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear.weight, self.linear.bias.expand(phi.shape[0], -1)  # phi ignored by design

    def forward(self, a: Tensor, phi: Tensor) -> Tensor:
        return pointwise(a, self.linear.weight, self.linear.bias)


def reference_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The grid streams meet on for attention: the finest one, chosen independently of order.

    Using the largest voxel count (ties broken by the shape itself) rather than "the first
    stream" keeps the attention permutation-equivariant across streams of different shapes.
    """
    return max(shapes, key=lambda s: (math.prod(s), tuple(s)))


def _resize(x: Tensor, shape: Sequence[int]) -> Tensor:
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)


class StreamAttention(nn.Module):
    """Attention across the S streams at each voxel, with output projection and residual (eq. 1).

    Streams on different grids are compared on a shared reference grid (the finest one): queries,
    keys and values (per-voxel linear maps, which commute with trilinear interpolation) are
    resampled there by normalised coordinates, i.e. the streams' fields of view are taken to be
    aligned (true for scans conformed to the same head). The attended values are resampled back to
    each stream's own grid before the output projection, so the residual stays native. No stream
    position embedding is used: permuting streams permutes the outputs.
    """

    def __init__(self, channels: int, attn_dim: int) -> None:
        super().__init__()
        self.attn_dim = attn_dim
        self.qkv = nn.Linear(channels, 3 * attn_dim)
        self.proj = nn.Linear(attn_dim, channels)

    def single_stream_affine(self) -> tuple[Tensor, Tensor]:
        """With one stream, softmax over a single key is 1 and eq. 1 is ``a + proj(value(a))``:
        an affine map ``M a + m`` that can be folded into the preceding per-voxel layer."""
        b = self.attn_dim
        w_v, b_v = self.qkv.weight[2 * b :], self.qkv.bias[2 * b :]
        eye = torch.eye(self.proj.out_features, dtype=w_v.dtype, device=w_v.device)
        return eye + self.proj.weight @ w_v, self.proj.weight @ b_v + self.proj.bias

    def forward(self, streams: Sequence[Tensor]) -> list[Tensor]:
        b = self.attn_dim
        if len(streams) == 1:
            weight, shift = self.single_stream_affine()
            return [pointwise(streams[0], weight, shift)]

        shapes = [tuple(a.shape[2:]) for a in streams]
        ref = reference_shape(shapes)
        q, k, v = [], [], []
        for a in streams:
            qkv = _resize(pointwise(a, self.qkv.weight, self.qkv.bias), ref)
            q.append(qkv[:, :b])
            k.append(qkv[:, b : 2 * b])
            v.append(qkv[:, 2 * b :])
        scale = b**-0.5
        out = []
        for s, a in enumerate(streams):
            logits = torch.stack([(q[s] * k[t]).sum(1) for t in range(len(streams))], 1) * scale
            weights = torch.softmax(logits, dim=1)  # (B, S, X, Y, Z)
            mixed = weights[:, 0:1] * v[0]
            for t in range(1, len(streams)):
                mixed = mixed + weights[:, t : t + 1] * v[t]
            mixed = _resize(mixed, shapes[s])
            out.append(a + pointwise(mixed, self.proj.weight, self.proj.bias))
        return out


class Block(nn.Module):
    """One level: conv -> SiLU -> phi mixing -> stream attention (residual) -> SiLU -> group norm."""

    def __init__(
        self, in_channels: int, out_channels: int, phi_dim: int, attn_dim: int, group_size: int, baseline: bool
    ) -> None:
        super().__init__()
        self.conv = NativeConv3d(in_channels, out_channels)
        self.mix = (PlainMix if baseline else PhiMix)(out_channels, phi_dim)
        self.attn = StreamAttention(out_channels, attn_dim)
        self.norm = nn.GroupNorm(out_channels // group_size, out_channels)

    def forward(
        self, streams: Sequence[Tensor | Sequence[Tensor]], flat_axes: Sequence[Sequence[int]],
        phis: Sequence[Tensor],
    ) -> list[Tensor]:
        if len(streams) == 1:
            # Mixing and single-stream attention are both affine per voxel: apply them as one map.
            w_mix, shift = self.mix.affine(phis[0])
            w_att, b_att = self.attn.single_stream_affine()
            a = F.silu(self.conv(streams[0], flat_axes[0]))
            out = _apply_affine(a, w_att @ w_mix, shift @ w_att.T + b_att)
            return [group_norm(self.norm, F.silu(out))]
        mixed = [
            self.mix(F.silu(self.conv(x, axes)), phi) for x, axes, phi in zip(streams, flat_axes, phis)
        ]
        return [group_norm(self.norm, F.silu(b)) for b in self.attn(mixed)]
