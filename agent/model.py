"""The agent network: a LLaMA decoder with a phi head and an input projection for encoding vectors.

Training uses the Hugging Face forward (teacher forcing over whole episodes). Inference uses
``DecodeSession``: the same weights run through a lean loop with a preallocated (static) KV cache,
because the generic forward spends ~10 ms per token on Python bookkeeping for a model this small.
A test checks the two paths agree.

phi position: the final (post-norm) hidden state at the index of each ``<MOD>`` token, i.e. the
output that follows the output which emitted ``<MOD>`` (see ``agent.state.mod_positions``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from agent.config import AgentConfig
from agent.decode_kernel import compiled_decoder_layers

logger = logging.getLogger(__name__)


def llama_config(cfg: AgentConfig) -> LlamaConfig:
    """LlamaConfig built in code from our preset (never fetched from a hub)."""
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,  # plain multi-head attention (as LLaMA-1/2 7B)
        max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        pad_token_id=cfg.pad_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


@dataclass
class AgentOutput:
    logits: torch.Tensor  # (B, L, V)
    hidden: torch.Tensor  # (B, L, d) final post-norm hidden states (phi is read from these)
    loss: torch.Tensor | None = None  # mean CE over labelled (eta) tokens


class VoxAgentModel(nn.Module):
    """LLaMA + phi head (Linear(d, 32) + SiLU, or Linear only: ``AgentConfig.phi_activation``) + feedback
    projection (LayerNorm + Linear(d, d))."""

    def __init__(self, cfg: AgentConfig) -> None:
        super().__init__()
        if min(cfg.mod_id, cfg.step_id, cfg.enc_id, cfg.fb_open_id, cfg.fb_close_id) < 0:
            raise ValueError("AgentConfig is not bound to a tokenizer (special token ids missing)")
        self.cfg = cfg
        self.llama = LlamaForCausalLM(llama_config(cfg))
        activation = nn.SiLU() if cfg.phi_activation == "silu" else nn.Identity()
        self.phi_head = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.phi_dim), activation)
        # vision already maps encodings to d; this learns where they sit among token embeddings
        self.feedback_proj = nn.Sequential(nn.LayerNorm(cfg.hidden_size), nn.Linear(cfg.hidden_size, cfg.hidden_size))
        # a frozen sentence encoder's view of the prompt, added at position 0 (agent.prompt_encoder)
        self.prompt_proj = nn.Linear(cfg.prompt_vector_dim, cfg.hidden_size) if cfg.prompt_vector_dim else None
        # its per-token states, added to the prompt pieces' embeddings (agent.prompt_states); the
        # output layer starts at zero so that a grown checkpoint first computes what it did before
        self.prompt_state_proj = None
        if cfg.prompt_state_dim:
            self.prompt_state_proj = nn.Sequential(nn.LayerNorm(cfg.prompt_state_dim),
                                                   nn.Linear(cfg.prompt_state_dim, cfg.hidden_size))
            nn.init.zeros_(self.prompt_state_proj[1].weight)
            nn.init.zeros_(self.prompt_state_proj[1].bias)
        self._fused: tuple[Any, list[dict[str, torch.Tensor]]] | None = None
        self._lm_head_t: tuple[tuple[int, int], torch.Tensor] | None = None  # (d, V) copy for decoding

    @property
    def device(self) -> torch.device:
        return self.llama.lm_head.weight.device

    # ---- shared pieces -------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, enc_vectors: torch.Tensor | None = None,
              prompt_vectors: torch.Tensor | None = None, at_start: bool = True,
              prompt_states: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, with every ``<ENC>`` position replaced by a projected encoding vector
        (vectors consumed in row-major order of the ``<ENC>`` positions), and, for a model with a
        sentence-encoder front end, the projected prompt vector added at position 0 of each row
        (``at_start=False``: the ids continue a sequence, so there is no position 0 to add it to)
        and the projected per-token states ``prompt_states`` ((B,) T0, dim; rows of zeros add
        nothing) added at positions 0..T0-1."""
        embeds = self.llama.model.embed_tokens(input_ids)
        enc_mask = input_ids == self.cfg.enc_id
        n_enc = int(enc_mask.sum())
        n_vec = 0 if enc_vectors is None else int(enc_vectors.shape[0])
        if n_enc != n_vec:
            raise ValueError(f"{n_enc} <ENC> positions but {n_vec} encoding vectors")
        if n_enc:
            assert enc_vectors is not None
            proj = self.feedback_proj(enc_vectors.to(embeds.dtype).to(embeds.device))
            embeds = embeds.masked_scatter(enc_mask.unsqueeze(-1), proj)
        if self.prompt_proj is not None and at_start:
            if prompt_vectors is None:
                raise ValueError("this agent reads the prompt through a sentence encoder: pass prompt_vectors")
            add = self.prompt_proj(prompt_vectors.to(embeds.dtype).to(embeds.device)).reshape(-1, embeds.shape[-1])
            if embeds.dim() == 2:  # one unbatched sequence (decoding): its first position
                embeds = torch.cat([embeds[:1] + add[0], embeds[1:]])
            else:
                embeds = torch.cat([embeds[:, :1] + add[:, None], embeds[:, 1:]], dim=1)
        if self.prompt_state_proj is not None and at_start:
            if prompt_states is None:
                raise ValueError("this agent reads per-token sentence-encoder states: pass prompt_states")
            states = prompt_states.to(embeds.dtype).to(embeds.device)
            present = (states.abs().sum(-1, keepdim=True) > 0).to(embeds.dtype)
            add = self.prompt_state_proj(states) * present
            n = add.shape[-2]
            if n > embeds.shape[-2]:
                raise ValueError(f"prompt_states cover {n} positions but the ids have {embeds.shape[-2]}")
            embeds = torch.cat([embeds[..., :n, :] + add, embeds[..., n:, :]], dim=-2)
        return embeds

    def phis(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """phi (N, 32) for every ``<MOD>`` in ``input_ids`` (row-major order), from ``hidden``."""
        return self.phi_head(hidden[input_ids == self.cfg.mod_id])

    def next_token_logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary from one final hidden state (d,) -> (V,).

        Uses the (d, V)-contiguous copy of the lm head kept for decoding (same values as
        ``lm_head``; see ``fused_weights``) whenever gradients are off."""
        weight = self.llama.lm_head.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return self.llama.lm_head(hidden_last)
        key = (id(weight), weight._version)
        if self._lm_head_t is None or self._lm_head_t[0] != key:
            self._lm_head_t = (key, weight.detach().t().contiguous())
        flat = hidden_last.reshape(-1, hidden_last.shape[-1])
        return torch.mm(flat, self._lm_head_t[1]).reshape(*hidden_last.shape[:-1], -1)

    # ---- training path ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        enc_vectors: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_vectors: torch.Tensor | None = None,
        prompt_states: torch.Tensor | None = None,
    ) -> AgentOutput:
        """Teacher forcing over (B, L) ids; ``labels`` unshifted with -100 outside eta tokens."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
            labels = labels.unsqueeze(0) if labels is not None else None
        embeds = self.embed(input_ids, enc_vectors, prompt_vectors, prompt_states=prompt_states)
        out = self.llama.model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state
        logits = self.llama.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return AgentOutput(logits=logits, hidden=hidden, loss=loss)

    # ---- inference path --------------------------------------------------------------------------
    def fused_weights(self) -> list[dict[str, torch.Tensor]]:
        """Per-layer inference weights, rebuilt whenever a parameter changed.

        q/k/v and gate/up are concatenated; each RMSNorm weight is folded into the linear layer that
        follows it (W @ (w * x) == (W * w) @ x) and the attention scale into the q rows, which saves
        a dozen small ops per layer and token. Within each head the q and k rows are interleaved
        (dims j and j + head_dim/2 side by side) so that the rotary embedding is one complex multiply;
        q.k is unchanged because q and k share the permutation. Every matrix is stored transposed and contiguous,
        (in, out): for one token, ``x @ W_t`` streams the weights in the order the CPU GEMV kernel
        reads them, about 1.8x faster than ``F.linear(x, W)`` once the weights no longer fit in cache.
        """
        key = tuple((id(p), p._version) for p in self.llama.parameters())
        if self._fused is not None and self._fused[0] == key:
            return self._fused[1]
        scale = self.cfg.head_dim**-0.5
        hd, half = self.cfg.head_dim, self.cfg.head_dim // 2
        within = torch.arange(hd)
        within = within // 2 + (within % 2) * half  # new dim n <- old dim n//2 (+ half when n is odd)
        interleave = (torch.arange(self.cfg.num_heads)[:, None] * hd + within).reshape(-1)
        fused = []
        with torch.no_grad():
            for layer in self.llama.model.layers:
                att, mlp = layer.self_attn, layer.mlp
                ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
                q, k = att.q_proj.weight[interleave] * scale, att.k_proj.weight[interleave]
                qkv = torch.cat([q, k, att.v_proj.weight]) * ln1
                gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * ln2
                fused.append(
                    {
                        "qkv_t": qkv.t().contiguous(),
                        "o_t": att.o_proj.weight.detach().t().contiguous(),
                        "gate_up_t": gate_up.t().contiguous(),
                        "down_t": mlp.down_proj.weight.detach().t().contiguous(),
                    }
                )
        self._fused = (key, fused)
        return fused

    def start_session(self, capacity: int | None = None) -> "DecodeSession":
        return DecodeSession(self, capacity or self.cfg.max_positions)


class DecodeSession:
    """One growing sequence with a static KV cache: feed ids (prompt, a token, feedback) in chunks.

    Each ``feed`` returns the final hidden states of the fed positions, so the caller takes logits
    of the last one and phi at ``<MOD>`` positions without recomputing anything already cached.
    The layers run as one TorchScript function (``agent.decode_kernel``): per layer and token ~15
    tensor ops, whose per-call overhead on a 2-core CPU matters as much as their FLOPs.
    """

    def __init__(self, model: VoxAgentModel, capacity: int) -> None:
        cfg = model.cfg
        if capacity > cfg.max_positions:
            raise ValueError(f"capacity {capacity} exceeds the model's {cfg.max_positions} positions")
        self.model = model
        self.cfg = cfg
        self.capacity = capacity
        self.length = 0
        layers = model.fused_weights()
        self._weights = tuple([w[name] for w in layers] for name in ("qkv_t", "o_t", "gate_up_t", "down_t"))
        self._layers = compiled_decoder_layers()
        device, dtype = model.device, model.llama.lm_head.weight.dtype
        H, hd = cfg.num_heads, cfg.head_dim
        # (layer, k|v, head, position, head_dim)
        self.kv_cache = torch.zeros((cfg.num_layers, 2, H, capacity, hd), device=device, dtype=dtype)
        positions = torch.arange(capacity, device=device)[None]
        with torch.no_grad():
            cos, sin = model.llama.model.rotary_emb(self.kv_cache[0, 0], positions)
        half = hd // 2
        # HF rotates (x_j, x_{j+half}) by angle theta_j: a multiply by exp(i theta_j) on interleaved pairs
        self.rotation = torch.complex(cos[0, :, :half].float(), sin[0, :, :half].float())[:, None, None, :]
        self.final_norm = model.llama.model.norm.weight.detach()
        self.embed_weight = model.llama.model.embed_tokens.weight.detach()
        self.ids: list[int] = []

    @property
    def remaining(self) -> int:
        return self.capacity - self.length

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (a draft the caller decodes again); the cache
        slots beyond it are overwritten by the next ``feed``."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind a session of {self.length} positions to {length}")
        self.length = length
        del self.ids[length:]

    @torch.inference_mode()
    def feed(self, ids: list[int], enc_vectors: torch.Tensor | None = None,
             prompt_vector: torch.Tensor | None = None, prompt_states: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``ids`` (``<ENC>`` positions take ``enc_vectors``; the first feed of a model with a
        sentence-encoder front end takes ``prompt_vector`` and/or ``prompt_states``); return hidden
        states (T, d)."""
        T = len(ids)
        if T == 0:
            raise ValueError("nothing to feed")
        if T > self.remaining:
            raise OverflowError(f"sequence would exceed {self.capacity} positions")
        cfg, p0 = self.cfg, self.length
        first = p0 == 0 and (self.model.prompt_proj is not None or self.model.prompt_state_proj is not None)
        if T == 1 and enc_vectors is None and ids[0] != cfg.enc_id and not first:
            x = self.embed_weight[ids[0] : ids[0] + 1]  # one decoded token: a view, no index op
        else:
            id_tensor = torch.tensor(ids, dtype=torch.long, device=self.kv_cache.device)
            x = self.model.embed(id_tensor, enc_vectors, prompt_vector if first else None, at_start=p0 == 0,
                                 prompt_states=prompt_states if first else None)
        p1 = p0 + T
        blocked = None
        if T > 1:
            blocked = ~torch.ones(T, p1, dtype=torch.bool, device=x.device).tril(diagonal=p0)
        hidden = self._layers(x, *self._weights, self.kv_cache, self.rotation[p0:p1], blocked, self.final_norm,
                              p0, cfg.num_heads, cfg.head_dim, cfg.rms_norm_eps)
        self.length = p1
        self.ids.extend(ids)
        return hidden
