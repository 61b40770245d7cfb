"""The persistent environment where agent code meets patient data.

`Sandbox.execute_step` never raises: a rule violation, a bad argument, a library error or a time
limit becomes `StepOutcome.error` (feedback text for the agent's next step) and a trace entry.
Variables (and the input scans, predefined by name) persist across steps of the job.

Metrics rule: a `Quantity` becomes a metric of the job the first time a step reads it (`read`),
formats it into text (an f-string field) or passes it to `respond`; records and lists are walked
for the quantities they hold. Each quantity object is recorded once, with the step that used it.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from agent.answer_check import answer_problem
from agent.functions import default_registry
from agent.functions.context import CallContext, StopSignal
from agent.functions.registry import Registry
from agent.functions.types import Quantity, Record, Scan
from agent.grounding import ground_result
from agent.phi_bank import PhiBank
from agent.sandbox.errors import (
    SandboxCancelled,
    SandboxError,
    SandboxRuntimeError,
    SandboxTimeout,
    SandboxViolation,
)
from agent.sandbox.evaluator import Evaluator
from agent.sandbox.limits import SandboxLimits
from agent.sandbox.markers import Position, strip_mod_markers
from agent.sandbox.memory import MemoryLedger, estimate_result_bytes
from agent.sandbox.outcome import StepOutcome
from agent.sandbox.validator import CheckedStep, check_step, parse_step
from agent.vision_client import VisionClient
from api_schemas import AnalysisResult, AnalysisStatus, Metric, OutputVolume, StepTrace
from api_schemas.limits import scan_name_problem
from voxel_ops import Volume

logger = logging.getLogger(__name__)

VISION_CALLS = frozenset({"encode", "generate"})


@lru_cache(maxsize=256)
def _compile(code: str, markers: tuple[Position, ...], limits: SandboxLimits, library: frozenset[str]) -> CheckedStep:
    """Parse and check once per distinct step text (replays and training reuse the same code)."""
    tree = parse_step(code, limits)
    return check_step(tree, limits, library, VISION_CALLS, list(markers))


class Sandbox:
    """One job's interpreter state: environment, limits, vision client, outputs and trace."""

    def __init__(self, scans: Mapping[str, Volume], *, client: VisionClient, limits: SandboxLimits | None = None,
                 phi_bank: PhiBank | None = None, output_dir: Path | None = None, job_id: str | None = None,
                 registry: Registry | None = None, clock: Callable[[], float] = time.perf_counter,
                 cancelled: Callable[[], bool] | None = None) -> None:
        """``clock``: monotonic seconds for the job's time budget and step durations (tests inject one;
        the per-call SIGALRM preemption stays on real time). ``cancelled``: polled at every safe point
        (before each statement and call, and where library functions check); True ends the job."""
        self.clock = clock
        self.limits = limits or SandboxLimits()
        self.registry = registry or default_registry()
        self._library = frozenset(self.registry)
        self.job_id = job_id or uuid.uuid4().hex
        self.env: dict[str, Any] = {}
        for name, vol in scans.items():
            problem = scan_name_problem(name, self._library)
            if problem:
                raise ValueError(problem)
            self.env[name] = Scan(vol, name, source=name)
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        # The context must not hold the sandbox (a bound method would): Sandbox -> ctx -> Sandbox is a
        # reference cycle, and a finished job's volumes then wait for the cyclic gc (gigabytes, at times).
        self.ctx = CallContext(client=client, phi_bank=phi_bank or PhiBank.default(), job_id=self.job_id,
                               limits=self.limits, output_dir=output_dir, record=_weak_method(self._record),
                               clock=clock, cancelled=cancelled)
        self.memory = MemoryLedger(scans.values(), self.limits.max_memory_bytes)
        self.trace: list[StepTrace] = []
        self.metrics: list[Metric] = []
        self.outputs: list[OutputVolume] = []
        self.responses: list[str] = []
        self.stopped = False
        self.elapsed_s = 0.0  # time spent executing steps (the job's wall-time budget)
        self._recorded: dict[int, Any] = {}  # id -> quantity already turned into a metric (kept alive)
        self._phis: Sequence[Any] = ()
        self._step_started = 0.0
        self._alarm_armed = False
        self._current_call: tuple[str, float] = ("", 0.0)

    @property
    def output_volumes(self) -> dict[str, Volume]:
        """Every volume passed to output(), by name (for services that store artifacts themselves)."""
        return self.ctx.output_volumes

    # ------------------------------------------------------------ one step

    def execute_step(self, code: str, phis: Sequence[Any] | None = None) -> StepOutcome:
        started = self._step_started = self.clock()
        index = len(self.trace)
        outcome = StepOutcome()
        self.ctx.outcome, self.ctx.step = outcome, index
        try:
            with self._alarm_handler():
                self._run(code, phis, index)
        except StopSignal:
            self.stopped = True
        except SandboxCancelled as exc:  # no further step: the runtime ends the job on a stopped outcome
            outcome.error, outcome.stopped, self.stopped = str(exc), True, True
        except SandboxError as exc:
            outcome.error = str(exc)
        except RecursionError:
            outcome.error = "the computation nested too deeply"
        except MemoryError:
            outcome.error = "out of memory"
        except Exception as exc:  # a defect, not the agent's fault; the job must still go on
            logger.exception("unexpected error in sandbox step %d", index)
            outcome.error = f"internal error ({type(exc).__name__})"
        finally:
            self._phis = ()
        outcome.duration_s = self.clock() - started
        self.elapsed_s += outcome.duration_s
        self.metrics.extend(outcome.metrics)
        self.outputs.extend(outcome.outputs)
        self.responses.extend(outcome.responses)
        self.trace.append(StepTrace(index=index, code=code if len(code) <= 20_000 else code[:20_000] + " ...",
                                    feedback=[f.text if f.text is not None else f"<{len(f.vectors)} encoding vectors>"
                                              for f in outcome.feedback],
                                    error=outcome.error, duration_s=outcome.duration_s, phi_count=outcome.phis_used))
        if outcome.error:
            logger.info("step %d of job %s failed: %s", index, self.job_id, outcome.error)
        return outcome

    def _run(self, code: str, phis: Sequence[Any] | None, index: int) -> None:
        if not isinstance(code, str):
            raise SandboxViolation("the step's code must be text")
        if self.stopped:
            raise SandboxRuntimeError("the analysis has stopped; no further steps run")
        if index >= self.limits.max_steps:
            raise SandboxViolation(f"step limit reached: at most {self.limits.max_steps} steps per analysis")
        if self.elapsed_s >= self.limits.job_timeout_s:
            raise SandboxTimeout(f"the analysis ran past its time limit of {self.limits.job_timeout_s:g} s")
        if len(code) > self.limits.max_code_chars * 2:  # before any scanning of absurd input
            raise SandboxViolation(f"the step has {len(code)} characters; the limit is {self.limits.max_code_chars}")
        stripped, markers = strip_mod_markers(code)
        checked = _compile(stripped, tuple(markers), self.limits, self._library)
        if phis is not None and len(phis) != len(markers):
            raise SandboxViolation(f"the step marks {len(markers)} volume argument(s) with <MOD> "
                                   f"but {len(phis)} phi vector(s) were given")
        self._phis = phis if phis is not None else ()
        marked = checked.marked_args if phis is not None else {}
        Evaluator(self.env, self.limits, self._invoke, marked, self._record, self.ctx.checkpoint).run(checked.tree)

    # ------------------------------------------------------------ calls

    def _invoke(self, name: str, args: list[Any], kwargs: dict[str, Any], phi_map: dict[int | str, int]) -> Any:
        function = self.registry[name]
        bound = function.bind(args, kwargs)
        self.ctx.call_phis = {key: self._phis[i] for key, i in phi_map.items()}
        remaining = self.limits.job_timeout_s - self.elapsed_s - (self.clock() - self._step_started)
        budget = min(self.limits.call_timeout_s, remaining)
        if budget <= 0:
            raise SandboxTimeout(f"the analysis ran past its time limit of {self.limits.job_timeout_s:g} s")
        self.ctx.checkpoint()  # cancelled while the previous call ran
        self._check_memory(name, function.returns, bound)
        started = self.clock()
        self._current_call = (name, budget)
        self.ctx.deadline, self.ctx.call_name, self.ctx.call_budget_s = started + budget, name, budget
        try:
            if self._alarm_armed:
                signal.setitimer(signal.ITIMER_REAL, max(budget, 1e-3))
            try:
                result = function.fn(self.ctx, *bound)
            finally:
                if self._alarm_armed:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except (SandboxError, StopSignal):
            raise
        except MemoryError:
            raise SandboxRuntimeError(f"{name}(): out of memory") from None
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as exc:
            raise SandboxRuntimeError(f"{name}(): {exc}") from None
        except Exception as exc:
            logger.exception("library function %s failed", name)
            raise SandboxRuntimeError(f"{name}(): failed ({type(exc).__name__}: {exc})") from None
        finally:
            self.ctx.call_phis = {}
            self.ctx.deadline = None
        if self.clock() - started > budget:
            raise SandboxTimeout(f"{name}() ran past its time limit of {budget:.3g} s")
        if not _all_finite(result):  # difference(1e308, -1e308): inf would become a metric JSON cannot carry
            raise SandboxRuntimeError(f"{name}(): the result is not a finite number (overflow or undefined)")
        self.memory.track(result)
        held = self.held_bytes()
        if held > self.memory.budget:
            del result  # never reaches the environment: freed as the error unwinds
            raise self._over_budget(name, held)
        return result

    def held_bytes(self) -> int:
        """Bytes of the volumes this job's calls created that are alive now (outputs included)."""
        return self.memory.held_bytes(self.ctx.output_volumes.values())

    def _check_memory(self, name: str, returns: str, args: Sequence[Any]) -> None:
        projected = self.held_bytes() + estimate_result_bytes(name, returns, args)
        if projected > self.memory.budget:
            raise self._over_budget(name, projected)

    def _over_budget(self, name: str, held: int) -> SandboxRuntimeError:
        return SandboxRuntimeError(
            f"{name}(): the analysis would hold {held / 1e6:,.1f} MB of volumes, more than its memory budget "
            f"of {self.memory.budget / 1e6:,.1f} MB; give intermediate volumes the same name again (the old "
            "value is freed) or output fewer of them")

    @contextmanager
    def _alarm_handler(self) -> Iterator[None]:
        """For one step, let SIGALRM preempt Python-level work of a call (main thread only).

        The handler is installed once per step (cheap per call: one timer syscall before and after).
        """
        if not (self.limits.use_alarm and hasattr(signal, "setitimer")
                and threading.current_thread() is threading.main_thread()):
            yield
            return

        def on_alarm(signum: int, frame: Any) -> None:
            name, budget = self._current_call
            raise SandboxTimeout(f"{name}() ran past its time limit of {budget:.3g} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        self._alarm_armed = True
        try:
            yield
        finally:
            self._alarm_armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    # ------------------------------------------------------------ metrics, results

    def _record(self, value: Any) -> None:
        """The metrics rule (module docstring): first read/format/respond of each quantity."""
        if isinstance(value, Quantity):
            if id(value) in self._recorded:
                return
            self._recorded[id(value)] = value
            number = value.value
            if isinstance(number, float) and not math.isfinite(number):  # never reached via _invoke; kept safe
                logger.warning("metric %r dropped: its value %r is not a finite number", value.name, number)
                return
            self.ctx.outcome.metrics.append(Metric(name=value.name, value=number, unit=value.unit, step=self.ctx.step))
        elif isinstance(value, Record):
            for item in value.values():
                self._record(item)
        elif isinstance(value, (tuple, list)):
            for item in value:
                self._record(item)

    def result(self, status: AnalysisStatus | None = None, error: str | None = None) -> AnalysisResult:
        """The analysis so far as the document users get (the runtime may add model and timings)."""
        text = "\n".join(self.responses)
        if status is None:
            answered = self.responses or self.outputs or self.metrics
            problem = answer_problem(text)
            status = AnalysisStatus.succeeded if answered and not problem else AnalysisStatus.no_answer
            if problem:  # the same wording as the agent runtime's no_answer
                text = f"No answer: {problem}. Partial response: {text}"
        result = AnalysisResult(status=status, text=text, metrics=list(self.metrics),
                                outputs=list(self.outputs), trace=list(self.trace), error=error,
                                timings_s={"sandbox": self.elapsed_s})
        if status == AnalysisStatus.succeeded:
            result.report = ground_result(result)
        return result

    def close(self) -> None:
        """Release the job's encodings held by the vision service."""
        try:
            self.ctx.client.release(self.job_id)
        except Exception:  # releasing is best effort; the engine also evicts by size
            logger.warning("could not release encodings of job %s", self.job_id, exc_info=True)


def _weak_method(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """``method`` without a strong reference to its object (a no-op once the object is gone)."""
    ref = weakref.WeakMethod(method)  # type: ignore[arg-type]  # a bound method

    def call(value: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(value)

    return call


def _all_finite(value: Any, depth: int = 0) -> bool:
    """False when a number in a call's result (a Quantity, a Record's fields, a sequence) is inf or NaN."""
    if depth > 8:
        return True
    if isinstance(value, Quantity):
        value = value.value
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Record):
        return all(_all_finite(item, depth + 1) for item in value.values())
    if isinstance(value, (tuple, list)):
        return all(_all_finite(item, depth + 1) for item in value)
    return True
