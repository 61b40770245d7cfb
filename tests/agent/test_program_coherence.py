"""A decoded program that contradicts itself is ``no_answer``, not ``succeeded`` (issue #20)."""
from __future__ import annotations

import numpy as np
import pytest

from agent.program_coherence import coherence_problem, coherence_problems
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.outcome import StepOutcome
from api_schemas import Metric
from tests.agent.conftest import RecordingExecutor
from tests.agent.test_runtime import scripted
from tests.agent.test_state import SCANS
from tests.training.synthseg_phantom import write_phantom_root
from training.synth.label_case import LabelCaseSource
from training.tasks import FAMILIES, case_for

ENC = "e = encode(t1<MOD>)\nread(e)"


def test_the_gold_program_of_every_family_and_template_hangs_together(tmp_path):
    # phantom label maps: CI has no ../shared/data, and the programs do not depend on real anatomy
    source = LabelCaseSource(write_phantom_root(tmp_path / "synthseg", subjects=3))
    for name, fam in sorted(FAMILIES.items()):
        for seed in (0,):  # one case per family, every template written on it
            draw = fam.draw_v2(np.random.default_rng([seed, len(name)]))
            case = case_for(draw, seed, source)
            for ti in range(len(fam.all_templates)):
                sample = fam.build(case, draw, np.random.default_rng([seed, ti]), ti)
                assert coherence_problems(list(sample.steps)) == [], (name, ti, sample.steps)


@pytest.mark.parametrize("code, problem", [
    # seen on dev requests, each reported as succeeded before
    ('h = generate(e, t1<MOD>, "hippocampus")\noutput(h, "hippocampus")\n'
     'l = generate(e, t1<MOD>, "left hippocampus")\noutput(h, "left hippocampus")\nstop()',
     "outputs its hippocampus mask under the name 'left hippocampus'"),
    ('t = generate(e, t1post<MOD>, "enhancing tumor")\noutput(t1post, "left hippocampus")\nstop()',
     "outputs the input scan t1post as left hippocampus"),
    ('c = generate(e, t1<MOD>, "csf")\nx = generate(e, t1<MOD>, "hippocampus")\nv = volume(c)\n'
     'respond(f"{v}")\nstop()', "segments hippocampus and never uses it"),
    ('i = generate(e, t1<MOD>, "ICV")\nj = generate(e, t1<MOD>, "intracranial volume")\nv = volume(i)\n'
     'w = volume(j)\nr = ratio(v, w)\nrespond(f"{r}")\nstop()', "divides the volume of intracranial volume by itself"),
    ('l = generate(e, t1post<MOD>, "lesion")\nv1 = volume(l)\npc = percent_change(v1, v1)\nrespond(f"{pc}")\nstop()',
     "percent change of v1 against itself"),
    ('b = generate(e, t1_2020<MOD>, "brain")\nl = generate(e, t1_2020<MOD>, "lesion")\nv1 = volume(b)\n'
     'v2 = volume(l)\npc = percent_change(v1, v2)\nrespond(f"{pc}")\nstop()',
     "percent change from the brain volume to the lesion volume of one scan"),
])
def test_each_contradiction_is_named(code, problem):
    assert problem in coherence_problem([ENC, code])


def test_what_task_programs_do_is_not_a_problem():
    # a mask used in a later step; a lesion alias the table does not list; an output label that is no target
    steps = [ENC, 'm = generate(e, t1<MOD>, "brain")', 'v = volume(m)\nrespond(f"{v}")\nstop()']
    assert coherence_problem(steps) is None
    assert coherence_problem([ENC, 'l = generate(e, t1<MOD>, "tumour core")\noutput(l, "lesion")\nstop()']) is None
    assert coherence_problem([ENC, 'm = generate(e, t1<MOD>, "brain")\nc = crop(t1, m, 5)\n'
                              'output(c, "cropped")\nstop()']) is None
    # the same structure on two sessions, or its two sides on one scan, is what a change compares
    two_sessions = [ENC, 'a = generate(e, pre<MOD>, "brain")\nb = generate(e2, post<MOD>, "brain")\n'
                    'v1 = volume(a)\nv2 = volume(b)\npc = percent_change(v1, v2)\nrespond(f"{pc}")\nstop()']
    assert coherence_problem(two_sessions) is None
    sides = [ENC, 'a = generate(e, t1<MOD>, "left putamen")\nb = generate(e, t1<MOD>, "right putamen")\n'
             'v1 = volume(a)\nv2 = volume(b)\npc = percent_change(v1, v2)\nrespond(f"{pc}")\nstop()']
    assert coherence_problem(sides) is None
    assert coherence_problem(["this is not ( python"]) is None  # the sandbox reports what does not parse


def test_a_run_whose_program_draws_a_mask_it_never_uses_is_no_answer(tokenizer, random_model):
    steps = ["e = encode(t1<MOD>)\n", 'x = generate(e, t1<MOD>, "lesion")\n']
    model = scripted(tokenizer, random_model, steps)
    metric = Metric(name="brain volume", value=1210.0, unit="mL")
    executor = RecordingExecutor([StepOutcome(), StepOutcome(stopped=True, responses=["The brain is 1210 mL."],
                                                             metrics=[metric])])
    runtime = AgentRuntime(model, tokenizer, executor, limits=RuntimeLimits(max_steps=3))
    result = runtime.run("How big is the lesion?", SCANS)
    assert [t.code for t in result.trace] == steps
    assert result.status == "no_answer" and "segments lesion and never uses it" in result.text
    assert [(m.name, m.value) for m in result.metrics] == [("brain volume", 1210.0)]  # the measured stays
