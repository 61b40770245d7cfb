"""The instructable vision network: encoder (down arm) and generator (up arm) of a UNet.

Usage at the torch level (gradients flow to every phi)::

    net = build_vision_net("tiny")
    enc = net.encode([t1, flair], [(1, 1, 1), (0.9, 0.9, 5)], [phi_t1, phi_flair])
    logits = net.generate(enc, 0, phi_target)      # (1, 1, X, Y, Z) on t1's input grid

Inputs are ``(B, 1, X, Y, Z)`` float tensors prepared by ``vision.preprocess.network_input`` (0.5th
and 99.5th percentiles mapped to 0 and 1, clipped at the config's ``intensity_ceiling``); spacings
are in mm per array axis.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision.config import VisionConfig, get_config
from vision.layers import Block, pointwise
from vision.native import StreamPlan, plan_stream

log = logging.getLogger(__name__)

# Starting foreground probability of every output voxel (the head's bias is its logit). Lesions fill
# ~0.02 % of a native grid: from sigmoid(0) = 0.5 everywhere, cross-entropy spends hundreds of steps
# lowering the bias while soft Dice, whose gradient shrinks with the predicted volume, stays at 1 and
# lesion Dice at 0. Starting rare (RetinaNet's prior init) lets Dice act from the first steps; large
# targets (brain ~15 %) are reached through the features just the same.
HEAD_PRIOR = 0.0025


@dataclass
class StreamEncoding:
    """One stream's encoder output: a skip feature per level, and the grids they live on."""

    skips: list[Tensor]  # level n: (B, channels[n], *plan.levels[n].shape)
    plan: StreamPlan

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.skips)


@dataclass
class Encoding:
    """What ``encode`` returns: per-stream skip features and the interpretable vectors."""

    streams: list[StreamEncoding]
    vectors: Tensor  # (S, d) for batch size 1, else (B, S, d)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.streams) + self.vectors.numel() * self.vectors.element_size()

    @property
    def plans(self) -> list[StreamPlan]:
        return [s.plan for s in self.streams]


def _as_batch_phi(phi: Tensor, batch: int, phi_dim: int) -> Tensor:
    phi = torch.as_tensor(phi)
    if phi.ndim == 1:
        phi = phi.unsqueeze(0)
    if phi.ndim != 2 or phi.shape[1] != phi_dim:
        raise ValueError(f"phi must have shape ({phi_dim},) or (B, {phi_dim}), got {tuple(phi.shape)}")
    if phi.shape[0] == 1 and batch > 1:
        phi = phi.expand(batch, -1)
    if phi.shape[0] != batch:
        raise ValueError(f"phi batch {phi.shape[0]} does not match volume batch {batch}")
    return phi


