from __future__ import annotations

import numpy as np
import torch

from agent.model import VoxAgentModel
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.outcome import Feedback, StepOutcome
from api_schemas import Metric
from tests.agent.conftest import RecordingExecutor, vectors
from tests.agent.test_state import SCANS

STEP_1 = 'e = encode(t1<MOD>, flair<MOD>)\nm = generate(e, flair<MOD>, "lesion")\nv = volume(m)\nread(v)\nread(e)\n'
STEP_2 = ('g = generate(e, t1<MOD>, "gray matter")\noutput(g, "gray matter")\nrespond(f"The lesion measures {v}.")\n'
          'stop()\n')


class ScriptedModel(VoxAgentModel):
    """A stub policy: real network (hidden states, KV cache, phi head, feedback embeddings) but the
    next token always comes from a fixed script, one decision per call."""

    def __init__(self, cfg, script: list[int], margin: float = 30.0):
        super().__init__(cfg)
        self.script, self.cursor, self.margin = script, 0, margin

    def next_token_logits(self, hidden_last):
        super().next_token_logits(hidden_last)
        token = self.script[self.cursor] if self.cursor < len(self.script) else self.cfg.eos_id
        self.cursor += 1
        logits = torch.zeros(self.cfg.vocab_size)
        logits[token] = self.margin  # 30: the script's token at probability ~1
        return logits


def scripted(tokenizer, random_model, steps):
    script = [i for code in steps for i in tokenizer.encode(code) + [tokenizer.step_id]]
    model = ScriptedModel(random_model.cfg, script).eval()
    model.load_state_dict(random_model.state_dict())
    return model


def test_random_model_terminates_with_a_clean_no_answer(tokenizer, random_model):
    limits = RuntimeLimits(max_steps=3, max_step_tokens=48, max_wall_s=30)
    executor = RecordingExecutor()
    runtime = AgentRuntime(random_model, tokenizer, executor, limits=limits, decode_threads=2)
    result = runtime.run("How large is the lesion?", SCANS)
    assert torch.get_num_threads() == 1 and set(executor.threads) <= {1}  # LM threads only while it runs
    assert result.status == "no_answer"
    assert result.text.startswith("No answer: ") and result.error is None
    assert 1 <= len(result.trace) <= limits.max_steps and len(executor.calls) <= limits.max_steps
    assert result.metrics == [] and result.outputs == []
    assert set(result.timings_s) >= {"prefill", "decode", "execute", "total"}
    assert len(runtime.last_transcript.generated) <= limits.max_steps * (limits.max_step_tokens + 1)


