"""Held-out evaluation of a checkpoint: the real agent, sandbox and vision engine, end to end.

Cases: task seeds >= `EVAL_SEED_START` (never used in training) and each family's held-out prompt templates
(`Family.template_indices("held_out")`, never used in training). Family i of N is family ``i mod 20`` in a
fixed order, so a small N still covers every family.

Figures (all in [0, 1]):
* ``code_exact_match``: the agent's steps equal the ground-truth steps, all of them, byte for byte.
* ``task_success``: the response equals the ground-truth answer once numbers are set aside, every
  number is within 10 % (relative) of the true one, and the named outputs are the same.
* ``dice_<target>``: for every generate() of the ground-truth program, Dice of the agent's own
  generated mask for the same (scan, target) against the truth; missing = 0.
* ``mni_dice_*``: the agent asked to segment brain / GM / WM on the real MNI152 T1 (nilearn), against
  the template probability maps (stored 0..255, so value / 255) thresholded at 0.5 (brain: GM+WM > 0.5
  with interior holes filled). Truths: GM 1,080 mL, WM 632 mL, brain 1,749 mL
  (tests/training/test_eval.py pins them). The report also holds, per target, the agent's code and the Dice of
  the expert program run through the same network with the phi bank's instructions
  (``mni.program``): vision alone on real anatomy, so a wrong program and a weak generator are told
  apart.
* ``characterization_accuracy``: exact answer on lesion signal, side, region, enhancement, restriction.
* ``volume_error_median``: median relative error of the volume family's reported number (capped at 1;
  no number = 1).
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.phi_bank import normalize_target
from api_schemas.results import AnalysisStatus
from training.report import DICE_KEYS
from voxel_ops import Volume

logger = logging.getLogger(__name__)

CHARACTERIZATION = ("lesion_signal", "lesion_side", "lesion_region", "enhancement", "restriction")
FLAT_KEYS = ("code_exact_match", "task_success", "dice_brain", "dice_gm", "dice_wm", "dice_lesion",
             "mni_dice_brain", "mni_dice_gm", "mni_dice_wm", "characterization_accuracy", "volume_error_median")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
GENERATE_CALL = re.compile(r'generate\(\s*\w+\s*,\s*(\w+)\s*(?:<MOD>)?\s*,\s*"([^"]*)"\s*\)')
REL_TOLERANCE = 0.10
MNI_PROMPTS = {"brain": "Segment the brain on the T1.", "gray matter": "Segment the gray matter on the T1.",
               "white matter": "Segment the white matter on the T1."}
MNI_PROGRAM = ("e = encode(t1<MOD>)", 'm = generate(e, t1<MOD>, "{target}")')


class RecordingClient:
    """Wraps a VisionClient and keeps every generated volume, in call order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.generated: list[Volume] = []

    def encode(self, volumes, phis, job_id):
        return self.inner.encode(volumes, phis, job_id)

    def generate(self, handle, stream, phi):
        vol = self.inner.generate(handle, stream, phi)
        self.generated.append(vol)
        return vol

    def release(self, job_id):
        return self.inner.release(job_id)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred) > 0.5, np.asarray(truth) > 0.5
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(p, t).sum() / total)


def answer_matches(response: str, answer: str, tol: float = REL_TOLERANCE) -> bool:
    """Same words, and each number within ``tol`` relative (or 0.05 absolute near zero)."""
    norm = lambda s: re.sub(r"\s+", " ", NUMBER.sub("#", s)).strip().lower()
    if norm(response) != norm(answer):
        return False
    for got, want in zip(NUMBER.findall(response), NUMBER.findall(answer)):
        g, w = float(got), float(want)
        if abs(g - w) > max(tol * abs(w), 0.05 if abs(w) < 1 else 0.0):
            return False
    return True


def generated_masks(trace_codes: Sequence[str], volumes: Sequence[Volume]) -> dict[tuple[str, str], Volume]:
    """(scan, target) -> the volume the agent generated for it (first one), by reading its code."""
    calls = [(m.group(1), normalize_target(m.group(2))) for code in trace_codes for m in GENERATE_CALL.finditer(code)]
    out: dict[tuple[str, str], Volume] = {}
    for key, vol in zip(calls, volumes):
        out.setdefault(key, vol)
    return out


