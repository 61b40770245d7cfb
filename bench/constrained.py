"""Cost and effect of constrained decoding on the shipped agent (``models/voxagent-tiny``).

Definitions
- prompts: the training task templates' own requests, ``training.tasks.sample_task(seed)`` for seeds
  from 10**9 (never used in training), each with its synthesized case. Each prompt runs twice, once
  without and once with constraints, alternating which goes first, so both modes see the same
  machine load. Steps execute in the real sandbox with the oracle vision client (true masks), so
  later steps see real feedback; only the language model's decoding is timed.
- decode_ms_per_step: the runtime's ``timings_s["decode"]`` of a run divided by its steps (median
  over runs); decode_ms_per_token: the same divided by the tokens it decoded. The per-token figure
  is the fair cost measure (the two modes write different code); ``overhead`` is its ratio minus 1.
- constraint_share: time inside the constraint (token choice, checks, fallback scans) as a share
  of constrained decode time (``Transcript.constraint_s``).
- invalid steps: each step the model wrote, checked against the sandbox environment at that moment:
  syntax (does not parse or is outside the subset), unknown function, undefined name, unknown
  target, ``<MOD>`` missing or misplaced, incomplete (no ``<STEP>`` within the token limit), blocked
  (constrained decoding found no valid token). Counted on the template prompts and, apart
  (``free_*`` keys, not timed side by side), on six freely worded requests with a scan named ``scan``.
Run: ``.venv/bin/python -m bench.constrained [--prompts 24]``.
"""
from __future__ import annotations

import argparse
import ast
import logging
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from agent.functions import default_registry
from agent.phi_bank import PhiBank
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox import Sandbox
from agent.sandbox.errors import SandboxViolation
from agent.sandbox.markers import strip_mod_markers
from agent.sandbox.validator import check_step, parse_step
from bench.common import report
from service.settings import DEFAULT_MODELS_DIR
from training.oracle import OracleVisionClient
from training.tasks import sample_task

logger = logging.getLogger(__name__)

SHIPPED = DEFAULT_MODELS_DIR
FIRST_SEED = 10**9
CATEGORIES = ("syntax", "unknown_function", "undefined_name", "unknown_target", "mod_marker", "incomplete")


def classify(code: str, names: set[str], bank: PhiBank, sandbox: Sandbox) -> str | None:
    """Why the sandbox would refuse this step before computing anything (None: it would not)."""
    stripped, markers = strip_mod_markers(code)
    library = frozenset(sandbox.registry)
    try:
        tree = parse_step(stripped, sandbox.limits)
        check_step(tree, sandbox.limits, library, frozenset({"encode", "generate"}), markers)
    except SandboxViolation as exc:
        text = str(exc)
        return "unknown_function" if "unknown function" in text else "mod_marker" if "<MOD>" in text else "syntax"
    defined = set(names)
    marked = {pos for pos in markers}
    for statement in tree.body:
        callees = {id(n.func) for n in ast.walk(statement) if isinstance(n, ast.Call)}
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) not in callees \
                    and node.id not in defined:
                return "undefined_name"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("encode", "generate"):
                volumes = node.args if node.func.id == "encode" else (
                    node.args[1:2] + [k.value for k in node.keywords if k.arg == "scan"])
                if any((v.end_lineno, v.end_col_offset) not in marked for v in volumes):
                    return "mod_marker"
                if node.func.id == "generate":
                    target = node.args[2] if len(node.args) > 2 else next(
                        (k.value for k in node.keywords if k.arg == "target"), None)
                    if not (isinstance(target, ast.Constant) and isinstance(target.value, str)
                            and bank.supports(target.value)):
                        return "unknown_target"
        if isinstance(statement, ast.Assign):
            defined |= {n.id for n in ast.walk(statement.targets[0]) if isinstance(n, ast.Name)}
    return None


class ClassifyingSandbox:
    """The real sandbox, plus a static verdict on every step it is given (against its env of that moment).

    Exposes the sandbox's ``env``, ``registry``, ``limits`` and ``ctx`` so that the runtime's
    constraint reads the same rules."""

    def __init__(self, sandbox: Sandbox, bank: PhiBank) -> None:
        self.sandbox, self.bank = sandbox, bank
        self.verdicts: list[str | None] = []

    @property
    def env(self) -> Mapping[str, Any]:
        return self.sandbox.env

    @property
    def registry(self) -> Any:
        return self.sandbox.registry

    @property
    def limits(self) -> Any:
        return self.sandbox.limits

    @property
    def ctx(self) -> Any:
        return self.sandbox.ctx

    def execute_step(self, code: str, phis: Sequence[torch.Tensor] | None = None) -> Any:
        self.verdicts.append(classify(code, set(self.sandbox.env), self.bank, self.sandbox))
        return self.sandbox.execute_step(code, phis)


# Freely worded requests (issue 20's own examples) on one T1 named `scan`, the CLI's default name:
# off the templates, where the unconstrained model writes undefined names.
FREE_PROMPTS = ("What is the total brain volume in mL?", "what is the brain volume?",
                "How large are the lateral ventricles?", "remove the skull", "brain parenchymal fraction?",
                "segment the white matter and give its volume")


