"""Latent instructions (phi) for code that carries no model-predicted ones.

The agent predicts one 32-vector phi after every `<MOD>` marker. Scripted programs
(`voxagent exec`) and code without markers get theirs from this bank instead: one vector per input
modality (for encode) and per target structure (for generate). A trained bank ships as
`models/<name>/phi_bank.safetensors`; without one, a default bank is built deterministically so that
runs are reproducible. The bank's target list is also the list of structures `generate` supports.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from api_schemas.modalities import canonical_modality

logger = logging.getLogger(__name__)

PHI_DIM = 32
UNKNOWN_MODALITY = "unknown"
DEFAULT_MODALITIES: tuple[str, ...] = ("T1", "T1C", "T2", "FLAIR", "PD", "DWI", "ADC", "SWI", "CT", UNKNOWN_MODALITY)
DEFAULT_TARGETS: tuple[str, ...] = (
    "brain", "gray matter", "white matter", "cerebrospinal fluid", "ventricles",
    "left hemisphere", "right hemisphere", "cerebellum", "brainstem", "skull", "extra-cerebral tissue",
    "lesion", "tumor", "enhancing tumor", "necrosis", "edema", "infarct", "hemorrhage",
    "white matter hyperintensities",
)
TARGET_ALIASES = {"grey matter": "gray matter", "csf": "cerebrospinal fluid", "wm": "white matter",
                  "gm": "gray matter", "wmh": "white matter hyperintensities"}
_ENCODE_PREFIX = "encode/"
_GENERATE_PREFIX = "generate/"


class UnsupportedTargetError(ValueError):
    """`generate` was asked for a structure the bank (and so the model) does not know."""


def normalize_target(target: str) -> str:
    key = re.sub(r"\s+", " ", target.strip().lower())
    return TARGET_ALIASES.get(key, key)


def _seeded_vector(label: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(PHI_DIM) * 0.5).astype(np.float32)


def phi_array(phi: object) -> np.ndarray:
    """A phi the agent emitted (a tensor, maybe bf16 or on a GPU) or any sequence, as 1-D float32 numbers."""
    if hasattr(phi, "detach"):
        phi = phi.detach().float().cpu()  # type: ignore[attr-defined]
    return np.asarray(phi, dtype=np.float32).reshape(-1)


class PhiBank:
    """Phi vectors by modality (encode) and by target (generate)."""

    def __init__(self, encode_table: Mapping[str, np.ndarray], generate_table: Mapping[str, np.ndarray]) -> None:
        self._encode = {k.upper(): self._as_phi(v, k) for k, v in encode_table.items()}
        self._generate = {normalize_target(k): self._as_phi(v, k) for k, v in generate_table.items()}
        if UNKNOWN_MODALITY.upper() not in self._encode:
            self._encode[UNKNOWN_MODALITY.upper()] = _seeded_vector(_ENCODE_PREFIX + UNKNOWN_MODALITY)

    @staticmethod
    def _as_phi(vector: np.ndarray, key: str) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        if arr.shape != (PHI_DIM,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"phi for {key!r} must be {PHI_DIM} finite numbers, got shape {arr.shape}")
        return arr

    @classmethod
    def default(cls, modalities: Iterable[str] = DEFAULT_MODALITIES,
                targets: Iterable[str] = DEFAULT_TARGETS) -> "PhiBank":
        """Deterministic vectors (seeded by the name): the same names give the same phis everywhere."""
        return cls({m: _seeded_vector(_ENCODE_PREFIX + m.upper()) for m in modalities},
                   {t: _seeded_vector(_GENERATE_PREFIX + normalize_target(t)) for t in targets})

    @classmethod
    def load(cls, path: Path | str) -> "PhiBank":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        encode = {k[len(_ENCODE_PREFIX):]: v for k, v in tensors.items() if k.startswith(_ENCODE_PREFIX)}
        generate = {k[len(_GENERATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(_GENERATE_PREFIX)}
        return cls(encode, generate)

    @classmethod
    def for_model_dir(cls, model_dir: Path | str | None) -> "PhiBank":
        """The bank shipped with a checkpoint, or the default bank when the checkpoint has none."""
        if model_dir is not None and (Path(model_dir) / "phi_bank.safetensors").is_file():
            return cls.load(Path(model_dir) / "phi_bank.safetensors")
        logger.info("no phi_bank.safetensors in %s; using the default bank", model_dir)
        return cls.default()

    def save(self, path: Path | str) -> Path:
        from safetensors.numpy import save_file

        tensors = {_ENCODE_PREFIX + k: v for k, v in self._encode.items()}
        tensors.update({_GENERATE_PREFIX + k: v for k, v in self._generate.items()})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return Path(path)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self._generate)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self._encode)

    def supports(self, target: str) -> bool:
        return normalize_target(target) in self._generate

    def encode_phi(self, modality: str | None) -> np.ndarray:
        """Phi for encoding a scan of this modality; unknown modalities share one vector. Spellings
        of one modality (``t1``, ``T1w``, ``MPRAGE``) share its vector (``canonical_modality``)."""
        key = (canonical_modality(modality) or UNKNOWN_MODALITY).upper()
        return self._encode.get(key, self._encode[UNKNOWN_MODALITY.upper()]).copy()

    def generate_phi(self, target: str) -> np.ndarray:
        key = normalize_target(target)
        if key not in self._generate:
            raise UnsupportedTargetError(f"unsupported target {target!r}; supported: {', '.join(self.targets)}")
        return self._generate[key].copy()
