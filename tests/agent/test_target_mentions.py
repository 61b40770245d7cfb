"""Targets a request names, against what the program segmented (agent.target_mentions)."""
from __future__ import annotations

import pytest

from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.outcome import StepOutcome
from agent.target_mentions import generated_targets, mention_warnings, request_targets, unmet_mentions
from api_schemas import Metric
from tests.agent.conftest import RecordingExecutor
from tests.agent.test_runtime import scripted
from tests.agent.test_state import SCANS


def gen(*targets: str) -> list[str]:
    return ["e = encode(t1<MOD>)\nread(e)"] + [f'm{i} = generate(e, t1<MOD>, "{t}")' for i, t in enumerate(targets)]


def test_request_targets_take_the_longest_names_and_fold_spellings():
    assert request_targets("Segment the left amygdala and the left hippocampus.") == ["left amygdala",
                                                                                        "left hippocampus"]
    assert request_targets("Volume of the grey matter and the hippocampi") == ["gray matter", "hippocampus"]
    assert request_targets("Segment the contrast-enhancing tumour component.") == ["enhancing tumor"]
    assert request_targets("Is there a lesion in this brain?") == ["lesion"]  # "brain" only when alone
    assert request_targets("How long, wide and tall is the brain?") == ["brain"]
    assert request_targets("Is there enhancement after contrast?") == []  # a task word, not a target
    assert request_targets("Where is the abnormality?") == []  # words the table does not know: silence
    assert generated_targets(gen("Grey Matter", "tumor")) == ["gray matter", "lesion"]


@pytest.mark.parametrize("prompt, made, unmet", [
    ("How long, wide and tall is the brain?", ["left hemisphere"], ["brain"]),  # seen on a dev request
    ("How long, wide and tall is the brain?", ["brain"], []),
    ("Segment the left amygdala and the left hippocampus.", ["left amygdala"], ["left hippocampus"]),  # seen
    ("Segment the left amygdala and the left hippocampus.", ["left amygdala", "left hippocampus"], []),
    ("Volume of the left hippocampus", ["hippocampus", "left hemisphere"], []),  # a container of it
    ("hippocampus volume, left side", ["left hippocampus"], []),  # a part, where a side is named
    ("hippocampus volume", ["left hippocampus"], ["hippocampus"]),  # a part, no side named
    ("CSF volume please", ["ventricles", "extra-ventricular csf"], []),  # made up of several
    ("Segment the tumour", ["lesion"], []),
    ("Segment the enhancing tumor", ["lesion"], []),  # the lesion contains its enhancing part
])
def test_unmet_mentions(prompt, made, unmet):
    assert unmet_mentions(prompt, gen(*made)) == unmet


def test_the_runtime_warns_when_a_named_target_was_never_segmented(tokenizer, random_model):
    def run(target: str):
        code = f'm = generate(e, t1<MOD>, "{target}")\nx = extents(m)\nrespond(f"{{x}}")\nstop()'
        model = scripted(tokenizer, random_model, [code + "\n"])
        outcome = StepOutcome(stopped=True, responses=["73 mm"], metrics=[Metric(name="x", value=73.0, unit="mm")])
        runtime = AgentRuntime(model, tokenizer, RecordingExecutor([outcome]), limits=RuntimeLimits(max_steps=2),
                               constrained=False)
        return runtime.run("How long, wide and tall is the brain?", SCANS)

    wrong, right = run("left hemisphere"), run("brain")
    assert wrong.status == "succeeded"
    assert any(w.startswith("the request names the brain") and "low confidence" in w for w in wrong.warnings)
    assert not any("the request names" in w for w in right.warnings)
    assert mention_warnings("What is the brain volume?", gen("brain")) == []