@dataclass
class CaseResult:
    seed: int
    family: str
    prompt: str
    code_match: bool
    success: bool
    response: str
    answer: str | None
    dice: dict[str, float] = field(default_factory=dict)
    volume_error: float | None = None
    grid_ceiling: dict[str, float] = field(default_factory=dict)  # truth through the working grid (grid_ceiling)
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)


class Evaluator:
    """Loads a checkpoint once and runs cases through the real runtime."""

    def __init__(self, model_dir: Path, *, max_steps: int = 8, max_wall_s: float = 120.0,
                 labels: Any = None, oracle_masks: bool = False) -> None:
        """``labels``: a `LabelCaseSource` of held-out subjects (v2 tasks on real anatomy; None: MNI
        cases); ``oracle_masks``: generate answers with the truth of the phi's nearest bank target
        (`training.prompt_eval.oracle`), so task success measures the language alone."""
        from agent.phi_bank import PhiBank
        from agent.runtime import AgentRuntime, RuntimeLimits
        from vision.engine import VisionEngine

        self.model_dir = Path(model_dir)
        self.labels = labels
        self.oracle_masks = oracle_masks
        self.engine = VisionEngine.load(self.model_dir, device="cpu")
        self.bank = PhiBank.for_model_dir(self.model_dir)
        self.runtime = AgentRuntime.from_checkpoint(
            self.model_dir, limits=RuntimeLimits(max_steps=max_steps, max_step_tokens=320, max_wall_s=max_wall_s))

    @contextlib.contextmanager
    def _sandbox(self, scans: dict[str, Volume], case: Any = None) -> Iterator[tuple[Any, RecordingClient]]:
        """A sandbox on this engine and phi bank whose generate calls are recorded; cache released after.
        With oracle masks and a ``case``, generate returns the case's truth masks."""
        from agent.sandbox import Sandbox
        from agent.vision_client import LocalVisionClient

        inner: Any = LocalVisionClient(self.engine)
        if self.oracle_masks and case is not None:
            from training.prompt_eval.oracle import OracleVisionClient

            inner = OracleVisionClient(inner, self.bank, scans, lambda scan, target: case.mask(target, scan).array)
        client = RecordingClient(inner)
        sandbox = Sandbox(scans, client=client, phi_bank=self.bank)
        try:
            yield sandbox, client
        finally:
            self.engine.release(sandbox.job_id)

    def run_agent(self, prompt: str, scans: dict[str, Volume], case: Any = None) -> tuple[Any, RecordingClient]:
        with self._sandbox(scans, case) as (sandbox, client):
            return self.runtime.run(prompt, scans, sandbox=sandbox), client

    def case(self, seed: int, family: str) -> CaseResult:
        from training.grid_ceiling import grid_ceiling_dice

        sample, case = held_out_task(seed, family, self.labels)
        t0 = time.perf_counter()
        result, client = self.run_agent(sample.prompt, case.scans, case)
        codes = [t.code for t in result.trace]
        response = " ".join(m for m in [result.text or ""]) if result.status == AnalysisStatus.succeeded else ""
        outputs = sorted(o.name for o in result.outputs)
        success = result.status == AnalysisStatus.succeeded and outputs == sorted(sample.outputs)
        if sample.answer is not None:
            success = success and answer_matches(response, sample.answer)
        masks = generated_masks(codes, client.generated)
        dices: dict[str, float] = {}
        ceiling: dict[str, float] = {}
        for scan, target in sample.generate_calls:
            truth = generate_truth(case, scan, target)
            pred = masks.get((scan, normalize_target(target)))
            dices.setdefault(target, dice(pred.array, truth.array) if pred is not None else 0.0)
            if target not in ceiling:
                ceiling[target] = grid_ceiling_dice(truth.array, truth.spacing, self.engine.config)
        volume_error = None
        if sample.family == "volume":
            got = NUMBER.findall(response)
            true = float(sample.expected["volume_ml"])
            volume_error = min(1.0, abs(float(got[0]) - true) / max(true, 1e-6)) if got else 1.0
        return CaseResult(seed=seed, family=sample.family, prompt=sample.prompt, code_match=codes == sample.steps,
                          success=bool(success), response=response, answer=sample.answer, dice=dices,
                          volume_error=volume_error, grid_ceiling=ceiling, seconds=time.perf_counter() - t0,
                          steps=codes)

    def run_program(self, steps: Sequence[str], scans: dict[str, Volume], case: Any = None) -> RecordingClient:
        """Run a fixed program (no language model) through the same engine and phi bank."""
        with self._sandbox(scans, case) as (sandbox, client):
            for code in steps:
                outcome = sandbox.execute_step(code)
                if outcome.error:
                    raise RuntimeError(f"expert program failed at {code!r}: {outcome.error}")
        return client

    def mni(self) -> dict[str, dict[str, Any]]:
        """Per target on the real MNI T1: the agent's Dice and code, and the expert program's Dice."""
        t1, truths = mni_t1_and_truths()
        out: dict[str, dict[str, Any]] = {}
        for target, prompt in MNI_PROMPTS.items():
            result, client = self.run_agent(prompt, {"t1": t1})
            codes = [t.code for t in result.trace]
            pred = generated_masks(codes, client.generated).get(("t1", target))
            steps = [code.format(target=target) for code in MNI_PROGRAM]
            program = generated_masks(steps, self.run_program(steps, {"t1": t1}).generated)[("t1", target)]
            out[target] = {"agent": dice(pred.array, truths[target]) if pred is not None else 0.0,
                           "program": dice(program.array, truths[target]), "prompt": prompt, "code": codes}
        return out


