"""The sentence encoder's contextual view of each prompt token, aligned to the agent's own tokens.

A mean-pooled sentence vector (``agent.prompt_encoder``) says roughly what a request is about but
is one vector for the whole prompt; the decoder still reads the words through SentencePiece pieces
it learned from the templates, so an unseen word ("volumetric", "putaminal") or an unseen sentence
shape reaches it as unfamiliar pieces. all-MiniLM-L6-v2's last hidden states are contextual word
vectors from a model trained on a billion sentence pairs: "volumetric" sits near "volume" there.

Each SentencePiece piece of the prompt receives the mean of the MiniLM token states whose
characters it overlaps; the model adds their projection to the piece's embedding
(``AgentConfig.prompt_state_dim``), so positions, lengths and the KV cache stay as they were.
Pieces outside the prompt (``prompt:``, the scan lines) and pieces of white space get none.
The agent's tokenizer uses the identity normalization, so its pieces spell the text exactly and
their character spans follow from the pieces alone (no protobuf offsets needed).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from agent.prompt_encoder import SENTENCE_DIM
from agent.state import ScanInfo, initial_state_text
from agent.tokenizer import AgentTokenizer

logger = logging.getLogger(__name__)

PROMPT_PREFIX = "prompt: "  # agent.state.initial_state_text writes the prompt after this


def piece_spans(tokenizer: AgentTokenizer, ids: Sequence[int], text: str) -> list[tuple[int, int]] | None:
    """Character span of each id's piece in ``text`` (the text ``ids`` encode, without bos), or
    None when the pieces do not spell ``text`` (then no alignment is attempted)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    pending = b""  # byte-fallback pieces of one character
    start = 0
    for i in ids:
        piece = tokenizer.piece(i)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            if not pending:
                start = pos
            pending += bytes([int(piece[3:5], 16)])
            try:
                char = pending.decode("utf-8")
            except UnicodeDecodeError:
                spans.append((start, start))  # a partial character: its span is given to the last byte
                continue
            if text[pos:pos + len(char)] != char:
                return None
            pos += len(char)
            spans.append((start, pos))
            pending = b""
            continue
        surface = piece.replace("\u2581", " ")
        if text[pos:pos + len(surface)] != surface:
            return None
        spans.append((pos, pos + len(surface)))
        pos += len(surface)
    return spans if pos == len(text) and not pending else None


def align_states(spans: Sequence[tuple[int, int]], token_offsets: np.ndarray, token_states: np.ndarray,
                 text: str, offset: int) -> np.ndarray:
    """(len(spans), dim): per piece the mean of the encoder tokens overlapping its non-space
    characters; ``token_offsets`` (N, 2) are character offsets in the prompt, which starts at
    ``offset`` in ``text``."""
    out = np.zeros((len(spans), token_states.shape[1]), dtype=np.float32)
    for k, (a, b) in enumerate(spans):
        while a < b and text[a].isspace():
            a += 1
        if a >= b:
            continue
        lo, hi = a - offset, b - offset
        hit = (token_offsets[:, 0] < hi) & (token_offsets[:, 1] > lo) & (token_offsets[:, 1] > token_offsets[:, 0])
        if hit.any():
            out[k] = token_states[hit].mean(0)
    return out


def prompt_states(tokenizer: AgentTokenizer, prompt: str, scans: Sequence[ScanInfo],
                  encoded: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(len(initial_state_ids), 384) float32: row 0 (bos) and every non-prompt piece zero.

    ``encoded`` is the encoder's (offsets, states) of ``prompt.strip()`` when already computed
    (training batches encode many prompts at once); otherwise the shared encoder runs here."""
    text = initial_state_text(prompt, scans)
    ids = tokenizer.encode_plain(text)
    core = prompt.strip()
    if encoded is None:
        from agent.prompt_encoder import shared_encoder

        encoded = shared_encoder().token_states([core])[0]
    out = np.zeros((len(ids) + 1, SENTENCE_DIM), dtype=np.float32)
    spans = piece_spans(tokenizer, ids, text)
    if spans is None:  # e.g. a special-token string neutralised in the prompt: run without this view
        logger.debug("prompt pieces do not spell the prompt; no token-level sentence-encoder view")
        return out
    offsets, states = encoded
    n_prompt = len(PROMPT_PREFIX) + len(core)
    inside = [(a, min(b, n_prompt)) if a < n_prompt else (a, a) for a, b in spans]
    out[1:] = align_states(inside, offsets, states, text, len(PROMPT_PREFIX))
    return out


__all__ = ["align_states", "piece_spans", "prompt_states"]
