"""The single-task baseline for stage 1: a plain multi-label UNet on the same data and budget.

Same encoder/generator shape as the instructable network, but phi is ignored (``baseline=True``)
and the head emits one logit per label class (the 32 SynthSeg structures, background and the four
lesion parts), trained with softmax cross-entropy + soft Dice, as nnU-Net and SynthSeg train. A group
target (``brain``, ``hippocampus``, ...) is the union of its classes in the arg-max map. Issue #19's
figure: the phi-instructed network within 2 Dice points of this one at the same number of samples.

    python -m training.vision_pretrain --run runs/baseline --variant multilabel_baseline --hours 2
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.vision_pretrain import VisionPretrainer
from vision.targets import LEFT_LESION_LABELS, LUT_SIZE, RIGHT_LESION, SYNTHSEG_STRUCTURES, TARGETS

# class index -> segmentation label it stands for (lesion parts: the left code; side from anatomy)
CLASS_LABELS: tuple[int, ...] = (0, *(next(iter(TARGETS[n].labels)) for n in SYNTHSEG_STRUCTURES),
                                 *LEFT_LESION_LABELS)


def class_lut() -> np.ndarray:
    """Segmentation label -> class index (both sides of a lesion part share a class)."""
    lut = np.zeros(LUT_SIZE, dtype=np.int64)
    for i, label in enumerate(CLASS_LABELS):
        lut[label] = i
        if label in LEFT_LESION_LABELS:
            lut[label + RIGHT_LESION] = i
    return lut


class MultiLabelPretrainer(VisionPretrainer):
    """Override of ``_forward_backward``: all classes at once from one forward pass, no phi."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.net.config.out_channels != len(CLASS_LABELS) or not self.net.config.baseline:
            raise ValueError(f"the multi-label baseline needs vision baseline=True and out_channels="
                             f"{len(CLASS_LABELS)}, got {self.net.config}")
        if self.config.mni_share > 0:
            # it trains every class on every sample; an MNI sample defines only a few (mni_synthseg)
            raise ValueError("the multi-label baseline cannot train on MNI samples: set mni_share to 0")
        self._class_lut = torch.from_numpy(class_lut()).to(self.device)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Softmax CE + soft Dice over the foreground classes present (nnU-Net's pair); ``targets`` are
        class probabilities (B, C, ...): one-hot, or area-averaged one-hot on the working grid."""
        ce = F.cross_entropy(logits, targets)
        probs = torch.softmax(logits, 1)
        dims = (0, *range(2, logits.ndim))
        inter = (probs * targets).sum(dims)
        denom = probs.sum(dims) + targets.sum(dims)
        dice = ((2 * inter + 1.0) / (denom + 1.0))[1:]
        present = targets.sum(dims)[1:] > 0
        dice_mean = dice[present].mean() if bool(present.any()) else dice.mean()
        total = self.config.dice_weight * (1 - dice_mean) + self.config.ce_weight * ce
        return total, {"dice": float(dice_mean.detach()), "ce": float(ce.detach())}

    def _forward_backward(self, sample: dict, chosen: list[int], masks: torch.Tensor,
                          bf16: bool) -> dict[str, float] | None:
        """Every class at once from one forward pass (``chosen``/``masks`` of the phi trainer unused)."""
        image = sample["image"][None, None].to(self.device)
        classes = self._class_lut[sample["labels"].to(self.device, torch.int64)][None]
        targets = F.one_hot(classes, len(CLASS_LABELS)).movedim(-1, 1).float()
        zero = torch.zeros(self.net.config.phi_dim, device=self.device)
        working = self.config.loss_grid == "working"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            enc = self.net.encode([image], [sample["spacing"]], [zero])
            plan = enc.streams[0].plan
            logits = self.net.decode([enc.streams[0].skips], [plan], [zero], at_input_grid=not working)[0]
        if working and plan.reduced:
            targets = F.interpolate(targets, size=plan.working_shape, mode="area")
        loss, parts = self.loss(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None
        loss.backward()
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.last_targets = []
        return {"loss": float(loss.detach()), **parts}


def predict_labels(net, tensor: torch.Tensor, spacing) -> np.ndarray:
    """Arg-max segmentation labels of a multi-label baseline on one prepared input."""
    zero = torch.zeros(net.config.phi_dim)
    with torch.inference_mode():
        enc = net.encode([tensor], [spacing], [zero])
        logits = net.decode([enc.streams[0].skips], [enc.streams[0].plan], [zero])[0]
    idx = logits[0].argmax(0).numpy()
    return np.asarray(CLASS_LABELS, dtype=np.int16)[idx]


__all__ = ["CLASS_LABELS", "MultiLabelPretrainer", "class_lut", "predict_labels"]