class TickingClock:
    """A clock that advances ``tick`` seconds per reading: limits in readings, not in machine speed."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick, self.readings = 0.0, tick, 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.tick
        return self.now


def test_wall_time_limit_is_enforced(tokenizer, random_model):
    # 1 s per clock reading and a 20 s limit: the deadline passes after ~20 readings, a handful of
    # tokens, long before the 10,000-token step limit or the 1,024-token context on any machine
    clock = TickingClock(1.0)
    runtime = AgentRuntime(random_model, tokenizer, RecordingExecutor(), clock=clock,
                           limits=RuntimeLimits(max_steps=50, max_step_tokens=10_000, max_wall_s=20.0))
    result = runtime.run("x", SCANS)
    assert result.status == "no_answer" and "wall-time limit of 20 s" in result.text
    assert len(runtime.last_transcript.generated) < 25  # stopped by the clock, not by a token limit
    assert result.timings_s["total"] == clock.now - 1.0  # timings read the injected clock too


def test_wall_time_is_checked_between_steps(tokenizer, random_model):
    """A step that ends and executes, then the deadline: no second step is decoded."""
    model = scripted(tokenizer, random_model, ['v = 0\n', 'w = 0\n'])
    clock = TickingClock(0.0)
    executor = RecordingExecutor()

    def slow_step(code, phis=None):  # the sandbox takes "100 s": the clock jumps while it runs
        clock.now += 100.0
        return StepOutcome()

    executor.execute_step = slow_step
    runtime = AgentRuntime(model, tokenizer, executor, clock=clock, limits=RuntimeLimits(max_steps=5, max_wall_s=50))
    result = runtime.run("x", SCANS)
    assert result.status == "no_answer" and "wall-time limit of 50 s" in result.text
    assert [t.code for t in result.trace] == ['v = 0\n']


def test_scripted_policy_end_to_end_with_reads(tokenizer, random_model):
    d = random_model.cfg.hidden_size
    enc = vectors(2, d, seed=7)
    executor = RecordingExecutor([
        StepOutcome(feedback=[Feedback(text="12.5 mL"), Feedback(vectors=enc)], phis_used=3,
                    metrics=[Metric(name="lesion volume", value=12.5, unit="mL")]),
        StepOutcome(responses=["The lesion measures 12.5 mL."], stopped=True, phis_used=1),
    ])
    model = scripted(tokenizer, random_model, [STEP_1, STEP_2])
    runtime = AgentRuntime(model, tokenizer, executor, limits=RuntimeLimits(max_steps=5))
    result = runtime.run("How large is the lesion?", SCANS)

    assert result.status == "succeeded"
    assert result.text == "The lesion measures 12.5 mL."
    assert [c for c, _ in executor.calls] == [STEP_1, STEP_2]
    assert [len(p) for _, p in executor.calls] == [3, 1]
    assert executor.inference_mode == [False, False]
    assert all(p.shape == (32,) for _, phis in executor.calls for p in phis)
    assert [t.code for t in result.trace] == [STEP_1, STEP_2]
    assert result.trace[0].feedback == ["12.5 mL", "[encoding: 2 vectors]"]
    assert [t.phi_count for t in result.trace] == [3, 1]
    assert result.metrics == [Metric(name="lesion volume", value=12.5, unit="mL", step=0)]
    # the read values entered the state: text tokens and two <ENC> positions inside <FB> ... </FB>
    tr = runtime.last_transcript
    fb = tr.ids[tr.ids.index(tokenizer.fb_open_id): tr.ids.index(tokenizer.fb_close_id) + 1]
    assert tokenizer.decode(fb) == "<FB>12.5 mL\n<ENC><ENC>\n</FB>"
    assert len(tr.enc_vectors) == 1 and np.array_equal(tr.enc_vectors[0], enc)
    # phis of step 1 are identical to a from-scratch forward at the <MOD> positions
    ids = torch.tensor(tr.ids)
    with torch.no_grad():
        full = random_model(ids, torch.from_numpy(enc))
        phis = random_model.phis(full.hidden, ids.unsqueeze(0))
    torch.testing.assert_close(torch.stack(tr.phis[:3]), phis[:3], atol=1e-5, rtol=1e-4)


def test_encoding_vectors_steer_the_next_step(tokenizer, random_model):
    """Same script, different encoding vectors read back: step-1 phis equal, step-2 phi differs."""
    runs = []
    for seed in (1, 2):
        executor = RecordingExecutor([StepOutcome(feedback=[Feedback(vectors=vectors(2, 256, seed))]),
                                      StepOutcome(stopped=True, responses=["ok"])])
        model = scripted(tokenizer, random_model, [STEP_1, STEP_2])
        AgentRuntime(model, tokenizer, executor).run("p", SCANS)
        runs.append([p for _, phis in executor.calls for p in phis])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][:3], runs[1][:3]))
    assert not torch.allclose(runs[0][3], runs[1][3])


def test_runs_are_deterministic(tokenizer, random_model):
    def once():
        model = scripted(tokenizer, random_model, [STEP_1, "x = 1\n", STEP_2])
        executor = RecordingExecutor([StepOutcome(feedback=[Feedback(text="3 mL")]),
                                      StepOutcome(error="name 'q' is not defined"),
                                      StepOutcome(stopped=True, responses=["done"])])
        result = AgentRuntime(model, tokenizer, executor).run("p", SCANS)
        return result, [p for _, phis in executor.calls for p in phis]

    (r1, p1), (r2, p2) = once(), once()
    assert r1.model_dump(exclude={"timings_s"}, mode="json") == {
        **r2.model_dump(exclude={"timings_s"}, mode="json"),
        "trace": [{**t, "duration_s": r1.trace[i].duration_s}
                  for i, t in enumerate(r2.model_dump(mode="json")["trace"])],
    }
    assert r1.trace[1].error == "name 'q' is not defined"
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_stop_without_anything_is_no_answer_and_sandbox_fault_is_failed(tokenizer, random_model):
    model = scripted(tokenizer, random_model, ["stop()\n"])
    result = AgentRuntime(model, tokenizer, RecordingExecutor([StepOutcome(stopped=True)])).run("p", SCANS)
    assert result.status == "no_answer" and "stopped without" in result.text

    class Broken:
        def execute_step(self, code, phis=None):
            raise RuntimeError("worker lost")

    model = scripted(tokenizer, random_model, ["stop()\n"])
    result = AgentRuntime(model, tokenizer, Broken()).run("p", SCANS)
    assert result.status == "failed" and "worker lost" in result.error


def test_end_to_end_with_the_real_sandbox_and_vision_engine(tokenizer, random_model, tmp_path):
    from agent.sandbox import Sandbox
    from agent.vision_client import LocalVisionClient
    from tests.sandbox.conftest import phantom
    from vision.engine import VisionEngine

    engine = VisionEngine("tiny", device="cpu")
    try:
        scans = {"t1": phantom("T1"), "flair": phantom("FLAIR", lesion_value=300.0)}
        sandbox = Sandbox(scans, client=LocalVisionClient(engine), output_dir=tmp_path)
        step1 = ('e = encode(t1<MOD>, flair<MOD>)\nm = generate(e, flair<MOD>, "lesion")\n'
                 'v = volume(m)\nread(v)\nread(e)\noutput(m, "lesion")\n')
        step2 = 'respond(f"The lesion measures {v}.")\nstop()\n'
        model = scripted(tokenizer, random_model, [step1, step2])
        runtime = AgentRuntime(model, tokenizer, sandbox)
        result = runtime.run("How large is the lesion?", scans)
    finally:
        engine.close()
    assert result.status == "succeeded", result
    assert [t.error for t in result.trace] == [None, None]
    assert [t.phi_count for t in result.trace] == [3, 0]
    assert result.trace[0].feedback[0].endswith("mL") and result.trace[0].feedback[1] == "[encoding: 2 vectors]"
    assert result.text.startswith("The lesion measures ") and result.text.endswith("mL.")
    assert [o.name for o in result.outputs] == ["lesion"]
    assert any(m.unit == "mL" for m in result.metrics)
    tr = runtime.last_transcript
    assert tr.ids.count(tokenizer.enc_id) == 2 and tr.enc_vectors[0].shape == (2, 256)


def test_concurrent_runs_share_a_runtime_and_restore_torch_threads(tokenizer, random_model):
    from concurrent.futures import ThreadPoolExecutor

    def job(_):
        model = scripted(tokenizer, random_model, [STEP_1, STEP_2])
        executor = RecordingExecutor([StepOutcome(feedback=[Feedback(text="4 mL")]),
                                      StepOutcome(stopped=True, responses=["4 mL"])])
        result = AgentRuntime(model, tokenizer, executor, decode_threads=1).run("p", SCANS)
        return result.status, [p for _, phis in executor.calls for p in phis]

    torch.set_num_threads(2)
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(job, range(3)))
    assert torch.get_num_threads() == 2
    assert all(status == "succeeded" for status, _ in outcomes)
    # same values; bitwise equality is not promised across OpenMP thread pools (reduction order)
    assert all(torch.allclose(a, b, atol=1e-5) for _, phis in outcomes[1:] for a, b in zip(outcomes[0][1], phis))


def test_limits_can_be_given_per_run(tokenizer, random_model):
    runtime = AgentRuntime(random_model, tokenizer, RecordingExecutor(), limits=RuntimeLimits(max_steps=5))
    result = runtime.run("p", SCANS, limits=RuntimeLimits(max_steps=1, max_step_tokens=5))
    assert result.status == "no_answer" and len(result.trace) == 1
    assert len(runtime.last_transcript.generated) <= 6 and runtime.limits.max_steps == 5


def test_runtime_feeds_per_token_prompt_states(tokenizer, random_model):
    """An agent built with prompt_state_dim reads MiniLM's per-token states of the prompt at run time:
    with its projection zeroed, the same script emits other phis."""
    from dataclasses import replace

    from agent.prompt_encoder import SENTENCE_DIM

    def phis(scale: float):
        cfg = replace(random_model.cfg, prompt_state_dim=SENTENCE_DIM)
        script = [i for code in (STEP_1, STEP_2) for i in tokenizer.encode(code) + [tokenizer.step_id]]
        model = ScriptedModel(cfg, script).eval()
        model.load_state_dict(random_model.state_dict(), strict=False)
        torch.manual_seed(1)
        with torch.no_grad():
            model.prompt_state_proj[1].weight.normal_(0, 0.05 * scale)
        executor = RecordingExecutor([StepOutcome(feedback=[Feedback(text="3 mL")]),
                                      StepOutcome(stopped=True, responses=["done"])])
        result = AgentRuntime(model, tokenizer, executor).run("How large is the lesion in mL?", SCANS)
        assert result.error is None
        return torch.stack([p for _, ps in executor.calls for p in ps])

    assert not torch.allclose(phis(1.0), phis(0.0))
