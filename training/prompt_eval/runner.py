"""`voxagent eval --prompts FILE`: run a file of freely worded requests end to end and judge them.

Each line of the file is ``{"id", "scans": [names], "prompt", "expect": {"kind", "target"}}``. For
every request a case with known truth is synthesized under the request's scan names (`cases`), the
shipped agent runs on it exactly as `voxagent run` runs it (the checkpoint's runtime, a sandbox on the
checkpoint's phi bank, the local vision engine, the service's step and wall-time limits), and the
judge (`judge`) scores kind, target, number and status. The report holds, per request, the code the
agent ran and the verdict, and per kind the rates, as JSON and a markdown table.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_schemas.limits import AGENT_MAX_WALL_S
from training.prompt_eval.cases import CaseFactory, EvalCase
from training.prompt_eval.judge import MEASURED, Judgement, judge
from training.prompt_eval.program import analyze
from training.prompt_eval.targets import expected_target

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench/results/prompt_eval")
SERVICE_MAX_STEPS = 12  # service.settings.Settings.agent_max_steps: what `voxagent run` gives a job


@dataclass(frozen=True)
class PromptRequest:
    id: str
    scans: tuple[str, ...]
    prompt: str
    kind: str
    target: str | None


def load_requests(path: Path | str) -> list[PromptRequest]:
    """The requests of a JSONL file; a malformed line is a ValueError naming its line number."""
    out: list[PromptRequest] = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            expect = row["expect"]
            scans = tuple(str(s) for s in row["scans"])
            request = PromptRequest(str(row["id"]), scans, str(row["prompt"]), str(expect["kind"]),
                                    None if expect.get("target") is None else str(expect["target"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a request line ({type(exc).__name__}: {exc})") from None
        if not scans or any(not s.isidentifier() for s in scans):
            raise ValueError(f"{path}:{number}: scans must be a non-empty list of names")
        if request.id in seen:
            raise ValueError(f"{path}:{number}: duplicate id {request.id!r}")
        seen.add(request.id)
        out.append(request)
    return out


class PromptEvaluator:
    """Loads the checkpoint and the held-out label maps once, then runs requests one by one."""

    def __init__(self, model_dir: Path | str, cases: CaseFactory, *, max_steps: int = SERVICE_MAX_STEPS,
                 max_wall_s: float = AGENT_MAX_WALL_S, seed: int = 0, oracle_masks: bool = False) -> None:
        from agent.phi_bank import PhiBank
        from agent.runtime import AgentRuntime, RuntimeLimits
        from vision.engine import VisionEngine

        self.model_dir = Path(model_dir)
        self.cases = cases
        self.seed = seed
        self.oracle_masks = oracle_masks  # truth masks for the phi's nearest target (language alone)
        self.runtime = AgentRuntime.from_checkpoint(
            self.model_dir, limits=RuntimeLimits(max_steps=max_steps, max_wall_s=max_wall_s))
        self.engine = VisionEngine.load(self.model_dir)
        self.bank = PhiBank.for_model_dir(self.model_dir)

    def run_agent(self, prompt: str, case: EvalCase) -> tuple[Any, dict[str, Any]]:
        """(AnalysisResult, the sandbox's environment after the run) of one prompt on a case."""
        from agent.sandbox import Sandbox
        from agent.vision_client import LocalVisionClient

        job = uuid.uuid4().hex
        client: Any = LocalVisionClient(self.engine)
        if self.oracle_masks:
            from training.prompt_eval.oracle import OracleVisionClient, label_truth

            client = OracleVisionClient(client, self.bank, case.scans, label_truth(case.labels))
        sandbox = Sandbox(case.scans, client=client, phi_bank=self.bank, job_id=job)
        try:
            result = self.runtime.run(prompt, case.scans, sandbox=sandbox)
        finally:
            self.engine.release(job)
        return result, dict(sandbox.env)

    def run(self, request: PromptRequest) -> dict[str, Any]:
        """One request, synthesized, run and judged; a failure to build its case is reported, not raised."""
        t0 = time.perf_counter()
        expected = expected_target(request.target, request.kind)
        base = {"id": request.id, "prompt": request.prompt, "scans": list(request.scans),
                "expected": {"kind": request.kind, "target": request.target,
                             "resolved": expected.text() if expected else None}}
        if expected is None:
            return {**base, "status": "not_run", "correct": False, "program_correct": False,
                    "number_correct": False if request.kind in MEASURED else None, "succeeded_wrong": False,
                    "notes": [f"target {request.target!r} is not expressible with the target table"]}
        case = self.cases.build(request.id, request.scans, request.kind, expected, seed=self.seed)
        result, env = self.run_agent(request.prompt, case)
        view = analyze([t.code for t in result.trace], [t.error for t in result.trace], case.modalities)
        verdict = judge(request.kind, expected, case, result, env, view)
        return {**base, **_verdict(verdict), "status": result.status.value, "answer": result.text,
                "metrics": [m.model_dump() for m in result.metrics], "outputs": [o.name for o in result.outputs],
                "code": [t.code for t in result.trace], "step_errors": [t.error for t in result.trace],
                "warnings": list(result.warnings),
                "low_confidence": any("low confidence" in w for w in result.warnings),
                # which signal raised it: the decoder's own token odds, or agent.intent_check
                "doubt_token": any("written with low confidence" in w for w in result.warnings),
                "doubt_intent": any("the request reads like" in w for w in result.warnings),
                "doubt_mention": any("the request names the" in w for w in result.warnings),
                "case": case.summary(), "seconds": round(time.perf_counter() - t0, 3)}


def _verdict(v: Judgement) -> dict[str, Any]:
    return {"judged": {"kind": v.judged_kind, "kinds": v.judged_kinds, "target": v.judged_target},
            "kind_correct": v.kind_correct, "target_correct": v.target_correct,
            "program_correct": v.program_correct, "number_correct": v.number_correct, "correct": v.correct,
            "succeeded_wrong": v.succeeded_wrong, "number": v.number, "notes": v.notes, "findings": v.findings}


def _rate(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [bool(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates overall and per expected kind: correct, program correct, number correct (measured kinds
    only), succeeded, succeeded but wrong."""
    def rates(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"requests": len(rows), "correct": _rate(rows, "correct"),
                "program_correct": _rate(rows, "program_correct"), "number_correct": _rate(rows, "number_correct"),
                "kind_correct": _rate(rows, "kind_correct"), "target_correct": _rate(rows, "target_correct"),
                "succeeded": sum(r.get("status") == "succeeded" for r in rows) / len(rows) if rows else None,
                "succeeded_wrong": _rate(rows, "succeeded_wrong"),
                # how often the low-confidence warning flags a wrong answer, and a right one
                "flagged_when_wrong": _rate([r for r in rows if r.get("succeeded_wrong")], "low_confidence"),
                "flagged_when_correct": _rate([r for r in rows if r.get("correct")], "low_confidence"),
                **{f"{key}_when_{when}": _rate([r for r in rows if r.get(field)], key)
                   for key in ("doubt_token", "doubt_intent", "doubt_mention")
                   for when, field in (("wrong", "succeeded_wrong"), ("correct", "correct"))}}

    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        kinds.setdefault(r["expected"]["kind"], []).append(r)
    return {"overall": rates(records),
            "by_kind": {k: rates(v) for k, v in sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))}}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def markdown(report: dict[str, Any]) -> str:
    """The per-kind table (and the overall row) of a report."""
    head = ("| kind | n | correct | program correct | number correct | succeeded | succeeded but wrong |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n")

    def row(name: str, r: dict[str, Any]) -> str:
        return (f"| {name} | {r['requests']} | {_pct(r['correct'])} | {_pct(r['program_correct'])} | "
                f"{_pct(r['number_correct'])} | {_pct(r['succeeded'])} | {_pct(r['succeeded_wrong'])} |\n")

    s = report["summary"]
    lines = [f"# Prompt evaluation: {report['prompts']}\n\n",
             f"Model `{report['model']}`, {s['overall']['requests']} requests, cases from held-out SynthSeg "
             f"subjects at {report['voxel_mm']:g} mm (seed {report['seed']}), masks from the "
             f"{report.get('masks', 'network')}, {report['seconds']:.0f} s.\n\n",
             "*program correct*: kind and target right and status `succeeded`; *number correct*: also the "
             "value within tolerance (measured kinds only); *correct*: number correct where there is a "
             "number, program correct otherwise.\n\n", head]
    lines += [row(k, r) for k, r in s["by_kind"].items()]
    lines.append(row("**all**", s["overall"]))
    o = s["overall"]
    lines.append(f"\nLow-confidence warning on {_pct(o.get('flagged_when_wrong'))} of the succeeded-but-wrong "
                 f"answers and {_pct(o.get('flagged_when_correct'))} of the correct ones; from a step token "
                 f"below probability 0.5: {_pct(o.get('doubt_token_when_wrong'))} / "
                 f"{_pct(o.get('doubt_token_when_correct'))}; from the nearest training requests "
                 f"(agent.intent_check): {_pct(o.get('doubt_intent_when_wrong'))} / "
                 f"{_pct(o.get('doubt_intent_when_correct'))}; from targets the request names and no step "
                 f"segmented (agent.target_mentions): {_pct(o.get('doubt_mention_when_wrong'))} / "
                 f"{_pct(o.get('doubt_mention_when_correct'))}.\n")
    return "".join(lines)


def evaluate_prompts(prompts: Path | str, model_dir: Path | str, *, data_root: Path | str | None = None,
                     limit: int | None = None, seed: int = 0, voxel_mm: float = 1.0, progress: bool = True,
                     oracle_masks: bool = False) -> dict[str, Any]:
    """Run and judge the requests of ``prompts`` (the first ``limit``); returns the report."""
    from tqdm import tqdm

    from training.synth.synthseg import DEFAULT_ROOT, VALIDATION_SUBJECTS, LabelMaps, Priors

    requests = load_requests(prompts)[:limit] if limit else load_requests(prompts)
    root = Path(data_root) if data_root is not None else DEFAULT_ROOT
    factory = CaseFactory(LabelMaps(root, VALIDATION_SUBJECTS), Priors(root), voxel_mm=voxel_mm)
    evaluator = PromptEvaluator(model_dir, factory, seed=seed, oracle_masks=oracle_masks)
    t0 = time.perf_counter()
    records = []
    for request in tqdm(requests, desc="prompts", disable=not progress):
        try:
            records.append(evaluator.run(request))
        except Exception as exc:  # noqa: BLE001 - one broken case must not lose the other requests' verdicts
            logger.exception("request %s failed", request.id)
            records.append({"id": request.id, "prompt": request.prompt, "scans": list(request.scans),
                            "expected": {"kind": request.kind, "target": request.target}, "status": "error",
                            "correct": False, "program_correct": False, "succeeded_wrong": False,
                            "number_correct": False if request.kind in MEASURED else None,
                            "notes": [f"{type(exc).__name__}: {exc}"]})
    return {"prompts": str(prompts), "model": str(model_dir), "seed": seed, "voxel_mm": voxel_mm,
            "masks": "truth (oracle)" if oracle_masks else "network",
            "seconds": time.perf_counter() - t0, "summary": summarize(records), "requests": records}


def write_report(report: dict[str, Any], out: Path | str) -> tuple[Path, Path]:
    """``out``.json and ``out``.md (a .json/.md suffix on ``out`` is dropped)."""
    stem = Path(out)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path


__all__ = ["DEFAULT_OUT", "PromptEvaluator", "PromptRequest", "evaluate_prompts", "load_requests", "markdown",
           "summarize", "write_report"]
