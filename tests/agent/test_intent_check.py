"""The nearest-training-request check: a program that does not fit what the request reads as is flagged."""
from __future__ import annotations

import pytest

from agent.functions import default_registry
from agent.intent_check import INDEX_NAME, IntentIndex, program_shape
from agent.prompt_encoder import shared_encoder
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.outcome import StepOutcome
from api_schemas import Metric
from tests.agent.conftest import RecordingExecutor
from tests.agent.test_runtime import scripted
from tests.agent.test_state import SCANS

ENC = "e = encode(t1<MOD>)\nread(e)"
VOLUME = 'b = generate(e, t1<MOD>, "brain")\nv = volume(b)\nrespond(f"The brain volume is {v}.")\nstop()'
WIDTH = 'b = generate(e, t1<MOD>, "brain")\nx = width(b)\nrespond(f"The brain width is {x}.")\nstop()'
MASK = 'b = generate(e, t1<MOD>, "brain")\noutput(b, "brain")\nrespond("Here is the brain.")\nstop()'
# training-style requests (written here, not taken from any evaluation set); every family names the
# same structures, so the kind words decide
STRUCTURES = ("hippocampus", "thalamus", "putamen", "caudate", "amygdala")
TRAINING = [(family, wording.format(s), steps) for family, wordings, steps in (
    ("volume", ("What is the volume of the {}?", "How many millilitres does the {} occupy?"), [ENC, VOLUME]),
    ("extents", ("How wide is the {}?", "What is the left-right width of the {} in mm?"), [ENC, WIDTH]),
    ("segment", ("Segment the {}.", "Draw a mask of the {}."), [ENC, MASK]),
) for wording in wordings for s in STRUCTURES]


@pytest.fixture(scope="module")
def index() -> IntentIndex:
    return IntentIndex.build(TRAINING, shared_encoder().encode, default_registry(), per_family=10)


def vector(text: str):
    return shared_encoder().encode([text])[0]


def test_program_shape_drops_the_plumbing():
    assert program_shape([ENC, VOLUME], default_registry()) == {"volume"}
    assert program_shape([ENC, MASK], default_registry()) == {"output"}
    assert program_shape(["x = not_a_function(1)"], default_registry()) == frozenset()


def test_a_program_of_another_kind_is_flagged_and_a_fitting_one_is_not(index, tmp_path):
    lib = default_registry()
    ask = vector("Tell me the volume of the brain in millilitres.")
    warning = index.warning(ask, [ENC, WIDTH], lib)
    assert warning is not None and "reads like a volume request" in warning and "low confidence" in warning
    assert index.warning(ask, [ENC, VOLUME], lib) is None
    assert index.warning(vector("Please segment the thalamus."), [ENC, MASK], lib) is None
    again = IntentIndex.load(index.save(tmp_path / INDEX_NAME).parent)
    assert again is not None and again.families == index.families and again.shapes == index.shapes
    assert again.warning(ask, [ENC, WIDTH], lib) == warning
    assert IntentIndex.load(tmp_path / "elsewhere") is None


def test_the_runtime_adds_the_warning_to_a_finished_run(index, tokenizer, random_model):
    def run(program: str):
        model = scripted(tokenizer, random_model, [ENC + "\n", program + "\n"])
        outcomes = [StepOutcome(), StepOutcome(stopped=True, responses=["The brain measures 140 mm."],
                                               metrics=[Metric(name="brain height", value=140.0, unit="mm")])]
        runtime = AgentRuntime(model, tokenizer, RecordingExecutor(outcomes), limits=RuntimeLimits(max_steps=4),
                               constrained=False, intent_index=index)
        return runtime.run("Tell me the volume of the brain in millilitres.", SCANS)

    wrong, right = run(WIDTH), run(VOLUME)
    assert wrong.status == "succeeded" and any("reads like a volume request" in w for w in wrong.warnings)
    assert not any("reads like" in w for w in right.warnings)


def test_an_index_must_describe_every_family():
    import numpy as np

    with pytest.raises(ValueError, match="one of each per row"):
        IntentIndex(np.zeros((2, 3), np.float32), ["volume"], ["a", "b"], {"volume": set()})
    with pytest.raises(ValueError, match="families without program shapes"):
        IntentIndex(np.zeros((1, 3), np.float32), ["volume"], ["a"], {})
