"""The agent's state mu as token ids, built the same way for training and for inference.

VoxelPrompt section 3: mu_1 = prompt + acquisition metadata of each input scan;
mu_{i+1} = mu_i || eta_i || z_i, where eta_i is the step's code and z_i what it read back.

Token layout (one place defines it, so the trainer and the runtime cannot drift apart)::

    mu_1  = <s> "prompt: {prompt}\n" + one line per scan "scan {name}: modality={m}; date={d}; spacing={x}x{y}x{z} mm\n"
    eta_i = code tokens (``<MOD>`` after every volume argument of encode/generate) + <STEP>
    z_i   = <FB> + per read: text tokens + "\n", or <ENC> x S + "\n" + [error line] + </FB>

Every ``<ENC>`` position takes as input embedding the projected encoding vector of one stream instead
of a token embedding. Only eta tokens carry a training label. After the last step (the one that
calls ``stop()``) nothing is appended.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from agent.sandbox.outcome import Feedback
from api_schemas.modalities import canonical_modality

if TYPE_CHECKING:  # pragma: no cover
    from agent.tokenizer import AgentTokenizer
    from voxel_ops.volume import Volume

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ScanInfo:
    """What the agent is told about one input scan: its variable name and acquisition facts."""

    name: str
    modality: str | None = None
    date: str | None = None
    spacing: tuple[float, float, float] | None = None

    def line(self) -> str:
        spacing = "x".join(f"{s:.2f}" for s in self.spacing) + " mm" if self.spacing else "unknown"
        return (
            # one spelling per modality (t1, T1w -> T1): the agent's answer must not hinge on it
            f"scan {self.name}: modality={canonical_modality(self.modality) or 'unknown'}; "
            f"date={self.date or 'unknown'}; spacing={spacing}\n"
        )


def scan_infos_from_volumes(scans: Mapping[str, "Volume"]) -> list[ScanInfo]:
    """ScanInfo per environment variable, in the mapping's order (the order the agent is told)."""
    return [
        ScanInfo(name=name, modality=vol.meta.modality, date=vol.meta.acquisition_date, spacing=vol.spacing)
        for name, vol in scans.items()
    ]


def as_scan_infos(scans_meta: Sequence[ScanInfo] | Mapping[str, object]) -> list[ScanInfo]:
    """Accept ScanInfo lists, or a name -> Volume mapping, or a name -> dict mapping."""
    if isinstance(scans_meta, Mapping):
        infos = []
        for name, item in scans_meta.items():
            if isinstance(item, ScanInfo):
                infos.append(item)
            elif isinstance(item, Mapping):
                infos.append(ScanInfo(name=name, **dict(item)))
            else:  # a Volume
                infos.extend(scan_infos_from_volumes({name: item}))  # type: ignore[dict-item]  # duck-typed Volume
        return infos
    return list(scans_meta)


def initial_state_text(prompt: str, scans: Sequence[ScanInfo]) -> str:
    return f"prompt: {prompt.strip()}\n" + "".join(s.line() for s in scans)


def initial_state_ids(tokenizer: "AgentTokenizer", prompt: str, scans: Sequence[ScanInfo]) -> list[int]:
    """mu_1 as ids (bos + prompt + scan metadata); special-token text in the prompt stays plain."""
    return [tokenizer.bos_id] + tokenizer.encode_plain(initial_state_text(prompt, scans))


def vector_feedback_label(vectors: np.ndarray) -> str:
    """How an encoding read shows up in the human-readable trace."""
    return f"[encoding: {len(vectors)} vector{'s' if len(vectors) != 1 else ''}]"


@dataclass
class FeedbackTokens:
    """z_i: ids with ``<ENC>`` placeholders, and one vector per placeholder, in order."""

    ids: list[int]
    vectors: np.ndarray  # (n_enc, d) float32; n_enc == ids.count(enc_id)


def feedback_tokens(
    tokenizer: "AgentTokenizer", feedback: Sequence[Feedback], error: str | None, dim: int
) -> FeedbackTokens:
    """z_i for one executed step (the closing ``<STEP>`` of eta_i is not included)."""
    ids = [tokenizer.fb_open_id]
    vectors: list[np.ndarray] = []
    for fb in feedback:
        if fb.text:
            ids += tokenizer.encode_plain(fb.text + ("" if fb.vectors is not None else "\n"))
        if fb.vectors is not None:
            vec = np.asarray(fb.vectors, dtype=np.float32).reshape(-1, np.shape(fb.vectors)[-1])
            if vec.shape[1] != dim:
                raise ValueError(f"encoding vectors have dim {vec.shape[1]}, the agent expects {dim}")
            ids += [tokenizer.enc_id] * len(vec) + tokenizer.encode("\n")
            vectors.append(vec)
    if error:
        ids += tokenizer.encode_plain(f"error: {error}\n")
    ids.append(tokenizer.fb_close_id)
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    return FeedbackTokens(ids=ids, vectors=stacked)


