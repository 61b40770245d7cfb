"""Training-template requests for the intent index, drawn without an episode pool.

Runs on the phantom label-map folder (tests/training/synthseg_phantom.py): CI has no ../shared/data.
"""
from __future__ import annotations

import pytest

from agent.functions import default_registry
from agent.intent_check import IntentIndex, program_shape
from tests.training.synthseg_phantom import write_phantom_root
from training.intent_requests import template_requests
from training.synth.label_case import LabelCaseSource
from training.tasks import FAMILIES


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> LabelCaseSource:
    return LabelCaseSource(write_phantom_root(tmp_path_factory.mktemp("synthseg"), subjects=2))


def test_each_family_gets_its_count_of_varied_requests_with_its_own_programs(source):
    rows = list(template_requests(per_family=5, per_case=3, families=["volume", "crop", "lesion_side"],
                                  source=source, progress=False))
    assert [f for f, _, _ in rows] == ["volume"] * 5 + ["crop"] * 5 + ["lesion_side"] * 5
    library = default_registry()
    for family, prompt, steps in rows:
        assert "{" not in prompt and steps, (family, prompt)
        called = program_shape(steps, library)
        assert {"volume": "volume", "crop": "crop", "lesion_side": "hemisphere"}[family] in called
    assert len({p for f, p, _ in rows if f == "volume"}) >= 4  # wordings vary within a case


def test_requests_come_from_training_templates_only(source, monkeypatch):
    fam = FAMILIES["volume"]
    drawn: list[int] = []
    build = type(fam).build

    def recording_build(self, case, draw, rng, ti):
        drawn.append(ti)
        return build(self, case, draw, rng, ti)

    monkeypatch.setattr(type(fam), "build", recording_build)
    rows = list(template_requests(per_family=40, per_case=20, families=["volume"], source=source, progress=False))
    assert len(drawn) == len(rows) == 40
    assert set(drawn) <= set(fam.template_indices("train")) and len(set(drawn)) >= 10
    index = IntentIndex.build(rows, lambda texts: [[float(len(t)), 1.0] for t in texts], default_registry())
    assert set(index.families) == {"volume"} and frozenset({"volume"}) in index.shapes["volume"]


def test_an_unknown_family_is_a_clear_error(source):
    with pytest.raises(ValueError, match="unknown task families"):
        next(template_requests(families=["volumes"], source=source, progress=False))