def mni_paths() -> tuple[Path, Path, Path]:
    from training.synth.anatomy import template_path

    return template_path("t1"), template_path("gm"), template_path("wm")


def mni_t1_and_truths() -> tuple[Volume, dict[str, np.ndarray]]:
    """The real MNI152 T1 and its brain/GM/WM truths: the template's probability maps (stored 0..255,
    read through `training.synth.anatomy.load_template_map`) > 0.5; brain = GM + WM > 0.5, holes filled."""
    from scipy import ndimage

    from training.synth.anatomy import load_template_map
    from voxel_ops import VolumeMeta, load_volume

    t1 = load_volume(mni_paths()[0])
    t1 = Volume(t1.array.astype(np.float32), t1.affine, VolumeMeta(modality="T1", source_name="mni152_t1"))
    (gm, gm_affine), (wm, _) = load_template_map("gm"), load_template_map("wm")
    if gm.shape != t1.shape or not np.allclose(gm_affine, t1.affine):
        raise ValueError("the MNI tissue maps and the T1 as read are not on one grid")
    truths = {"gray matter": gm > 0.5, "white matter": wm > 0.5,
              "brain": ndimage.binary_fill_holes((gm + wm) > 0.5)}
    return t1, truths


def held_out_task(task_seed: int, family: str, labels: Any = None) -> tuple[Any, Any]:
    """(sample, case) of a held-out task: an evaluation seed, and prompt templates training never uses;
    ``labels`` (a `LabelCaseSource` of held-out subjects) puts the anatomy families on real anatomy."""
    from training.tasks import sample_task
    from training.trainer import HELD_OUT_TEMPLATES

    return sample_task(task_seed, family, templates=HELD_OUT_TEMPLATES, labels=labels)


def generate_truth(case: Any, scan: str, target: str) -> Volume:
    """The true mask of a ground-truth generate call: a (possibly composed) target, or a case label."""
    from training.tasks.targets import TARGETS, truth_mask

    return truth_mask(case, target, scan) if target in TARGETS else case.mask(target, scan)


def eval_seed(seed: int, index: int) -> int:
    from training.trainer import EVAL_SEED_START

    return EVAL_SEED_START + int(seed) * 1_000_003 + index


