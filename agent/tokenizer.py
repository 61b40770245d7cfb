"""SentencePiece tokenizer of the agent, trained by us on the task corpus (prompts, code, read values).

Why these trainer options: agent code must come back byte for byte (indentation, newlines, quotes),
so normalization is the identity, whitespace is kept, and unseen characters fall back to bytes.
Digits are split so that a number read back (``1234.5 mL``) always tokenizes digit by digit, the
same way wherever it appears. The special tokens are user-defined symbols: written as text they
encode to one id and decode back to the same text, which is how the sandbox sees ``<MOD>``.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

logger = logging.getLogger(__name__)

MOD = "<MOD>"  # marks a volume argument; the hidden state at this token gives that argument's phi
STEP = "<STEP>"  # ends one step of code
FB_OPEN = "<FB>"  # starts the feedback z_i of a step
FB_CLOSE = "</FB>"  # ends it
ENC = "<ENC>"  # placeholder position whose input embedding is a projected encoding vector
SPECIAL_TOKENS: tuple[str, ...] = (MOD, STEP, FB_OPEN, FB_CLOSE, ENC)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TINY_VOCAB = 3000
PAPER_VOCAB = 32000  # the LLaMA-2 vocabulary size VoxelPrompt used


class AgentTokenizer:
    """Thin wrapper around a SentencePiece model with the agent's special ids as attributes."""

    def __init__(self, model_proto: bytes) -> None:
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        ids = {tok: self.sp.piece_to_id(tok) for tok in SPECIAL_TOKENS}
        missing = [tok for tok, i in ids.items() if i == self.sp.unk_id() or self.sp.id_to_piece(i) != tok]
        if missing:
            raise ValueError(f"tokenizer model lacks the agent's special tokens {missing}")
        self.mod_id = ids[MOD]
        self.step_id = ids[STEP]
        self.fb_open_id = ids[FB_OPEN]
        self.fb_close_id = ids[FB_CLOSE]
        self.enc_id = ids[ENC]
        self.pad_id = self.sp.pad_id()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.special_ids = frozenset(ids.values())

    @classmethod
    def load(cls, path: str | Path) -> "AgentTokenizer":
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._proto)
        return path

    @property
    def model_proto(self) -> bytes:
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Text (special tokens written out as text allowed) to ids; no bos/eos added."""
        return list(self.sp.encode(text, out_type=int)) if text else []

    def encode_plain(self, text: str) -> list[int]:
        """Ids for untrusted text (prompt, read values): special-token strings in it stay plain text.

        A prompt or a read value that contains ``<ENC>`` or ``<MOD>`` must not create a placeholder or
        a phi position, so such occurrences are neutralised by a space after ``<``.
        """
        return self.encode(neutralize_special(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))


def neutralize_special(text: str) -> str:
    for tok in SPECIAL_TOKENS:
        if tok in text:
            text = text.replace(tok, "< " + tok[1:])
    return text


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = TINY_VOCAB,
    out_path: str | Path | None = None,
    *,
    model_type: str = "bpe",
    num_threads: int = 2,
) -> AgentTokenizer:
    """Train the agent tokenizer from an in-memory iterator of texts; write ``out_path`` when given.

    ``vocab_size`` is a soft limit (a small corpus yields fewer pieces rather than failing).
    """
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=int(vocab_size),
        model_type=model_type,
        split_digits=True,
        byte_fallback=True,
        user_defined_symbols=list(SPECIAL_TOKENS),
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        num_threads=num_threads,
        minloglevel=2,
    )
    tokenizer = AgentTokenizer(buf.getvalue())
    logger.info("trained agent tokenizer: %d pieces (asked %d)", tokenizer.vocab_size, vocab_size)
    if out_path is not None:
        tokenizer.save(out_path)
    return tokenizer
