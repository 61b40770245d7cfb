"""Plan-execute-feedback loop: the agent writes one step, the sandbox runs it, reads come back as z.

The runtime owns the decoding session (one KV cache for the whole episode): mu_1 is prefilled once,
each step is decoded greedily token by token, and the step's closing ``<STEP>`` plus the feedback z_i
are appended in a single forward (``<ENC>`` positions carrying projected encoding vectors). Nothing
already in the cache is ever recomputed. The sandbox is reached only through
``execute_step(code, phis) -> StepOutcome``.

Termination: a run ends with ``succeeded`` when a step calls ``stop()`` after producing a response,
metric or output, that step ran without error and the answer passes ``agent.answer_check`` (no
unfilled placeholders, not token soup, and resting on a metric, an output, a value read back or the
library's capability text); ``no_answer`` when it stops without any, or when a limit is hit (steps, context
tokens, wall time, or a step that does not close with ``<STEP>`` within ``max_step_tokens``: such
code is incomplete and is not executed); ``failed`` only when the sandbox itself breaks or the
prompt does not fit.

Constrained decoding (``constrained=True``, the default; ``agent.constrained``): at every token only
continuations that keep the step a prefix of a valid program are taken: names defined in the
sandbox's environment (or being assigned), library functions with their arity, targets the phi bank
supports, ``<MOD>`` after each volume argument, and ``<STEP>`` only where the step is complete;
statements have the flat shape of the task programs (a name assigned one call or f-string, or a
call; positional arguments that are names, numbers or strings: ``StepConstraint(flat=True)``). The
logits' candidates are tried best first, so the choice equals an argmax over the masked
vocabulary. A step that no token can continue ends the run with ``no_answer`` and says so; invalid
code is never emitted.
"""
from __future__ import annotations

import ast
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from agent.answer_check import answer_problem, ungrounded_problem
from agent.constrained import (
    Signature,
    StepConstraint,
    request_numbers,
    signatures,
    snake_case,
    target_strings,
    token_texts,
    value_kinds,
)
from agent.functions import default_registry
from agent.functions.capabilities import CAPABILITIES, CAPABILITIES_V2
from agent.functions.types import ImageValue, Mask
from agent.grounding import ground_result
from agent.intent_check import IntentIndex, intent_warnings
from agent.model import DecodeSession, VoxAgentModel
from agent.phi_bank import PhiBank
from agent.program_coherence import coherence_problem
from agent.result_warnings import (
    failed_step_warnings,
    instruction_warnings,
    low_confidence_warnings,
    mod_sites,
    thick_slice_warnings,
)
from agent.sandbox.limits import SandboxLimits
from agent.sandbox.outcome import StepOutcome
from agent.state import ScanInfo, as_scan_infos, feedback_tokens, initial_state_ids, vector_feedback_label
from agent.target_mentions import answer_mention_warnings, answers_none, mention_warnings, steering_targets
from agent.tokenizer import AgentTokenizer
from api_schemas import AnalysisResult, AnalysisStatus, StepTrace
from api_schemas.limits import AGENT_MAX_WALL_S

logger = logging.getLogger(__name__)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Process-wide torch thread count while any run decodes; the first entrant saves the setting and
    the last one restores it, so concurrent runs (thread pool workers) cannot leave it changed."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved != n:
                torch.set_num_threads(n)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and torch.get_num_threads() != _threads_saved:
                torch.set_num_threads(_threads_saved)


class StepExecutor(Protocol):
    """What the runtime needs from a sandbox."""

    def execute_step(self, code: str, phis: Sequence[torch.Tensor] | None = None) -> StepOutcome: ...


@dataclass(frozen=True)
class RuntimeLimits:
    """Bounds that make every run terminate, whatever the model writes."""

    max_steps: int = 12
    max_step_tokens: int = 384  # tokens of code in one step
    max_total_tokens: int = 2048  # whole state mu (prompt + steps + feedback); capped by the model
    max_wall_s: float = AGENT_MAX_WALL_S


