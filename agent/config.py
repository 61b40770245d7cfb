"""Shapes of the agent language model, kept apart from weights so a checkpoint can be rebuilt offline."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

PHI_DIM = 32  # VoxelPrompt 3.3: phi has 32 channels
PHI_ACTIVATIONS = ("silu", "identity")

PRESETS: dict[str, dict[str, Any]] = {
    # trains on two CPU cores; d matches the tiny vision encoder's encoding dim (256)
    "tiny": dict(hidden_size=256, num_layers=4, num_heads=8, intermediate_size=1024, max_positions=2048,
                 vocab_size=3000),
    # VoxelPrompt 3.3: 16 layers, d=512, MLP 2048, 32 heads, LLaMA-2 vocabulary of 32,000
    "paper": dict(hidden_size=512, num_layers=16, num_heads=32, intermediate_size=2048, max_positions=4096,
                  vocab_size=32000),
}


@dataclass(frozen=True)
class AgentConfig:
    """Everything needed to rebuild the agent network; special token ids are copied from the tokenizer."""

    preset: str = "tiny"
    vocab_size: int = 3000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    intermediate_size: int = 1024
    max_positions: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    phi_dim: int = PHI_DIM
    # "silu" is the paper's phi head (Linear + SiLU). "identity" (Linear only) is for a vision network
    # pretrained with a learned phi bank (training.vision_pretrain): its vectors go below SiLU's
    # minimum of -0.278, which a SiLU head could never emit.
    phi_activation: str = "silu"
    # width of a sentence-encoder vector of the prompt added to the first position's embedding
    # (agent.prompt_encoder; 384 for all-MiniLM-L6-v2); 0 = the prompt's tokens only
    prompt_vector_dim: int = 0
    # width of the sentence encoder's per-token states added to each prompt piece's embedding
    # (agent.prompt_states; 384 for all-MiniLM-L6-v2); 0 = none
    prompt_state_dim: int = 0
    # special token ids (from AgentTokenizer); -1 = not yet bound to a tokenizer
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    mod_id: int = -1
    step_id: int = -1
    fb_open_id: int = -1
    fb_close_id: int = -1
    enc_id: int = -1

    @classmethod
    def from_preset(cls, preset: str, tokenizer: Any | None = None, **overrides: Any) -> "AgentConfig":
        """Preset shapes, bound to ``tokenizer``'s vocabulary and special ids when one is given."""
        if preset not in PRESETS:
            raise ValueError(f"unknown agent preset {preset!r}; choose one of {sorted(PRESETS)}")
        cfg = cls(preset=preset, **PRESETS[preset])
        if tokenizer is not None:
            cfg = cfg.bind_tokenizer(tokenizer)
        return replace(cfg, **overrides) if overrides else cfg

    def __post_init__(self) -> None:
        if self.phi_activation not in PHI_ACTIVATIONS:
            raise ValueError(f"phi_activation {self.phi_activation!r}: choose from {', '.join(PHI_ACTIVATIONS)}")

    def bind_tokenizer(self, tokenizer: Any) -> "AgentConfig":
        return replace(
            self,
            vocab_size=tokenizer.vocab_size,
            pad_id=tokenizer.pad_id,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            mod_id=tokenizer.mod_id,
            step_id=tokenizer.step_id,
            fb_open_id=tokenizer.fb_open_id,
            fb_close_id=tokenizer.fb_close_id,
            enc_id=tokenizer.enc_id,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AgentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"format_version"}
        if unknown:
            raise ValueError(f"agent config has unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})
