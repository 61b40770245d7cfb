"""One task instance as a teacher-forced trajectory, executed step by step (VoxelPrompt eq. 2).

The state grows as the runtime grows it (`agent.state` layout): mu_1, then per step eta_i <STEP>
z_i. For step i the LM runs over the prefix that ends with eta_i (with grad); the phis at eta_i's
`<MOD>` positions drive the step's vision calls, which run in a real `Sandbox` over a
`TrainingVisionClient` (the `VisionNet` with grad). The step's reads become z_i: texts as tokens,
encodings as `<ENC>` positions whose embeddings are the encoder's vectors (with grad). After the
last step a final forward over the whole sequence gives the cross-entropy over eta tokens only.

The prefix is recomputed each step (no KV cache): sequences are a few hundred tokens and the
vision network dominates the cost, so correctness and simplicity win.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agent.model import VoxAgentModel
from agent.phi_bank import PhiBank
from agent.sandbox import Sandbox
from agent.sandbox.limits import SandboxLimits
from agent.state import IGNORE_INDEX, feedback_tokens, initial_state_ids, scan_infos_from_volumes
from agent.tokenizer import AgentTokenizer
from training.errors import TaskDefect
from training.phi_probe import mod_labels
from training.synth import Case
from training.tasks import TaskSample
from training.vision_client_train import GenerateRecord, TrainingVisionClient
from vision.losses import VOXEL_CE, soft_dice_loss
from vision.model import VisionNet

DICE_LAMBDA = 0.1  # paper 3.3


class TrajectoryError(TaskDefect, RuntimeError):
    """A ground-truth step failed in the sandbox (a defect of the task, not of the model)."""


@dataclass
class Trajectory:
    ce: torch.Tensor  # mean CE over eta tokens
    dice_losses: list[torch.Tensor]  # one soft-Dice loss per generate
    bce_losses: list[torch.Tensor]  # one voxel cross-entropy per generate (same order)
    generates: list[GenerateRecord]
    code_tokens: int
    correct_tokens: int  # teacher-forced argmax hits on eta tokens (a cheap accuracy signal)
    phis: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # ("encode:<modality>"|"generate:<target>", phi)
    # every <MOD>'s phi from the final forward (with grad) and what it instructs, for the phi probe;
    # labels None when some marker could not be labelled
    mod_phis: torch.Tensor | None = None
    mod_labels: list[str] | None = None

    @property
    def dice_loss(self) -> torch.Tensor:
        if not self.dice_losses:
            return self.ce.new_zeros(())
        return torch.stack(self.dice_losses).mean()

    @property
    def bce_loss(self) -> torch.Tensor:
        if not self.bce_losses:
            return self.ce.new_zeros(())
        return torch.stack(self.bce_losses).mean()

    def loss(self, dice_lambda: float = DICE_LAMBDA, bce_weight: float = 0.0) -> torch.Tensor:
        """CE + lambda * (soft Dice + bce_weight * voxel CE); bce_weight 0 is paper eq. 2."""
        seg = self.dice_loss + bce_weight * self.bce_loss if bce_weight else self.dice_loss
        return self.ce + dice_lambda * seg


def _training_limits() -> SandboxLimits:
    # no SIGALRM: a backward-carrying vision call must not be interrupted half way
    return SandboxLimits(use_alarm=False, call_timeout_s=3600.0, job_timeout_s=7200.0)


def run_trajectory(model: VoxAgentModel, tokenizer: AgentTokenizer, net: VisionNet, sample: TaskSample, case: Case,
                   *, feedback: str = "truth", phi_bank: PhiBank | None = None, joint: bool = True,
                   voxel_ce: str = "grid") -> Trajectory:
    """Teacher-force ``sample``'s ground-truth program on ``case``; gradients reach LM and vision net.

    ``voxel_ce`` names the voxel cross-entropy in ``vision.losses.VOXEL_CE`` ("grid" or "balanced").

    ``joint=False`` is a language-only pass (CE only): encodings are computed without grad and
    generate() returns the truth without running the generator, at a fraction of the cost.
    """
    tok = tokenizer
    device = model.device
    dim = model.cfg.hidden_size
    client = TrainingVisionClient(net, case, sample.generate_calls, feedback=feedback, joint=joint)
    sandbox = Sandbox(case.scans, client=client, limits=_training_limits(), phi_bank=phi_bank or PhiBank.default(),
                      job_id=f"train-{sample.seed}")
    ids = initial_state_ids(tok, sample.prompt, scan_infos_from_volumes(case.scans))
    labeled = [False] * len(ids)
    enc_chunks: list[torch.Tensor] = []
    phi_log: list[tuple[str, torch.Tensor]] = []
    modality_of = {name: case.modality(name) for name in case.scans}
    labels_of_mods: list[str] | None = []
    for i, code in enumerate(sample.steps):
        code_ids = tok.encode(code) + [tok.step_id]
        start = len(ids)
        ids += code_ids
        labeled += [True] * len(code_ids)
        phis = None
        mods = [p for p in range(start, len(ids)) if ids[p] == tok.mod_id]
        step_labels = mod_labels(code, modality_of)
        if labels_of_mods is not None:
            ok = step_labels is not None and len(step_labels) == len(mods)
            labels_of_mods = labels_of_mods + step_labels if ok else None
        if mods:
            prefix = torch.tensor(ids, dtype=torch.long, device=device)
            vectors = torch.cat(enc_chunks) if enc_chunks else None
            # language-only: phi only feeds a no-grad encode (generate answers the truth), so no graph
            with torch.set_grad_enabled(joint and torch.is_grad_enabled()):
                hidden = model(prefix, enc_vectors=vectors).hidden[0]
                phis = list(model.phi_head(hidden[mods]))
        outcome = sandbox.execute_step(code, phis)
        if outcome.error:
            raise TrajectoryError(f"{sample.family} seed {sample.seed} step {i}: {outcome.error}")
        if phis and step_labels is not None and len(step_labels) == len(phis):
            phi_log.extend((label, phi.detach()) for label, phi in zip(step_labels, phis))
        if i + 1 == len(sample.steps):
            break
        z = feedback_tokens(tok, outcome.feedback, None, dim)
        grad_vectors = [client.vectors_for(fb.vectors) for fb in outcome.feedback if fb.vectors is not None]
        if grad_vectors:
            stacked = torch.cat([v.reshape(-1, dim) for v in grad_vectors]).to(device)
            if stacked.shape[0] != len(z.vectors):
                raise TrajectoryError("read-back vectors do not line up with <ENC> positions")
            enc_chunks.append(stacked)
        ids += z.ids
        labeled += [False] * len(z.ids)

    input_ids = torch.tensor(ids, dtype=torch.long, device=device)
    labels = torch.where(torch.tensor(labeled, device=device), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    out = model(input_ids, enc_vectors=torch.cat(enc_chunks) if enc_chunks else None, labels=labels)
    with torch.no_grad():
        pred = out.logits[0, :-1].argmax(-1)
        target = labels[1:]
        hits = int(((pred == target) & (target != IGNORE_INDEX)).sum())
        n_code = int((target != IGNORE_INDEX).sum())
    dice = [soft_dice_loss(g.logits.float(), g.truth) for g in client.generates]
    bce = [VOXEL_CE[voxel_ce](g.logits.float(), g.truth) for g in client.generates]
    # phi at every labelled <MOD> from this final forward: same values as the prefix forwards (causal),
    # with grad into the agent even on language-only passes
    mod_at = [p for p in range(len(ids)) if ids[p] == tok.mod_id and labeled[p]]
    mod_phis = model.phi_head(out.hidden[0][mod_at]) if mod_at else None
    return Trajectory(ce=out.loss, dice_losses=dice, bce_losses=bce, generates=client.generates, code_tokens=n_code,
                      correct_tokens=hits, phis=phi_log, mod_phis=mod_phis,
                      mod_labels=labels_of_mods if labels_of_mods is not None and len(labels_of_mods) == len(mod_at)
                      else None)


def phi_summary(trajectories_phis: list[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Mean phi per label over many trajectories."""
    sums: dict[str, list[np.ndarray]] = {}
    for label, phi in trajectories_phis:
        sums.setdefault(label, []).append(phi.float().cpu().numpy())
    return {k: np.mean(v, axis=0).astype(np.float32) for k, v in sums.items()}
