"""Steering to the targets a request names: the constraint's ``mentions`` and the runtime's redecode."""
from __future__ import annotations

import pytest
import torch

from agent.constrained import StepConstraint, target_strings
from agent.functions import default_registry
from agent.model import VoxAgentModel
from agent.phi_bank import PhiBank
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.outcome import Feedback, StepOutcome
from agent.target_mentions import answers_none, steering_targets
from tests.agent.conftest import RecordingExecutor
from tests.agent.test_state import SCANS
from vision.targets import TARGETS

ENCODE = "e = encode(t1<MOD>)\nread(e)"
WRONG = 'x = generate(e, t1<MOD>, "left hippocampus")\nv = volume(x)\nrespond(f"The volume is {v}.")\nstop()'
RIGHT = 'lesion = generate(e, t1<MOD>, "lesion")\nv = volume(lesion)\nrespond(f"The volume is {v}.")\nstop()'


@pytest.fixture(scope="module")
def targets() -> tuple[str, ...]:
    return target_strings(PhiBank.default(targets=list(TARGETS)))


def _constraint(targets, mentions=(), generated=()) -> StepConstraint:
    return StepConstraint({"t1", "flair", "e"}, default_registry(), targets, flat=True, mentions=mentions,
                          generated=generated)


def test_a_named_target_narrows_the_target_slot_until_it_is_drawn(targets):
    assert _constraint(targets).allows('x = generate(e, t1<MOD>, "left hippocampus")')
    steered = _constraint(targets, ["lesion"])
    assert steered.steers
    assert not steered.allows('x = generate(e, t1<MOD>, "left hippocampus")')
    assert steered.allows('x = generate(e, t1<MOD>, "lesion")')
    # drawn on another scan by an earlier step: the named target is answered, the slot is open again
    answered = _constraint(targets, ["lesion"], generated=[("flair", "lesion")])
    assert answered.allows('x = generate(e, t1<MOD>, "left hippocampus")')
    # within the step too
    assert steered.allows('x = generate(e, t1<MOD>, "lesion")\ny = generate(e, t1<MOD>, "left hippocampus")')


def test_a_name_that_spells_another_target_is_refused_while_steering(targets):
    steered = _constraint(targets, ["brain"])
    assert not steered.allows("left_hemisphere = generate(")
    assert not steered.allows("left_hippocampus = ")
    assert steered.allows("brain = generate(e, t1<MOD>, \"brain\")")
    assert steered.allows("v = generate(e, t1<MOD>, \"brain\")")  # a name that spells nothing stays free
    assert _constraint(targets).allows("left_hemisphere = generate(")


def test_sides_and_unions_answer_each_other(targets):
    hippocampus = _constraint(targets, ["hippocampus"])
    assert hippocampus.allows('x = generate(e, t1<MOD>, "left hippocampus")')
    assert not hippocampus.allows('x = generate(e, t1<MOD>, "amygdala")')
    left = _constraint(targets, ["left cerebral white matter"])
    assert left.allows('x = generate(e, t1<MOD>, "cerebral white matter")')
    assert not left.allows('x = generate(e, t1<MOD>, "right cerebral white matter")')
    # a target the model cannot draw steers nothing
    assert not _constraint(targets, ["optic chiasm"]).steers


def test_steering_targets_add_the_other_side_only_when_the_request_names_it():
    assert steering_targets("left vs right hippocampus asymmetry") == ("right hippocampus", "left hippocampus")
    assert steering_targets("volume of the left hippocampus") == ("left hippocampus",)
    assert steering_targets("how are you?") == ()


def test_answers_none_reads_the_drawn_targets_like_the_mention_warning():
    assert answers_none("Is the lesion enhancing?", ["left hippocampus"])
    assert not answers_none("Is the lesion enhancing?", ["lesion", "left hippocampus"])
    assert not answers_none("left hippocampus volume", ["hippocampus"])  # the union contains it
    assert not answers_none("how are you?", ["brain"])  # names nothing: nothing to answer


class TwoChoiceModel(VoxAgentModel):
    """Real network and KV cache, but the next token spells one of two texts per step: the first
    (logit 30) where the step so far is a prefix of it, else the second (logit 20). A step is what
    was decoded one token at a time since the last multi-token feed (prompt or feedback)."""

    def __init__(self, cfg, tokenizer, steps: list[tuple[str, str]]):
        super().__init__(cfg)
        self.tokenizer, self.steps = tokenizer, steps
        self.session = None
        self.boundaries: list[int] = []

    def start_session(self, capacity):
        session = super().start_session(capacity)
        feed = session.feed

        def tracked(ids, *args, **kwargs):
            out = feed(ids, *args, **kwargs)
            if len(ids) > 1:
                self.boundaries.append(session.length)
            return out

        session.feed = tracked
        self.session = session
        return session

    def _next(self, text: str, partial: str) -> int | None:
        if text == partial:
            return self.tokenizer.step_id
        if not text.startswith(partial):
            return None
        best = None
        for n in range(1, len(text) - len(partial) + 1):  # the longest piece whose text continues it
            ids = self.tokenizer.encode(text[len(partial):len(partial) + n])
            if len(ids) == 1:
                best = ids[0]
        return best

    def next_token_logits(self, hidden_last):
        super().next_token_logits(hidden_last)
        logits = torch.zeros(self.cfg.vocab_size)
        step = len(self.boundaries) - 1
        if step >= len(self.steps):
            logits[self.cfg.eos_id] = 30.0
            return logits
        partial = self.tokenizer.decode(self.session.ids[self.boundaries[-1]:])
        for text, margin in zip(self.steps[step], (30.0, 20.0)):
            tid = self._next(text, partial)
            if tid is not None and not logits[tid]:
                logits[tid] = margin
        return logits


