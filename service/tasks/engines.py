"""Adapters from a job to the packages that do the work: the sandbox (a given program) and the
agent runtime (a prompt). Kept in one module so the task function stays independent of their
constructors."""
from __future__ import annotations

import logging
from pathlib import Path

from api_schemas.results import AnalysisResult

log = logging.getLogger(__name__)


def run_program(code: str, scans: dict, *, client, output_dir: Path, models_dir: Path,
                job_id: str) -> AnalysisResult:
    """Run a given program as one sandbox step (phis from the checkpoint's phi bank)."""
    from agent.sandbox import Sandbox
    from service.tasks import resources

    sandbox = Sandbox(scans, client=client, phi_bank=resources.phi_bank(models_dir), output_dir=output_dir,
                      job_id=job_id)
    outcome = sandbox.execute_step(code)
    if outcome.error:
        return sandbox.result(status="failed", error=outcome.error)
    return sandbox.result()


def build_runtime(models_dir: Path):
    """The agent runtime with the shipped model (random-init, clearly labelled, when untrained)."""
    try:
        from agent.runtime import AgentRuntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the agent runtime is not available in this installation ({exc})") from exc
    raise RuntimeError("agent runtime integration pending")


def run_prompt(prompt: str, scans: dict, *, client, output_dir: Path, models_dir: Path,
               job_id: str) -> AnalysisResult:
    from service.tasks import resources

    runtime = resources.agent_runtime(models_dir)
    return runtime.run(prompt, scans, client=client, output_dir=output_dir, job_id=job_id)
