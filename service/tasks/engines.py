"""Adapters from a job to the packages that do the work: the sandbox (a given program) and the
agent runtime (a prompt). Kept in one module so the task function stays independent of their
constructors."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from api_schemas.limits import AGENT_MAX_WALL_S
from api_schemas.results import AnalysisResult, AnalysisStatus

log = logging.getLogger(__name__)


def _limits(memory_bytes: int | None):
    """The sandbox's limits with the service's per-job memory budget (settings.job_memory_bytes)."""
    from agent.sandbox import SandboxLimits

    return SandboxLimits() if memory_bytes is None else SandboxLimits(max_memory_bytes=memory_bytes)


def run_program(code: str, scans: dict, *, client, output_dir: Path, models_dir: Path,
                job_id: str, memory_bytes: int | None = None,
                cancelled: Callable[[], bool] | None = None) -> AnalysisResult:
    """Run a given program as one sandbox step (phis from the checkpoint's phi bank)."""
    from agent.sandbox import Sandbox
    from service.tasks import resources

    sandbox = Sandbox(scans, client=client, phi_bank=resources.phi_bank(models_dir), output_dir=output_dir,
                      job_id=job_id, limits=_limits(memory_bytes), cancelled=cancelled)
    outcome = sandbox.execute_step(code)
    if outcome.error:
        return sandbox.result(status=AnalysisStatus.failed, error=outcome.error)
    return sandbox.result()


def build_runtime(models_dir: Path):
    """The agent runtime with the shipped checkpoint; without one, a clearly labelled random-init
    model (its tokenizer trained on the seed corpus) so that prompts get an honest 'no_answer'."""
    import torch

    from agent.checkpoint import has_agent, load_agent
    from agent.runtime import AgentRuntime

    models_dir = Path(models_dir)
    if has_agent(models_dir):
        model, tokenizer = load_agent(models_dir)
        return AgentRuntime(model, tokenizer, model_name=models_dir.name)
    from agent.config import AgentConfig
    from agent.corpus import seed_corpus
    from agent.model import VoxAgentModel
    from agent.tokenizer import train_tokenizer

    log.warning("no trained agent in %s: serving a random-init model (answers will be 'no_answer')", models_dir)
    tokenizer = train_tokenizer(seed_corpus(n=400, seed=0), vocab_size=1000)
    torch.manual_seed(0)
    model = VoxAgentModel(AgentConfig.from_preset("tiny", tokenizer))
    return AgentRuntime(model, tokenizer, model_name=f"{models_dir.name} (random-init, untrained)")


class _StepProgress:
    """The job's sandbox, reporting each executed step to ``on_step(step, max_steps)`` (1-based: the step the
    agent works on next) so a client can show "step k of n"; everything else goes to the sandbox itself."""

    def __init__(self, sandbox, on_step: Callable[[int, int], None], max_steps: int) -> None:
        self._sandbox, self._on_step, self._max = sandbox, on_step, max_steps
        self._done = 0

    def execute_step(self, code: str, phis=None):
        try:
            return self._sandbox.execute_step(code, phis)
        finally:
            self._done += 1
            self._report(min(self._done + 1, self._max))

    def _report(self, step: int) -> None:
        try:
            self._on_step(step, self._max)
        except Exception:  # noqa: BLE001 - progress is a courtesy; the analysis goes on without it
            log.debug("progress report failed", exc_info=True)

    def __getattr__(self, name: str):
        return getattr(self._sandbox, name)


def run_prompt(prompt: str, scans: dict, *, client, output_dir: Path, models_dir: Path,
               job_id: str, max_steps: int = 12, max_wall_s: float = AGENT_MAX_WALL_S,
               on_step: Callable[[int, int], None] | None = None, memory_bytes: int | None = None,
               cancelled: Callable[[], bool] | None = None) -> AnalysisResult:
    """Let the agent write and run the program, step by step, in a sandbox of this job."""
    from agent.runtime import RuntimeLimits
    from agent.sandbox import Sandbox
    from service.tasks import resources

    runtime = resources.agent_runtime(models_dir)  # shared by concurrent jobs: never mutate it per job
    limits = RuntimeLimits(max_steps=max_steps, max_wall_s=max_wall_s)  # the service's per-job budget
    sandbox = Sandbox(scans, client=client, phi_bank=resources.phi_bank(models_dir), output_dir=output_dir,
                      job_id=job_id, limits=_limits(memory_bytes), cancelled=cancelled)
    executor = sandbox
    if on_step is not None:
        executor = _StepProgress(sandbox, on_step, max_steps)
        executor._report(1)
    recorder = _PhiRecorder(executor)
    result = runtime.run(prompt, scans, sandbox=recorder, limits=limits)
    return recorder.annotate(result)


class _PhiRecorder:
    """Keeps the phis the model handed to each step, so the trace can carry them: `voxagent exec
    --phis` replays a model run's steps with its very phis (the same masks), not the bank's."""

    def __init__(self, executor) -> None:
        self._executor = executor
        self.phis: list[list[list[float]]] = []

    def execute_step(self, code: str, phis=None):
        from agent.phi_bank import phi_array

        self.phis.append([phi_array(p).tolist() for p in (phis or ())])
        return self._executor.execute_step(code, phis)

    def annotate(self, result: AnalysisResult) -> AnalysisResult:
        for step in result.trace:
            if 0 <= step.index < len(self.phis) and self.phis[step.index]:
                step.phis = self.phis[step.index]
        return result

    def __getattr__(self, name: str):
        return getattr(self._executor, name)
