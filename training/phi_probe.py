"""Auxiliary loss on phi: a linear probe must tell from each phi what it instructs.

Why: trained with cross-entropy + 0.1 x soft Dice alone (paper eq. 2) for 2 hours on a 2-core CPU,
the tiny agent emitted one and the same generate phi for every target (cosine 1.000 between the
phis for brain, white matter, lesion and both hemispheres; see the model card). The generator then
cannot know what to segment and draws one blended brain-like mask for every request. The Dice
gradient reaching the agent through the generator is too weak to break that symmetry in a CPU
budget; a probe that has to classify phi (the generate target, or the modality of an encoded scan)
gives the agent a direct gradient to keep instructions apart. The probe is training-only: it is
saved in the training state, never in the exported model, and inference is unchanged.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

_MARKED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*<MOD>")
_TARGET_AFTER = re.compile(r'\s*,\s*"([^"]+)"')


def mod_labels(code: str, modality_of: dict[str, str]) -> list[str] | None:
    """One label per ``<MOD>`` of ``code``, in order: ``generate:<target>`` or ``encode:<modality>``.

    ``modality_of`` maps scan variable names to modalities. None when a marker cannot be labelled
    (the program does not follow the conventions of the task families).
    """
    labels: list[str] = []
    for match in _MARKED.finditer(code):
        before = code[: match.start()]
        call = max(("encode(", "generate("), key=before.rfind)
        if before.rfind(call) < 0:
            return None
        if call == "generate(":
            target = _TARGET_AFTER.match(code, match.end())
            if target is None:
                return None
            labels.append(f"generate:{target.group(1)}")
        else:
            labels.append(f"encode:{modality_of.get(match.group(1), 'unknown')}")
    return labels


class PhiProbe(nn.Module):
    """Linear classifier over phi; labels get an output unit the first time they are seen."""

    def __init__(self, phi_dim: int, capacity: int = 64) -> None:
        super().__init__()
        self.linear = nn.Linear(phi_dim, capacity)
        self.labels: dict[str, int] = {}

    def _index(self, label: str) -> int:
        if label not in self.labels and len(self.labels) < self.linear.out_features:
            self.labels[label] = len(self.labels)
        return self.labels.get(label, -100)  # beyond capacity: ignored by the loss

    def loss(self, phis: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """Mean cross-entropy of the labels of ``phis`` (N, phi_dim); 0 when there is nothing to score."""
        if phis.shape[0] == 0 or phis.shape[0] != len(labels):
            return phis.new_zeros(())
        target = torch.tensor([self._index(lab) for lab in labels], dtype=torch.long, device=phis.device)
        if bool((target < 0).all()):
            return phis.new_zeros(())
        return F.cross_entropy(self.linear(phis), target, ignore_index=-100)

    def accuracy(self, phis: torch.Tensor, labels: list[str]) -> float:
        """Share of phis the probe labels correctly (a cheap view of how separable phis are)."""
        known = [(i, self.labels[lab]) for i, lab in enumerate(labels) if lab in self.labels]
        if not known:
            return float("nan")
        with torch.no_grad():
            pred = self.linear(phis[[i for i, _ in known]].detach()).argmax(-1).tolist()
        return sum(p == t for p, (_, t) in zip(pred, known)) / len(known)

    def to_state(self) -> dict:
        return {"weights": self.state_dict(), "labels": dict(self.labels)}

    def load_from_state(self, state: dict) -> None:
        self.load_state_dict(state["weights"])
        self.labels = dict(state["labels"])


__all__ = ["PhiProbe", "mod_labels"]