class VisionNet(nn.Module):
    """Encoder/generator pair with phi mixing and stream interaction at every level."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        block = lambda cin, cout: Block(
            cin, cout, config.phi_dim, config.attn_dim, config.group_size, config.baseline
        )
        self.encoder = nn.ModuleList(block(1 if n == 0 else ch[n - 1], ch[n]) for n in range(config.levels))
        # decoder[0] works on the deepest level, decoder[i] on level L-1-i (skip concatenated).
        self.decoder = nn.ModuleList(
            block(ch[-1] if n == config.levels - 1 else ch[n + 1] + ch[n], ch[n])
            for n in reversed(range(config.levels))
        )
        # Per-voxel one-channel output layer: the level's 3^3 conv has just run, and a 3^3 conv with a
        # single output channel is a slow path for CPU convolution libraries.
        self.head = nn.Linear(ch[0], config.out_channels)
        nn.init.constant_(self.head.bias, math.log(HEAD_PRIOR / (1 - HEAD_PRIOR)))
        self.to_vector = nn.Linear(ch[-1], config.encoding_dim)

    @property
    def device(self) -> torch.device:
        return self.to_vector.weight.device

    def plan(self, shape: Sequence[int], spacing: Sequence[float]) -> StreamPlan:
        """The per-level grids and kernel decisions this network would use for one input grid."""
        return plan_stream(shape, spacing, self.config)

    def encode(
        self, streams: Sequence[Tensor], spacings: Sequence[Sequence[float]], phis: Sequence[Tensor]
    ) -> Encoding:
        """Run the down arm over S streams (each on its own grid), letting them interact."""
        if not streams:
            raise ValueError("encode needs at least one volume stream")
        if not (len(streams) == len(spacings) == len(phis)):
            raise ValueError(
                f"got {len(streams)} streams, {len(spacings)} spacings and {len(phis)} phis; they must match"
            )
        batch = streams[0].shape[0]
        for x in streams:
            if x.ndim != 5 or x.shape[1] != 1:
                raise ValueError(f"each stream must be (B, 1, X, Y, Z), got {tuple(x.shape)}")
            if x.shape[0] != batch:
                raise ValueError("all streams of one call must have the same batch size")
        plans = [self.plan(x.shape[2:], sp) for x, sp in zip(streams, spacings)]
        phis = [_as_batch_phi(p, batch, self.config.phi_dim).to(self.device, streams[0].dtype) for p in phis]
        # .contiguous(): arrays straight from NIfTI are Fortran-ordered, a slow path for every op.
        xs = [
            F.interpolate(x.contiguous(), size=plan.working_shape, mode="area") if plan.reduced else x.contiguous()
            for x, plan in zip(streams, plans)
        ]

        skips: list[list[Tensor]] = [[] for _ in streams]
        for n, block in enumerate(self.encoder):
            xs = block(xs, [p.levels[n].flat_axes for p in plans], phis)
            for s, x in enumerate(xs):
                # channels-last once here: every generate's convolution reads the skips in that layout
                skips[s].append(x.contiguous(memory_format=torch.channels_last_3d))
            if n < self.config.levels - 1:
                xs = [
                    F.max_pool3d(x, kernel_size=p.levels[n].pool, stride=p.levels[n].pool, ceil_mode=True)
                    for x, p in zip(xs, plans)
                ]
        deepest = torch.stack([x.amax(dim=(2, 3, 4)) for x in xs], dim=1)  # (B, S, c)
        vectors = self.to_vector(deepest)
        if batch == 1:
            vectors = vectors[0]
        return Encoding([StreamEncoding(sk, p) for sk, p in zip(skips, plans)], vectors)

    def generate(self, enc: Encoding, stream: int, phi: Tensor) -> Tensor:
        """Logits ``(B, 1, X, Y, Z)`` for one stream, on that stream's input grid."""
        if not 0 <= stream < len(enc.streams):
            raise IndexError(f"stream {stream} out of range for an encoding of {len(enc.streams)} streams")
        return self.generate_many(enc, [stream], [phi])[0]

    def generate_many(self, enc: Encoding, streams: Sequence[int], phis: Sequence[Tensor]) -> list[Tensor]:
        """Decode several streams of one encoding together, interacting in the generator too."""
        chosen = [enc.streams[s] for s in streams]
        return self.decode([c.skips for c in chosen], [c.plan for c in chosen], phis)

    def decode(
        self, skips: Sequence[Sequence[Tensor]], plans: Sequence[StreamPlan], phis: Sequence[Tensor],
        at_input_grid: bool = True,
    ) -> list[Tensor]:
        """The up arm over decoded streams given their skip features (batched along dim 0).

        ``at_input_grid=False`` returns the logits on each stream's working grid (training computes
        its loss there, against area-averaged targets: 8x fewer voxels for a 1 mm input at 2 mm).
        """
        if not (len(skips) == len(plans) == len(phis)) or not skips:
            raise ValueError("decode needs matching, non-empty skips, plans and phis")
        batch = skips[0][0].shape[0]
        ref = skips[0][0]
        phis = [_as_batch_phi(p, batch, self.config.phi_dim).to(ref.device, ref.dtype) for p in phis]
        top = self.config.levels - 1
        hs = [sk[top] for sk in skips]
        for i, block in enumerate(self.decoder):
            n = top - i
            if n < top:
                # (upsampled, skip) pairs: the block's conv treats each pair as its concatenation
                # channels-last upsampling: 3.6x faster on CPU than channels-first plus the copy the
                # convolution would need, and the same at any thread count (bench.vision)
                pairs = [
                    (F.interpolate(h.contiguous(memory_format=torch.channels_last_3d), size=sk[n].shape[2:],
                                   mode="trilinear", align_corners=False), sk[n])
                    for h, sk in zip(hs, skips)
                ]
                hs = block(pairs, [p.levels[n].flat_axes for p in plans], phis)
            else:
                hs = block(hs, [p.levels[n].flat_axes for p in plans], phis)
        out = []
        for h, plan in zip(hs, plans):
            logits = pointwise(h, self.head.weight, self.head.bias)
            if plan.reduced and at_input_grid:
                logits = F.interpolate(logits, size=plan.input_shape, mode="trilinear", align_corners=False)
            out.append(logits.contiguous())
        return out


def build_vision_net(preset: str | VisionConfig = "tiny", **overrides) -> VisionNet:
    """A freshly initialised network from a preset name or config (overrides replace fields)."""
    config = get_config(preset, **overrides)
    net = VisionNet(config)
    log.debug("built vision net %s with %d parameters", config.name, sum(p.numel() for p in net.parameters()))
    return net