def _runtime(tokenizer, random_model, steps, **kwargs):
    model = TwoChoiceModel(random_model.cfg, tokenizer, steps).eval()
    model.load_state_dict(random_model.state_dict())
    executor = RecordingExecutor([
        StepOutcome(feedback=[Feedback(text="encoded")]),
        StepOutcome(responses=["The volume is 12.5 mL."], stopped=True, phis_used=1),
    ])
    return AgentRuntime(model, tokenizer, executor, limits=RuntimeLimits(max_steps=4),
                        phi_bank=PhiBank.default(targets=list(TARGETS)), **kwargs), executor


def test_a_step_that_draws_nothing_named_is_decoded_again_steered(tokenizer, random_model):
    runtime, executor = _runtime(tokenizer, random_model, [(ENCODE, ENCODE), (WRONG, RIGHT)])
    result = runtime.run("How large is the lesion?", SCANS[:1])
    # the steered draft opens with the named target's variable (forced), and the model writes the rest
    assert [code for code, _ in executor.calls] == [ENCODE, RIGHT]
    assert result.status == "succeeded"
    assert any("decoded again" in w and "lesion" in w for w in result.warnings)
    # the phi at the steered generate's <MOD> was emitted before the target string: the bank's is used
    (phi,) = executor.calls[1][1]
    torch.testing.assert_close(phi, torch.from_numpy(runtime.phi_bank.generate_phi("lesion")))
    assert not any("far from the one" in w for w in result.warnings)
    # the transcript is what a from-scratch forward of the final sequence sees: no trace of the draft
    tr = runtime.last_transcript
    assert tokenizer.decode(tr.ids).count("left hippocampus") == 0
    assert len(tr.phis) == 2  # encode's <MOD> and the steered step's
    assert runtime.model.session.ids == tr.ids[:len(runtime.model.session.ids)]


def test_without_steering_or_with_a_named_draw_the_first_draft_runs(tokenizer, random_model):
    runtime, executor = _runtime(tokenizer, random_model, [(ENCODE, ENCODE), (WRONG, RIGHT)], steer_mentions=False)
    runtime.run("How large is the lesion?", SCANS[:1])
    assert [code for code, _ in executor.calls][1] == WRONG
    runtime, executor = _runtime(tokenizer, random_model, [(ENCODE, ENCODE), (WRONG, RIGHT)])
    result = runtime.run("How large is the left hippocampus?", SCANS[:1])
    assert [code for code, _ in executor.calls][1] == WRONG
    assert not any("decoded again" in w for w in result.warnings)


def test_a_steered_draft_that_does_not_end_keeps_the_first(tokenizer, random_model):
    from agent.runtime import _StepDraft

    runtime, executor = _runtime(tokenizer, random_model, [(ENCODE, ENCODE), (WRONG, RIGHT)])
    decode = runtime._decode_step

    def unfinished(session, logits, deadline, transcript, max_tokens, constraint=None):
        if constraint is None or not constraint.steers:
            return decode(session, logits, deadline, transcript, max_tokens, constraint)
        junk = tokenizer.encode("x = generate(")  # fed, then the draft runs out of tokens
        session.feed(junk)
        transcript.ids += junk
        return _StepDraft(junk, [], ended=False)

    runtime._decode_step = unfinished
    result = runtime.run("How large is the lesion?", SCANS[:1])
    assert [code for code, _ in executor.calls][1] == WRONG
    assert not any("decoded again" in w for w in result.warnings)
    tr = runtime.last_transcript
    assert len(tr.phis) == 2 and tokenizer.decode(tr.ids).count("left hippocampus") == 1
    # the session holds the first draft again, position for position
    assert runtime.model.session.ids == tr.ids[:len(runtime.model.session.ids)]


def test_one_side_of_a_named_structure_answers_it_whatever_the_side_words():
    # held-out wordings: the table reads "lt cerebellar white matter" as the bilateral structure
    assert not answers_none("average brightness within lt cerebellar white matter",
                            ["left cerebellum white matter"])
    assert not answers_none("Show only rt nucleus accumbens", ["right accumbens"])
    assert answers_none("How long, wide and tall is the brain?", ["left hemisphere"])  # no side of it


def test_an_answer_naming_what_no_step_segmented_is_flagged():
    from agent.target_mentions import answer_mention_warnings

    steps = ['gray_matter = generate(e, t1<MOD>, "gray matter")\noutput(gray_matter, "cerebral white matter")']
    (warning,) = answer_mention_warnings("Here is the segmentation of the cerebral white matter.", steps)
    assert "cerebral white matter" in warning and "gray matter" in warning
    assert answer_mention_warnings("Here is the segmentation of the gray matter.", steps) == []
    both = ['l = generate(e, t1<MOD>, "left hippocampus")\nr = generate(e, t1<MOD>, "right hippocampus")']
    assert answer_mention_warnings("The hippocampus asymmetry index is 0.02.", both) == []  # its parts
    lesion = ['m = generate(e, t1<MOD>, "lesion")']
    assert answer_mention_warnings("The lesion is in the left hemisphere.", lesion) == []