@dataclass
class Transcript:
    """Everything fed to the model, for checks against a from-scratch forward and for debugging."""

    ids: list[int] = field(default_factory=list)
    enc_vectors: list[np.ndarray] = field(default_factory=list)  # one (n, d) block per feedback with reads
    generated: list[tuple[int, int]] = field(default_factory=list)  # (index into ids, id the model chose)
    phis: list[torch.Tensor] = field(default_factory=list)  # every phi handed to the sandbox, in order
    constraint_s: float = 0.0  # seconds spent choosing tokens under the constraint (its argmax included)
    constraint_fallbacks: int = 0  # tokens for which no top-k candidate was valid (full vocabulary scan)


@dataclass
class _StepDraft:
    tokens: list[int]
    phis: list[torch.Tensor]
    ended: bool  # closed by <STEP>/eos (False: token limit, wall time or context full)
    end_id: int | None = None  # the id that closed it (<STEP> or eos; <STEP> is what gets fed)
    blocked: str | None = None  # why constrained decoding could not continue the step
    # probability (full softmax) of the least probable token the step was written with
    min_prob: float = 1.0


@dataclass(frozen=True)
class _StepRules:
    """What a step may use, for its `StepConstraint`."""

    names: frozenset[str]
    functions: dict[str, Signature]
    targets: tuple[str, ...]
    limits: SandboxLimits
    numbers: frozenset[str] | None = None  # number literals the request states (None: any)
    volumes: frozenset[str] | None = None  # names that may go before <MOD> (None: any defined name)
    flat: bool = True  # only the statement shape of task programs (``StepConstraint(flat=True)``)
    generated: frozenset[tuple[str, str]] = frozenset()  # (scan, target) drawn by earlier steps
    kinds: Mapping[str, frozenset[str]] | None = None  # kinds of the defined names' values (`value_kinds`)

    def constraint(self, mentions: Sequence[str] = ()) -> StepConstraint:
        return StepConstraint(self.names, self.functions, self.targets, limits=self.limits, numbers=self.numbers,
                              volumes=self.volumes, flat=self.flat, generated=self.generated, mentions=mentions,
                              kinds=self.kinds)


