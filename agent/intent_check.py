"""A second opinion on what a request asks for: its nearest training requests, by sentence vector.

Why: a wrong program usually runs and answers fluently ("How big are the lateral ventricles?"
answered with their extents), and the decoder's own token probabilities barely tell wrong answers
from right ones (on the dev set the old low-confidence flag caught 33 % of the wrong answers and
39 % of the right ones). An independent reader does better: embed the request with the frozen
sentence encoder, take the ``k`` nearest training requests and ask whether the program the agent
ran has a shape (the set of library functions it calls) that the family with the most of their
(cosine-weighted) vote produces. When it has not, the result carries a low-confidence warning
naming that family and the nearest known wording, so the user can check or rephrase. On the dev
paraphrases (agent_v2s_more step 4,750, truth masks, `voxagent eval --prompts`) it flags 53 % of
the succeeded-but-wrong answers and 30 % of the correct ones; the token-probability flag there:
26 % and 39 %.

The index is written beside the agent when a run is exported (``intent_index.safetensors``: unit
vectors in fp16, the family of each row, and each family's program shapes), from training-template
requests only. Models without one get no such warning.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INDEX_NAME = "intent_index.safetensors"
# calls every program makes, whatever it was asked: they say nothing about the kind of request
PLUMBING = frozenset({"encode", "generate", "read", "respond", "stop"})
NEIGHBOURS = 5
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")


def program_shape(steps: Iterable[str], library: Iterable[str]) -> frozenset[str]:
    """The library functions a program calls, less the plumbing every program has."""
    names = set(library)
    return frozenset(n for code in steps for n in _CALL.findall(code) if n in names and n not in PLUMBING)


@dataclass
class IntentIndex:
    """Unit sentence vectors of training requests, each with its task family, and the program
    shapes each family produces."""

    vectors: np.ndarray  # (N, D) float32, unit rows
    families: list[str]  # family of each row
    examples: list[str]  # the request text of each row (named in warnings)
    shapes: dict[str, set[frozenset[str]]]  # family -> program shapes seen in training

    def __post_init__(self) -> None:
        if not (len(self.vectors) == len(self.families) == len(self.examples)):
            raise ValueError(f"{len(self.vectors)} vectors, {len(self.families)} families and "
                             f"{len(self.examples)} examples: one of each per row")
        unknown = set(self.families) - set(self.shapes)
        if unknown:
            raise ValueError(f"families without program shapes: {sorted(unknown)}")

    # -- building and storing ------------------------------------------------------------------
    @classmethod
    def build(cls, requests: Sequence[tuple[str, str, Sequence[str]]], encode, library: Iterable[str],
              per_family: int = 150, seed: int = 0) -> IntentIndex:
        """From (family, prompt, program steps) triples of training episodes: every program's shape
        goes into its family's set; up to ``per_family`` distinct prompts per family are embedded
        with ``encode`` (texts -> (n, D) array)."""
        library = list(library)
        shapes: dict[str, set[frozenset[str]]] = {}
        prompts: dict[str, list[str]] = {}
        for family, prompt, steps in requests:
            shapes.setdefault(family, set()).add(program_shape(steps, library))
            prompts.setdefault(family, [])
            if prompt not in prompts[family]:
                prompts[family].append(prompt)
        rng = np.random.default_rng(seed)
        rows = [(f, ps[i]) for f, ps in sorted(prompts.items()) for i in sorted(rng.permutation(len(ps))[:per_family])]
        vectors = np.asarray(encode([p for _, p in rows]), dtype=np.float32)
        return cls(_unit(vectors), [f for f, _ in rows], [p for _, p in rows], shapes)

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        names = sorted(self.shapes)
        meta = {"families": json.dumps(names), "examples": json.dumps(self.examples),
                "shapes": json.dumps({f: sorted(sorted(s) for s in self.shapes[f]) for f in names})}
        save_file({"vectors": self.vectors.astype(np.float16),
                   "family": np.asarray([names.index(f) for f in self.families], dtype=np.int16)},
                  str(path), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, model_dir: str | Path) -> IntentIndex | None:
        """The index beside a model, or None where the model has none."""
        path = Path(model_dir) / INDEX_NAME
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "np") as fh:
            meta = fh.metadata()
            vectors, family = fh.get_tensor("vectors"), fh.get_tensor("family")
        names = json.loads(meta["families"])
        shapes = {f: {frozenset(s) for s in v} for f, v in json.loads(meta["shapes"]).items()}
        return cls(_unit(vectors.astype(np.float32)), [names[i] for i in family], json.loads(meta["examples"]),
                   shapes)

    # -- the check -------------------------------------------------------------------------------
    def vote(self, vector: np.ndarray, k: int = NEIGHBOURS) -> tuple[Counter[str], int]:
        """Cosine-weighted family vote of the ``k`` nearest rows, and the nearest row."""
        sims = self.vectors @ _unit(np.asarray(vector, dtype=np.float32)[None])[0]
        top = np.argsort(-sims)[:k]
        votes: Counter[str] = Counter()
        for j in top:
            votes[self.families[j]] += max(float(sims[j]), 0.0)
        return votes, int(top[0])

    def warning(self, vector: np.ndarray, steps: Sequence[str], library: Iterable[str],
                k: int = NEIGHBOURS) -> str | None:
        """A low-confidence warning when the program's shape is not one the family with the most
        vote among the ``k`` nearest training requests produces; None when it is."""
        votes, nearest = self.vote(vector, k)
        if not votes:
            return None
        expected = votes.most_common(1)[0][0]
        if program_shape(steps, library) in self.shapes[expected]:
            return None
        return (f"the request reads like a {expected.replace('_', ' ')} request (nearest known wording: "
                f"{self.examples[nearest]!r}), but the program does something else: low confidence, "
                "check that it answers what was asked")


def intent_warnings(index: IntentIndex | None, vector: np.ndarray | None, steps: Sequence[str],
                    library: Mapping[str, object] | Iterable[str]) -> list[str]:
    """``index.warning`` as a list, empty where there is no index or no sentence vector."""
    if index is None or vector is None:
        return []
    w = index.warning(vector, steps, library)
    return [w] if w else []


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