def evaluate(model_dir: Path, cases: int = 20, seed: int = 0, *, mni: bool = True, progress: bool = True,
             data_root: Path | None = None, oracle_masks: bool = False
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """Run ``cases`` held-out tasks (+ the MNI T1); return (flat figures, detailed report).

    ``data_root``: SynthSeg label maps; the anatomy families then run on the held-out subjects (the
    v2 tasks and targets). ``oracle_masks``: truth masks in place of the network's."""
    from tqdm import tqdm

    from training.agent_episodes import label_source
    from training.tasks import FAMILIES

    ev = Evaluator(model_dir, labels=label_source(data_root, validation=True), oracle_masks=oracle_masks)
    families = list(FAMILIES)
    results: list[CaseResult] = []
    for i in tqdm(range(cases), desc="eval", disable=not progress):
        fam = families[i % len(families)]
        try:
            results.append(ev.case(eval_seed(seed, i), fam))
        except Exception as exc:  # a synthesis defect is reported, not fatal
            logger.exception("eval case %d (%s) failed", i, fam)
            results.append(CaseResult(eval_seed(seed, i), fam, "", False, False, f"error: {exc}", None))
    figures, report = summarize(results, ev.mni() if mni else {})
    report["phi_separation"] = phi_separation(model_dir)
    report["model_dir"] = str(model_dir)
    report["seed"] = seed
    report["anatomy"] = f"held-out SynthSeg subjects under {data_root}" if data_root else "MNI152"
    report["masks"] = "truth (oracle)" if oracle_masks else "network"
    return figures, report


def phi_separation(model_dir: Path) -> dict[str, Any]:
    """How far apart the agent's generate instructions are: cosine between the phi-bank vectors of
    the trained targets (the mean phi the agent emits for each). Near 1 for every pair means the
    generator cannot tell targets apart, whatever its own weights (the collapse training/phi_probe.py
    counters)."""
    from agent.phi_bank import PhiBank
    from training.trainer import CANONICAL_TARGETS

    path = Path(model_dir) / "phi_bank.safetensors"
    if not path.is_file():
        return {}
    bank = PhiBank.load(path)
    vectors = np.stack([bank.generate_phi(t) for t in CANONICAL_TARGETS]).astype(np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    pairs = [(CANONICAL_TARGETS[i], CANONICAL_TARGETS[j], float(cos[i, j]))
             for i in range(len(CANONICAL_TARGETS)) for j in range(i + 1, len(CANONICAL_TARGETS))]
    closest = max(pairs, key=lambda p: p[2])
    return {"targets": list(CANONICAL_TARGETS), "max_cosine": closest[2], "closest_pair": list(closest[:2]),
            "mean_cosine": float(np.mean([p[2] for p in pairs]))}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def summarize(results: Sequence[CaseResult], mni: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    per_target: dict[str, list[float]] = {}
    ceiling: dict[str, list[float]] = {}
    for r in results:
        for target, d in r.dice.items():
            per_target.setdefault(target, []).append(d)
        for target, d in r.grid_ceiling.items():
            ceiling.setdefault(target, []).append(d)
    char = [r.success for r in results if r.family in CHARACTERIZATION]
    vol = [r.volume_error for r in results if r.volume_error is not None]
    figures = {
        "code_exact_match": _mean([r.code_match for r in results]),
        "task_success": _mean([r.success for r in results]),
        **{key: _mean(per_target.get(t, [])) for t, key in DICE_KEYS.items()},
        "mni_dice_brain": float(mni.get("brain", {}).get("agent", 0.0)),
        "mni_dice_gm": float(mni.get("gray matter", {}).get("agent", 0.0)),
        "mni_dice_wm": float(mni.get("white matter", {}).get("agent", 0.0)),
        "characterization_accuracy": _mean(char),
        "volume_error_median": float(np.median(vol)) if vol else 1.0,
    }
    by_family: dict[str, dict[str, float]] = {}
    for r in results:
        f = by_family.setdefault(r.family, {"cases": 0, "code_exact_match": 0.0, "task_success": 0.0})
        f["cases"] += 1
        f["code_exact_match"] += r.code_match
        f["task_success"] += r.success
    for f in by_family.values():
        f["code_exact_match"] /= f["cases"]
        f["task_success"] /= f["cases"]
    report = {
        "figures": figures,
        "counts": {"cases": len(results), "characterization": len(char), "volume": len(vol),
                   **{f"dice_{t}": len(v) for t, v in per_target.items()}},
        "dice_all_targets": {t: _mean(v) for t, v in per_target.items()},
        "dice_grid_ceiling": {t: _mean(v) for t, v in ceiling.items()},
        "by_family": by_family,
        "mni": mni,
        "cases": [r.__dict__ for r in results],
    }
    return figures, report