class AgentRuntime:
    """``AgentRuntime(model, tokenizer, sandbox=..., limits=...).run(prompt, scans_meta) -> AnalysisResult``."""

    def __init__(
        self,
        model: VoxAgentModel,
        tokenizer: AgentTokenizer,
        sandbox: StepExecutor | None = None,
        *,
        sandbox_factory: Callable[[], StepExecutor] | None = None,
        limits: RuntimeLimits | None = None,
        model_name: str | None = None,
        decode_threads: int | None = 1,
        clock: Callable[[], float] = time.perf_counter,
        constrained: bool = True,
        phi_bank: PhiBank | None = None,
        constraint_topk: int = 8,
        intent_index: IntentIndex | None = None,
        steer_mentions: bool = True,
    ) -> None:
        """``decode_threads``: torch intra-op threads while the LM runs (restored around sandbox calls).

        Decoding is a chain of small matrix-vector products; with more than one OpenMP thread on a
        shared or oversubscribed CPU every op waits at a barrier for a descheduled peer (measured:
        ~10x slower on the 2-core CI machine under load). One thread per job, more jobs per machine.
        ``None`` leaves the process setting alone.

        ``clock``: seconds, monotonic; the wall-time limit and the timings read it (tests inject one
        so that a limit is reached after a known number of readings, whatever the machine's speed).

        ``constrained``: decode valid steps only (module docstring); False gives plain greedy decoding,
        for comparison. The rules come from the executor where it has them (a `Sandbox`'s ``env``,
        ``registry``, ``limits`` and phi bank), else from the scans, the default library and
        ``phi_bank`` (the checkpoint's, see ``from_checkpoint``; the default bank without one).
        ``constraint_topk``: candidates tried before scanning the whole vocabulary.
        ``intent_index``: nearest training requests (``agent.intent_check``; the checkpoint's, see
        ``from_checkpoint``): a result whose program does not fit them gets a low-confidence warning.
        ``steer_mentions``: a step whose draws answer none of the targets the request names is decoded
        again, steered to them (`_steer`; needs ``constrained``).
        """
        if model.cfg.vocab_size != tokenizer.vocab_size or model.cfg.mod_id != tokenizer.mod_id:
            raise ValueError("model and tokenizer do not belong together (vocabulary or special ids differ)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sandbox = sandbox
        self.sandbox_factory = sandbox_factory
        self.limits = limits or RuntimeLimits()
        self.model_name = model_name or f"voxagent-{model.cfg.preset}"
        self.decode_threads = decode_threads
        self.clock = clock
        self.last_transcript: Transcript | None = None
        self._stop_ids = {tokenizer.step_id, tokenizer.eos_id}
        self.constrained = constrained
        self.steer_mentions = steer_mentions
        self.phi_bank = phi_bank
        self.constraint_topk = max(1, int(constraint_topk))
        self.intent_index = intent_index
        self._token_texts = token_texts(tokenizer)
        self._signatures: tuple[object, dict[str, Signature]] | None = None  # (registry, its signatures)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str = "cpu", **kwargs: Any) -> "AgentRuntime":
        """Runtime over ``models/<name>/`` (agent_config.json, agent.safetensors, tokenizer.model)."""
        from agent.checkpoint import load_agent

        model, tokenizer = load_agent(directory, device=device)
        kwargs.setdefault("model_name", Path(directory).name)
        if "phi_bank" not in kwargs:
            kwargs["phi_bank"] = PhiBank.for_model_dir(directory)
        if "intent_index" not in kwargs:
            kwargs["intent_index"] = IntentIndex.load(directory)
        return cls(model, tokenizer, **kwargs)

    # ---- public --------------------------------------------------------------------------------
    def run(
        self,
        prompt: str,
        scans_meta: Sequence[ScanInfo] | Mapping[str, object],
        sandbox: StepExecutor | None = None,
        limits: RuntimeLimits | None = None,
    ) -> AnalysisResult:
        """One analysis; ``sandbox`` and ``limits`` override the constructor's for this run only
        (a runtime shared by concurrent jobs keeps no per-run state except ``last_transcript``)."""
        executor = sandbox or self.sandbox or (self.sandbox_factory() if self.sandbox_factory else None)
        if executor is None:
            raise ValueError("AgentRuntime needs a sandbox (argument, constructor or sandbox_factory)")
        return self._run(prompt, as_scan_infos(scans_meta), executor, limits or self.limits)

    def _now(self) -> float:
        return self.clock()

    @contextmanager
    def _lm(self) -> Iterator[None]:
        """Inference mode and the decode thread count, only while the language model runs."""
        if self.decode_threads is None:
            with torch.inference_mode():
                yield
            return
        with _torch_threads(self.decode_threads), torch.inference_mode():
            yield

    # ---- the loop ------------------------------------------------------------------------------
    def _run(self, prompt: str, scans: list[ScanInfo], executor: StepExecutor, lim: RuntimeLimits) -> AnalysisResult:
        tok = self.tokenizer
        t_start = self._now()
        deadline = t_start + lim.max_wall_s
        timings = {"setup": 0.0, "prefill": 0.0, "decode": 0.0, "execute": 0.0, "feedback": 0.0}
        result = AnalysisResult(status=AnalysisStatus.no_answer, model=self.model_name)
        result.warnings = thick_slice_warnings(scans)
        transcript = Transcript()
        self.last_transcript = transcript
        responses: list[str] = []

        capacity = min(lim.max_total_tokens, self.model.cfg.max_positions)
        with self._lm():
            session = self.model.start_session(capacity)
        mu1 = initial_state_ids(tok, prompt, scans)
        timings["setup"] = self._now() - t_start
        if len(mu1) + 2 > capacity:
            return self._finish(result, AnalysisStatus.failed, responses, timings, t_start,
                                error=f"prompt and scan metadata take {len(mu1)} tokens, "
                                      f"over the {capacity}-token limit")
        t0 = self._now()
        with self._lm():
            prompt_vector = self._prompt_vector(prompt)
            hidden = session.feed(mu1, prompt_vector=prompt_vector,
                                  prompt_states=self._prompt_states(prompt, scans))
            logits = self.model.next_token_logits(hidden[-1])
        timings["prefill"] = self._now() - t0
        transcript.ids += mu1
        reason = f"the agent did not call stop() within {lim.max_steps} steps"
        assigned: set[str] = set()  # names assigned by steps that ran without error (executors without env)
        generated: set[tuple[str, str]] = set()  # (scan, target) pairs those steps drew
        read_texts = 0  # values read back (text feedback) by steps that ran without error
        numbers = request_numbers(prompt)

        for index in range(lim.max_steps):
            t_step = self._now()
            rules = self._step_rules(executor, scans, assigned, numbers, generated) if self.constrained else None
            with self._lm():
                at = (session.length, len(transcript.ids), len(transcript.generated), len(transcript.phis))
                draft = self._decode_step(session, logits, deadline, transcript, lim.max_step_tokens,
                                          rules.constraint() if rules is not None else None)
                if rules is not None and self.steer_mentions:
                    draft = self._steer(prompt, draft, rules, generated, at, session, logits, deadline, transcript,
                                        lim, result, self._bank(executor))
            t_decoded = self._now()
            timings["decode"] += t_decoded - t_step
            code = tok.decode(draft.tokens)
            trace = StepTrace(index=index, code=code, phi_count=0, confidence=round(draft.min_prob, 4))
            result.trace.append(trace)

            if draft.blocked is not None:
                trace.error = f"constrained decoding: {draft.blocked}; not executed"
                trace.duration_s = self._now() - t_step
                reason = f"the agent could not continue step {index} with valid code ({draft.blocked})"
                logger.warning("constrained decoding blocked: step=%d reason=%s code=%r", index, draft.blocked, code)
                break
            if not draft.ended:
                trace.error = "step did not end (token, context or time limit); not executed"
                trace.duration_s = self._now() - t_step
                reason = self._limit_reason(session, deadline, lim)
                break

            try:
                outcome = executor.execute_step(code, draft.phis)
            except Exception as exc:  # the sandbox turns agent errors into feedback; this is a real fault
                logger.exception("sandbox failed on step %d", index)
                trace.error = f"sandbox failure: {exc}"
                trace.duration_s = self._now() - t_step
                return self._finish(result, AnalysisStatus.failed, responses, timings, t_start,
                                    error=f"sandbox failure: {exc}")
            timings["execute"] += self._now() - t_decoded
            if outcome.error is None:
                read_texts += sum(1 for fb in outcome.feedback if fb.text)
                names, pairs = _step_bindings(code)
                assigned |= names
                generated |= pairs
                result.warnings += instruction_warnings(index, code, draft.phis, self._bank(executor))
            self._record(result, trace, outcome, index, responses)
            trace.duration_s = self._now() - t_step

            if outcome.stopped:
                result.warnings += failed_step_warnings(result.trace)
                result.warnings += low_confidence_warnings(result.trace)
                result.warnings += self._intent_warnings(prompt, prompt_vector, result.trace, executor)
                ran = [t.code for t in result.trace if t.error is None]
                result.warnings += mention_warnings(prompt, ran)
                answer_words = [r for r in responses if not any(c in r for c in (CAPABILITIES, CAPABILITIES_V2))]
                result.warnings += answer_mention_warnings(" ".join(answer_words + [o.name for o in result.outputs]),
                                                           ran)
                problem = (f"the last step failed: {outcome.error}" if outcome.error else
                           answer_problem(" ".join(responses))
                           or ungrounded_problem(responses, bool(result.metrics or result.outputs), read_texts,
                                                 (CAPABILITIES, CAPABILITIES_V2))
                           or coherence_problem(ran))
                if problem:
                    return self._finish(result, AnalysisStatus.no_answer, responses, timings, t_start, note=problem)
                if responses or result.metrics or result.outputs:
                    return self._finish(result, AnalysisStatus.succeeded, responses, timings, t_start)
                return self._finish(result, AnalysisStatus.no_answer, responses, timings, t_start,
                                    note="the agent stopped without a response, metric or output")
            if self._now() > deadline:
                reason = f"wall-time limit of {lim.max_wall_s:g} s reached"
                break
            if index + 1 == lim.max_steps:
                break

            t_fb = self._now()
            z = feedback_tokens(tok, outcome.feedback, outcome.error, self.model.cfg.hidden_size)
            chunk = [tok.step_id] + z.ids
            if len(chunk) + 1 > session.remaining:
                reason = f"context limit of {capacity} tokens reached"
                break
            vectors = torch.from_numpy(z.vectors) if len(z.vectors) else None
            with self._lm():
                hidden = session.feed(chunk, vectors)
                logits = self.model.next_token_logits(hidden[-1])
            transcript.generated.append((len(transcript.ids), draft.end_id))
            transcript.ids += chunk
            if len(z.vectors):
                transcript.enc_vectors.append(z.vectors)
            timings["feedback"] += self._now() - t_fb

        return self._finish(result, AnalysisStatus.no_answer, responses, timings, t_start, note=reason)

    def _step_rules(self, executor: StepExecutor, scans: Sequence[ScanInfo], assigned: set[str],
                    numbers: frozenset[str] | None = None,
                    generated: Iterable[tuple[str, str]] = ()) -> _StepRules:
        """Names, functions, targets and limits of the next step, read from the executor when it has them.

        A `Sandbox`'s ``env`` is the truth about what is defined (a step that failed half-way defined
        only what ran); other executors get the scans plus the names assigned by steps without error.
        Targets come from the phi bank that the executor's ``generate`` checks against; number literals
        from the request (``request_numbers``). Volume arguments are images: the scans, and in an
        ``env`` any image value that is not a mask.
        """
        env = getattr(executor, "env", None)
        names = frozenset(env) if isinstance(env, Mapping) else frozenset(s.name for s in scans) | assigned
        volumes = frozenset(s.name for s in scans)
        kinds = {s.name: frozenset({"scan"}) for s in scans}
        if isinstance(env, Mapping):
            volumes |= {k for k, v in env.items() if isinstance(v, ImageValue) and not isinstance(v, Mask)}
            kinds = {k: value_kinds(v) for k, v in env.items()}
        registry = self._registry(executor)
        if self._signatures is None or self._signatures[0] is not registry:
            self._signatures = (registry, signatures(registry))
        bank = self._bank(executor)
        limits = getattr(executor, "limits", None)
        return _StepRules(names, self._signatures[1], target_strings(bank),
                          limits if isinstance(limits, SandboxLimits) else SandboxLimits(), numbers, volumes,
                          generated=frozenset(generated), kinds=kinds)

    @staticmethod
    def _registry(executor: StepExecutor) -> Mapping[str, Any]:
        """The library the executor runs steps with (the default library otherwise)."""
        registry = getattr(executor, "registry", None)
        return registry if isinstance(registry, Mapping) else default_registry()

    def _bank(self, executor: StepExecutor) -> PhiBank:
        """The phi bank the executor's ``generate`` checks targets against (the runtime's otherwise)."""
        bank = getattr(getattr(executor, "ctx", None), "phi_bank", None)
        return bank if isinstance(bank, PhiBank) else (self.phi_bank or PhiBank.default())

    def _choose(self, logits: torch.Tensor, constraint: StepConstraint, transcript: Transcript) -> int | None:
        """The most likely token that keeps the step valid (fed to ``constraint``), or None if none does.

        Best first: the argmax, then the top k, then the rest of the vocabulary in logit order. For
        greedy decoding this is the argmax of the masked logits, and usually costs one check.
        """
        texts, stop_ids = self._token_texts, self._stop_ids
        complete: list[bool] = []

        def take(tid: int) -> bool:
            if tid in stop_ids:
                if not complete:
                    complete.append(constraint.complete())
                return complete[0]
            text = texts[tid]
            return text is not None and constraint.try_feed(text)

        best = int(torch.argmax(logits))
        if take(best):
            return best
        k = min(self.constraint_topk, int(logits.shape[-1]))
        top = torch.topk(logits, k).indices.tolist()
        for tid in top:
            if tid != best and take(tid):
                return int(tid)
        transcript.constraint_fallbacks += 1
        seen = set(top)
        for tid in torch.argsort(logits, descending=True).tolist():
            if tid not in seen and take(tid):
                return int(tid)
        return None

    def _prompt_vector(self, prompt: str) -> torch.Tensor | None:
        """The sentence encoder's view of the prompt, for agents trained with one (else None)."""
        if not self.model.cfg.prompt_vector_dim:
            return None
        return self._embed_prompt(prompt)

    @staticmethod
    def _embed_prompt(prompt: str) -> torch.Tensor:
        """The frozen sentence encoder's vector of the prompt (``agent.prompt_encoder``)."""
        from agent.prompt_encoder import shared_encoder

        return torch.from_numpy(shared_encoder().encode([prompt])[0])

    def _intent_warnings(self, prompt: str, vector: torch.Tensor | None, trace: Sequence[StepTrace],
                         executor: StepExecutor) -> list[str]:
        """``agent.intent_check``'s second opinion on the program that ran (none without an index)."""
        if self.intent_index is None:
            return []
        if vector is None:  # an agent that does not read the sentence encoder: embed the prompt here
            from agent.prompt_encoder import SentenceEncoderUnavailable

            try:
                vector = self._embed_prompt(prompt)
            except SentenceEncoderUnavailable as exc:
                logger.info("intent check skipped: %s", exc)
                return []
        return intent_warnings(self.intent_index, vector.numpy(), [t.code for t in trace], self._registry(executor))

    def _prompt_states(self, prompt: str, scans: Sequence[ScanInfo]) -> torch.Tensor | None:
        """The sentence encoder's per-token view of the prompt, for agents trained with it (else None)."""
        if not self.model.cfg.prompt_state_dim:
            return None
        from agent.prompt_states import prompt_states

        return torch.from_numpy(prompt_states(self.tokenizer, prompt, scans))

    def _decode_step(
        self, session: DecodeSession, logits: torch.Tensor, deadline: float, transcript: Transcript, max_tokens: int,
        constraint: StepConstraint | None = None,
    ) -> _StepDraft:
        """Greedy tokens until <STEP>/eos; phi from the hidden state at every fed <MOD>.

        With a ``constraint`` each token is the best one that keeps the step valid; when none does the
        draft comes back ``blocked`` (never executed)."""
        tokens: list[int] = []
        phis: list[torch.Tensor] = []
        mod_id = self.tokenizer.mod_id
        min_prob = 1.0
        for _ in range(max_tokens):
            if constraint is None:
                next_id = int(torch.argmax(logits))
            else:
                t0 = time.perf_counter()
                chosen = self._choose(logits, constraint, transcript)
                if chosen is None:
                    return _StepDraft(tokens, phis, ended=False, blocked=(
                        "no token continues the step as valid code" if tokens else "no token starts a valid step"))
                next_id = chosen
                transcript.constraint_s += time.perf_counter() - t0
            min_prob = min(min_prob, float(torch.softmax(logits.float(), -1)[next_id]))
            if next_id in self._stop_ids:
                return _StepDraft(tokens, phis, ended=True, end_id=next_id, min_prob=min_prob)
            if session.remaining <= 2 or self._now() > deadline:
                break
            tokens.append(next_id)
            transcript.generated.append((len(transcript.ids), next_id))
            transcript.ids.append(next_id)
            hidden = session.feed([next_id])
            if next_id == mod_id:
                phi = self.model.phi_head(hidden[-1]).clone()
                phis.append(phi)
                transcript.phis.append(phi)
            logits = self.model.next_token_logits(hidden[-1])
        return _StepDraft(tokens, phis, ended=False, min_prob=min_prob)

    def _steer(self, prompt: str, draft: _StepDraft, rules: _StepRules, generated: set[tuple[str, str]],
               at: tuple[int, int, int, int], session: DecodeSession, logits: torch.Tensor, deadline: float,
               transcript: Transcript, lim: RuntimeLimits, result: AnalysisResult, bank: PhiBank) -> _StepDraft:
        """The step again, steered to the targets the request names, when its draws answer none of them.

        Why: on freely worded requests the commonest wrong program draws a structure the words never
        named ("is the lesion enhancing?" drawn as the left hippocampus, "the enhancing tumour" as the
        accumbens). Steering every step would also reorder right programs (a report draws the ICV
        before the brain it names), so only a step whose ``generate`` calls, with the program's earlier
        ones, answer no named target is decoded again, with ``StepConstraint(mentions=...)``. The
        steered draft replaces it only if it ends as valid code; the result says so in ``warnings``.

        The steered draft's ``generate`` instructions are the bank's phis for their target strings: the
        model emits a phi at ``<MOD>``, before the target string that steering chose, so its own phi
        still says what the first draft meant (seen: cosine 0.16 to the bank's "brain")."""
        if draft.blocked is not None or not draft.ended:
            return draft
        code = self.tokenizer.decode(draft.tokens)
        _, pairs = _step_bindings(code)
        if not pairs or not answers_none(prompt, [t for _, t in generated | pairs]):
            return draft
        named = steering_targets(prompt)
        constraint = rules.constraint(named)
        if not constraint.steers:
            return draft  # the model draws none of the named targets: nothing to steer to
        first = (session.length, len(transcript.ids), len(transcript.generated), len(transcript.phis))
        self._rewind(session, transcript, at)
        opening = self._steered_opening(named, code, rules, bank)
        forced: list[int] = []
        if opening and constraint.try_feed(opening):
            forced = self.tokenizer.encode(opening)
            for tid in forced:  # one at a time, as decoding feeds them
                hidden = session.feed([tid])
                transcript.ids.append(tid)
            logits = self.model.next_token_logits(hidden[-1])
        steered = self._decode_step(session, logits, deadline, transcript, lim.max_step_tokens, constraint)
        steered.tokens = forced + steered.tokens
        if steered.tokens == draft.tokens:
            return draft
        if steered.blocked is None and steered.ended:
            result.warnings.append(f"step {len(result.trace)} was decoded again to draw what the request names "
                                   f"({', '.join(named)}): its first draft drew none of it")
            for i, (func, target) in enumerate(mod_sites(self.tokenizer.decode(steered.tokens))):
                if func == "generate" and target is not None and bank.supports(target) and i < len(steered.phis):
                    phi = torch.from_numpy(bank.generate_phi(target)).to(steered.phis[i].dtype)
                    steered.phis[i] = transcript.phis[at[3] + i] = phi
            return steered
        self._rewind(session, transcript, at)  # keep the first draft: feed it again
        session.feed(draft.tokens)
        transcript.ids += draft.tokens
        transcript.generated += [(at[1] + i, t) for i, t in enumerate(draft.tokens)]
        transcript.phis += draft.phis
        assert (session.length, len(transcript.ids), len(transcript.generated), len(transcript.phis)) == first
        return draft

    @staticmethod
    def _steered_opening(named: Sequence[str], first_code: str, rules: _StepRules, bank: PhiBank) -> str:
        """``name = generate(`` for the first named target the bank has, where the first draft opened
        with a ``generate``; the steered draft starts with it.

        Why: the model picks the variable before the target, and the name then decides the target
        and the words of the answer. Refusing the name it wanted leaves it to invent another (seen:
        ``accumbens1outputwm_15outputwm0_1 = generate(..., "enhancing tumor")``); given the name of
        the named target, it writes the rest of the program about that target."""
        if not re.match(r"[A-Za-z_]\w* = generate\(", first_code):
            return ""
        for target in named:
            name = snake_case(target)
            if bank.supports(target) and name.isidentifier() and name not in rules.names:
                return f"{name} = generate("
        return ""

    @staticmethod
    def _rewind(session: DecodeSession, transcript: Transcript, at: tuple[int, int, int, int]) -> None:
        session.rewind(at[0])
        del transcript.ids[at[1]:], transcript.generated[at[2]:], transcript.phis[at[3]:]

    def _limit_reason(self, session: DecodeSession, deadline: float, lim: RuntimeLimits) -> str:
        if self._now() > deadline:
            return f"wall-time limit of {lim.max_wall_s:g} s reached"
        if session.remaining <= 2:
            return f"context limit of {session.capacity} tokens reached"
        return f"a step exceeded {lim.max_step_tokens} tokens without ending"

    # ---- result assembly -----------------------------------------------------------------------
    @staticmethod
    def _record(result: AnalysisResult, trace: StepTrace, outcome: StepOutcome, index: int,
                responses: list[str]) -> None:
        for fb in outcome.feedback:
            parts = [fb.text] if fb.text else []
            if fb.vectors is not None:
                parts.append(vector_feedback_label(np.asarray(fb.vectors)))
            trace.feedback.append(" ".join(parts))
        trace.error = outcome.error
        trace.phi_count = outcome.phis_used
        responses.extend(outcome.responses)
        result.metrics.extend(m if m.step is not None else m.model_copy(update={"step": index})
                              for m in outcome.metrics)
        result.outputs.extend(o if o.step is not None else o.model_copy(update={"step": index})
                              for o in outcome.outputs)

    def _finish(
        self,
        result: AnalysisResult,
        status: AnalysisStatus,
        responses: list[str],
        timings: dict[str, float],
        t_start: float,
        *,
        note: str | None = None,
        error: str | None = None,
    ) -> AnalysisResult:
        answer = " ".join(r.strip() for r in responses if r.strip())
        if status == AnalysisStatus.succeeded:
            result.text = answer or "Done: the results are in the metrics and outputs."
            result.report = ground_result(result)
        elif status == AnalysisStatus.no_answer:
            result.text = f"No answer: {note}." + (f" Partial response: {answer}" if answer else "")
        else:
            result.text = f"Analysis failed: {error}"
            result.error = error
        result.status = status
        result.timings_s = {**{k: round(v, 6) for k, v in timings.items()}, "total": round(self._now() - t_start, 6)}
        logger.info("agent run %s after %d steps in %.3f s", status, len(result.trace), result.timings_s["total"])
        return result


def _step_bindings(code: str) -> tuple[set[str], set[tuple[str, str]]]:
    """What a step that ran binds, from one parse: the names it assigns (for executors that do not
    expose their environment) and the (scan, target) of every ``generate(enc, scan<MOD>, "target")``
    (a program draws each pair once: `StepConstraint`'s ``generated``)."""
    try:
        tree = ast.parse(code.replace("<MOD>", ""))
    except SyntaxError:
        return set(), set()
    names = {node.id for stmt in tree.body if isinstance(stmt, ast.Assign)
             for node in ast.walk(stmt.targets[0]) if isinstance(node, ast.Name)}
    pairs = {(call.args[1].id, call.args[2].value) for call in ast.walk(tree)
             if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "generate"
             and len(call.args) == 3 and isinstance(call.args[1], ast.Name)
             and isinstance(call.args[2], ast.Constant) and isinstance(call.args[2].value, str)}
    return names, pairs


__all__ = ["AgentRuntime", "RuntimeLimits", "StepExecutor", "Transcript"]