def mod_positions(ids: Sequence[int] | torch.Tensor, mod_id: int) -> list[int]:
    """Sequence indices of ``<MOD>`` tokens.

    phi of a volume argument is read from the final (post-norm) hidden state at the ``<MOD>``
    token's own index: that output vector is the one produced right after the output that emitted
    ``<MOD>`` (VoxelPrompt: the eta position immediately following ``<MOD>``). In decoding it is
    available as soon as ``<MOD>`` is fed back, with no extra placeholder token.
    """
    return [i for i, t in enumerate(ids.tolist() if isinstance(ids, torch.Tensor) else ids) if int(t) == mod_id]


@dataclass
class StepRecord:
    """One ground-truth (or recorded) step: its code and what executing it read back."""

    code: str
    feedback: list[Feedback] = field(default_factory=list)
    error: str | None = None


@dataclass
class TrainingSequence:
    """A whole episode flattened for teacher forcing."""

    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long; IGNORE_INDEX outside eta tokens (already aligned: labels[t] = input_ids[t])
    enc_vectors: torch.Tensor  # (n_enc, d) float32, one per <ENC> in input_ids, in order
    mod_positions: torch.Tensor  # (n_mod,) long: where phi is taken (see mod_positions())
    step_mod_counts: list[int] = field(default_factory=list)  # <MOD>s per step: split phis per sandbox step

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def build_training_sequence(
    tokenizer: "AgentTokenizer",
    prompt: str,
    scans: Sequence[ScanInfo],
    steps: Sequence[StepRecord],
    dim: int,
) -> TrainingSequence:
    """mu_1 || eta_1 || z_1 || ... || eta_n, with labels on eta tokens only.

    Labels are not shifted: pass them to ``VoxAgentModel.forward(labels=...)`` which shifts, as
    Hugging Face causal LMs do. z is appended after every step except the last.
    """
    ids = initial_state_ids(tokenizer, prompt, scans)
    labeled = [False] * len(ids)
    vectors: list[np.ndarray] = []
    counts: list[int] = []
    for i, step in enumerate(steps):
        code_ids = tokenizer.encode(step.code) + [tokenizer.step_id]
        counts.append(code_ids.count(tokenizer.mod_id))
        ids += code_ids
        labeled += [True] * len(code_ids)
        if i + 1 < len(steps):
            z = feedback_tokens(tokenizer, step.feedback, step.error, dim)
            ids += z.ids
            labeled += [False] * len(z.ids)
            vectors.append(z.vectors)
    input_ids = torch.tensor(ids, dtype=torch.long)
    labels = torch.where(torch.tensor(labeled), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    enc = torch.from_numpy(np.concatenate(vectors)) if vectors else torch.zeros(0, dim)
    mods = torch.tensor([p for p in mod_positions(ids, tokenizer.mod_id) if labeled[p]], dtype=torch.long)
    return TrainingSequence(input_ids=input_ids, labels=labels, enc_vectors=enc.float(), mod_positions=mods,
                            step_mod_counts=counts)


@dataclass
class TrainingBatch:
    input_ids: torch.Tensor  # (B, L) long, right-padded with pad_id
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX on padding
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    enc_vectors: torch.Tensor  # (N, d): every sequence's vectors in row-major order of the <ENC> positions


def collate_sequences(sequences: Sequence[TrainingSequence], pad_id: int) -> TrainingBatch:
    """Right-pad episodes into one batch for ``VoxAgentModel.forward``; the encoding vectors are
    concatenated in the same order ``embed`` consumes them (row by row, left to right)."""
    if not sequences:
        raise ValueError("no sequences to collate")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        n = len(seq)
        ids[row, :n], labels[row, :n], mask[row, :n] = seq.input_ids, seq.labels, 1
    enc = torch.cat([s.enc_vectors for s in sequences])
    return TrainingBatch(input_ids=ids, labels=labels, attention_mask=mask, enc_vectors=enc)