def run_once(runtime: AgentRuntime, seed: int, bank: PhiBank, constrained: bool,
             free_prompt: str | None = None) -> dict[str, Any]:
    task, case = sample_task(seed, family="volume" if free_prompt else None)
    prompt, scans = task.prompt, dict(case.scans)
    if free_prompt is not None:
        prompt, scans = free_prompt, {"scan": next(iter(case.scans.values()))}
    runtime.constrained = constrained
    executor = ClassifyingSandbox(Sandbox(scans, client=OracleVisionClient(case, bank), phi_bank=bank), bank)
    result = runtime.run(prompt, scans, sandbox=executor)
    transcript = runtime.last_transcript
    assert transcript is not None
    verdicts: list[str | None] = list(executor.verdicts)
    for trace in result.trace[len(verdicts):]:  # steps the sandbox never saw
        verdicts.append("blocked" if (trace.error or "").startswith("constrained decoding") else "incomplete")
    decoded = sum(1 for _ in transcript.generated)
    steps = max(1, len(result.trace))
    decode_s = float(result.timings_s.get("decode", 0.0))
    return {"seed": seed, "family": task.family, "steps": len(result.trace), "tokens": decoded,
            "decode_s": decode_s, "per_step_s": decode_s / steps, "per_token_s": decode_s / max(1, decoded),
            "constraint_s": transcript.constraint_s, "fallbacks": transcript.constraint_fallbacks,
            "status": str(result.status.value if hasattr(result.status, "value") else result.status),
            "code_match": free_prompt is None and [t.code for t in result.trace] == task.steps,
            "verdicts": verdicts}


def summarize(runs: list[dict[str, Any]], prefix: str) -> dict[str, float | int]:
    verdicts = Counter(v for r in runs for v in r["verdicts"])
    steps = sum(len(r["verdicts"]) for r in runs)
    out: dict[str, float | int] = {
        f"{prefix}_decode_ms_per_step": statistics.median(r["per_step_s"] for r in runs) * 1000,
        f"{prefix}_decode_ms_per_token": statistics.median(r["per_token_s"] for r in runs) * 1000,
        f"{prefix}_steps": steps,
        f"{prefix}_invalid_steps": sum(n for v, n in verdicts.items() if v not in (None, "blocked")),
        f"{prefix}_blocked_steps": verdicts.get("blocked", 0),  # ended as no_answer instead of invalid code
        f"{prefix}_succeeded": sum(r["status"] == "succeeded" for r in runs),
        f"{prefix}_code_exact": sum(bool(r["code_match"]) for r in runs),
    }
    for category in CATEGORIES:
        out[f"{prefix}_invalid_{category}"] = verdicts.get(category, 0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--model", default=str(SHIPPED))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bank = PhiBank.for_model_dir(args.model)
    runtime = AgentRuntime.from_checkpoint(args.model, phi_bank=bank,
                                           limits=RuntimeLimits(max_steps=8, max_step_tokens=320, max_wall_s=120))
    default_registry()
    run_once(runtime, FIRST_SEED, bank, True)  # warm-up: TorchScript kernel, caches
    plain: list[dict[str, Any]] = []
    constrained: list[dict[str, Any]] = []
    for i in range(args.prompts):
        seed = FIRST_SEED + 1 + i
        order = (True, False) if i % 2 == 0 else (False, True)
        for mode in order:
            (constrained if mode else plain).append(run_once(runtime, seed, bank, mode))
        print(f"prompt {i + 1}/{args.prompts} ({plain[-1]['family']}): "
              f"plain {plain[-1]['per_token_s'] * 1e3:.2f} ms/token {plain[-1]['verdicts']}, "
              f"constrained {constrained[-1]['per_token_s'] * 1e3:.2f} ms/token {constrained[-1]['verdicts']}")
    free_plain = [run_once(runtime, FIRST_SEED + 1, bank, False, p) for p in FREE_PROMPTS]
    free_constrained = [run_once(runtime, FIRST_SEED + 1, bank, True, p) for p in FREE_PROMPTS]
    for p, a, b in zip(FREE_PROMPTS, free_plain, free_constrained):
        print(f"free {p!r}: plain {a['status']} {a['verdicts']}, constrained {b['status']} {b['verdicts']}")
    results: dict[str, float | int | str] = {"model": str(args.model), "prompts": args.prompts,
                                             "first_seed": FIRST_SEED + 1}
    results.update(summarize(plain, "plain"))
    results.update(summarize(constrained, "constrained"))
    results.update(summarize(free_plain, "free_plain"))
    results.update(summarize(free_constrained, "free_constrained"))
    per_token_ratio = statistics.median(c["per_token_s"] / p["per_token_s"] for c, p in zip(constrained, plain))
    results["ratio_ms_per_token"] = results["constrained_decode_ms_per_token"] / results["plain_decode_ms_per_token"]
    results["ratio_ms_per_step"] = results["constrained_decode_ms_per_step"] / results["plain_decode_ms_per_step"]
    results["median_paired_ratio_per_token"] = per_token_ratio
    results["overhead"] = results["ratio_ms_per_token"] - 1.0
    results["constraint_share"] = (sum(r["constraint_s"] for r in constrained)
                                   / max(1e-9, sum(r["decode_s"] for r in constrained)))
    results["constrained_fallback_tokens"] = sum(r["fallbacks"] for r in constrained)
    goals = {"overhead": "<= 0.20", "constrained_invalid_steps": "0"}
    report("constrained", results, goals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
