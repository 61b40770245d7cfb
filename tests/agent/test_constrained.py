"""Constrained decoding: the checker accepts every task program, refuses what the sandbox would refuse,
and the runtime only ever emits steps that parse and use defined names."""
from __future__ import annotations

import ast
import random
import string

import pytest

from agent.constrained import InvalidContinuation, StepConstraint, request_numbers, target_strings, token_texts
from agent.functions import default_registry
from agent.model import VoxAgentModel
from agent.phi_bank import DEFAULT_TARGETS, PhiBank
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.errors import SandboxViolation
from agent.sandbox.limits import SandboxLimits
from agent.sandbox.markers import strip_mod_markers
from agent.sandbox.outcome import StepOutcome
from agent.sandbox.validator import check_step, parse_step
from tests.agent.conftest import RecordingExecutor
from tests.agent.test_state import SCANS
from vision.targets import TARGETS as VISION_TARGETS

REGISTRY = default_registry()
BANK = PhiBank.default()
TARGETS = target_strings(BANK)
NAMES = frozenset({"t1", "flair", "e", "m", "v", "lesion"})


def constraint(names=NAMES, flat: bool = False) -> StepConstraint:
    return StepConstraint(names, REGISTRY, TARGETS, flat=flat)


def accepted(code: str, names=NAMES, flat: bool = False) -> bool:
    """The whole text is a valid step (fed in one piece, then complete)."""
    c = constraint(names, flat)
    return c.try_feed(code) and c.complete()


def feed_chars(c: StepConstraint, code: str) -> int | None:
    """Feed character by character (a marker as one piece); the offset of the first refusal, or None."""
    i = 0
    while i < len(code):
        piece = "<MOD>" if code.startswith("<MOD>", i) else code[i]
        if not c.try_feed(piece):
            return i
        i += len(piece)
    return None


def assigned(code: str) -> set[str]:
    tree = ast.parse(strip_mod_markers(code)[0])
    return {n.id for s in tree.body if isinstance(s, ast.Assign) for n in ast.walk(s.targets[0])
            if isinstance(n, ast.Name)}


def static_problem(code: str, names: set[str] | frozenset[str], bank: PhiBank = BANK) -> str | None:
    """What the sandbox would refuse before running anything, plus undefined names and unknown targets."""
    stripped, markers = strip_mod_markers(code)
    try:
        tree = parse_step(stripped, SandboxLimits())
        check_step(tree, SandboxLimits(), frozenset(REGISTRY), frozenset({"encode", "generate"}), markers)
    except SandboxViolation as exc:
        return str(exc)
    defined = set(names)
    for statement in tree.body:
        callees = {id(n.func) for n in ast.walk(statement) if isinstance(n, ast.Call)}
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and id(node) not in callees \
                    and node.id not in defined:
                return f"undefined name {node.id!r}"
            if isinstance(node, ast.Call) and node.func.id == "generate":  # type: ignore[attr-defined]
                target = node.args[2] if len(node.args) > 2 else next(
                    (k.value for k in node.keywords if k.arg == "target"), None)
                if not (isinstance(target, ast.Constant) and bank.supports(str(target.value))):
                    return "generate without a supported target literal"
        if isinstance(statement, ast.Assign):
            defined |= {n.id for n in ast.walk(statement.targets[0]) if isinstance(n, ast.Name)}
    return None


# ---- the task families' programs ----------------------------------------------------------------

def test_every_ground_truth_step_of_the_task_families_is_accepted_char_by_char():
    from training.tasks import FAMILIES, sample_task

    bank = PhiBank.for_model_dir("models/voxagent-tiny")
    targets = target_strings(bank)
    families: set[str] = set()
    steps = 0
    for seed in range(10**9, 10**9 + 120):
        task, case = sample_task(seed)
        families.add(task.family)
        names = set(case.scans)
        for step in task.steps:  # number literals grounded in the request, as the runtime grounds them
            for flat in (False, True):
                c = StepConstraint(names, REGISTRY, targets, numbers=request_numbers(task.prompt), flat=flat)
                refused = feed_chars(c, step)
                assert refused is None, f"{task.family} seed {seed} flat={flat}: refused at {step[:refused + 1]!r}"
                assert c.complete(), f"{task.family} seed {seed} flat={flat}: not complete after {step!r}"
            names |= assigned(step)
            steps += 1
    assert steps > 250 and len(families) >= len(FAMILIES) - 2


def test_constructs_of_the_subset_are_accepted():
    for code in [
        'e = encode(t1<MOD>, flair<MOD>)\nread(e)',
        'm = generate(e, flair<MOD>, "lesion")\nv = volume(m)\nrespond(f"The lesion measures {v:.1f} ({v}).")\nstop()',
        'm = generate(e, scan=t1<MOD>, target="Grey Matter")',
        'c = crop(t1, m, margin_mm=2.5)\noutput(c, "cropped")',
        'x = -1.5e3 * (v + 2) ** -1 // 3 % 4\ny = [x, 1, "a"][0]\nz = x if x > 0 and not v == 1 else None',
        'a, b = v, m\nk = a not in [1, 2] or b in (3,)',
        "respond(f'{m[\"mean\"]} and {{braces}} {v[-1]:>8.2f}')",
        "x = 1\nstop()\n",
    ]:
        assert accepted(code), code


# ---- what it refuses ------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [
    "v = volume(lesoin)",  # undefined name
    "x = volume(x)",  # used before it is assigned
    "m = segment(e, t1<MOD>)",  # unknown function
    "v = volumes(m)",  # unknown function, prefix of a known one
    "v = volume(m, m)", "v = volume()", "stop(1)",  # arity
    "c = crop(t1, m, margin_mm=1, margin_mm=2)", "c = crop(t1, mask=m, 3)", "v = volume(mask=m, x=1)",
    'm = generate(e, t1<MOD>, "optic chiasm")',  # unknown target
    'm = generate(e, t1<MOD>, "brain ")', 'm = generate(e, t1<MOD>, t)',  # near-miss, not a literal
    "e = encode(t1)", 'm = generate(e, t1, "brain")',  # missing <MOD>
    "v = volume(m<MOD>)", 'respond("<MOD>")', "e = encode(t1 <MOD>)\nx = 1 <MO", "e = encode(read<MOD>)",
    "x = = 1", " x = 1", "x = (1", "x = 1 if v", "x = 01", "x = 1e", "x = v.attr", "x = 1 # note",
    "x = 1; y = 2", "read(e)\n\nread(e)", "stop()\nread(e)", "read = 1", "_x = 1", "if = 1",
    'respond(f"{v!r}")', 'respond(f"{nope}")', 'respond(f"{v:.1q}")', 'respond(f"{v=}")', 'respond(f"}")',
    "v = volume(ge )", "v = volume(generate )",  # a finished name that is neither keyword nor operand
    "x = lambda: 1", "x = {1: 2}", "x = v[1:2]", "x = v[y]", "x = v is None", "respond(v)[0]",
])
def test_refused(code):
    assert not accepted(code)


def test_encode_takes_each_scan_once():
    """Encoding one scan twice is never meant (it measured the first of two sessions twice)."""
    names = frozenset({"t1_2020", "t1_2024", "t1"})
    assert accepted("e = encode(t1_2020<MOD>, t1_2024<MOD>)\nread(e)", names)
    assert not accepted("e = encode(t1_2020<MOD>, t1_2020<MOD>)", names)
    c = constraint(names)
    assert c.try_feed("e = encode(t1_2020<MOD>, t1_202")  # t1_2024 is still open
    assert not c.try_feed("0") and c.try_feed("4<MOD>)")  # a refused piece leaves the state alone
    c = constraint(names)
    assert c.try_feed("e = encode(t1<MOD>, t1")  # a longer name with the used one as its prefix
    assert c.try_feed("_2020<MOD>)") and c.complete()
    # other calls may take one volume twice, and each encode call starts afresh
    assert accepted('e = encode(t1<MOD>)\nf = encode(t1<MOD>)\nm = generate(e, t1<MOD>, "brain")', names)


def test_the_step_token_is_allowed_only_where_the_step_is_complete():
    c = constraint()
    assert not c.complete()  # an empty step is not a step
    c.feed("e = encode(t1<MOD>")
    assert not c.complete()
    c.feed(")\nread(e")
    assert not c.complete()
    c.feed(")")
    assert c.complete()
    c.feed("\n")
    assert c.complete()


def test_try_feed_leaves_the_state_alone_when_refused_and_feed_raises():
    c = constraint()
    c.feed("v = volume(")
    assert not c.try_feed("nope)")
    assert c.text == "v = volume(" and c.allows("m)") and not c.allows("m, m)")
    with pytest.raises(InvalidContinuation):
        c.feed("?")


@pytest.mark.parametrize("flat", [False, True])
def test_every_complete_prefix_of_a_random_walk_passes_the_sandbox_checks(flat):
    """Soundness: wander through what the checker allows; whatever it calls complete must be valid,
    and no allowed prefix is a dead end (some character, the marker or the end always fits)."""
    rng = random.Random(7)
    pieces = (list("abeilmnortvx_019 ()[],.=+-*/%<>!:{}\"'\nf") + [
        "<MOD>", " if ", " else ", " not ", " and ", " in ", "None", "stop()", "read(e)", "-1", "1e5", "{v:.1f}",
        '"brain"', "t1", "flair", "generate(", "encode(", "crop(", "margin_mm=", "scan=", "target=", "volume(",
        "respond(", "==", "lesion", ")\n", '"lesion")'])
    completes = 0
    for _ in range(250):
        c = constraint(flat=flat)
        for _ in range(rng.randint(3, 60)):
            for piece in rng.sample(pieces, 16):
                if c.try_feed(piece):
                    break
            else:
                assert c.complete() or any(c.allows(ch) for ch in [*string.printable, "<MOD>"]), c.text
                break
            if c.complete():
                completes += 1
                problem = static_problem(c.text, NAMES)
                assert problem is None, f"{c.text!r}: {problem}"
    assert completes > 100


@pytest.mark.parametrize("code, ok", [
    ('e = encode(t1<MOD>, flair<MOD>)\nread(e)', True),
    ('m = generate(e, flair<MOD>, "lesion")\nv = volume(m)\nrespond(f"It measures {v:.1f} ({v}).")\nstop()', True),
    ('c = crop(t1, m, 0)\noutput(c, "cropped")', True), ("respond(capabilities())\nstop()", True),
    ('x = 0\ny = v\nrep = f"Brain: {v}."', True),
    ('m = generate(e, scan=t1<MOD>, target="brain")', False),  # keywords (seen on dev requests)
    ("c = crop(t1, m, margin_mm=0)", False), ("c = crop(t1, m, capabilities())", False),  # seen
    ("v = volume(volume(m))", False), ("v = volume(m), volume(m)", False), ("a, b = v, m", False),  # seen
    ("x = v + 1", False), ("x = -v", False), ("x = (v)", False), ("x = [v]", False), ("x = v[0]", False),
    ("x = not v", False), ("x = v if v else m", False), ('respond(f"{v + 1}")', False),
    ('respond(f"{volume(m)}")', False), ('respond(f"{v:.1f}")', True),
])
def test_flat_style_accepts_only_the_shape_of_task_programs(code, ok):
    """What the runtime asks for: one name, one call or literal per statement, positional arguments."""
    assert accepted(code, flat=True) is ok, code
    assert accepted(code)  # every one of them is valid Python of the sandbox subset


def test_token_texts_exclude_specials_and_keep_the_marker(tokenizer):
    texts = token_texts(tokenizer)
    assert len(texts) == tokenizer.vocab_size and texts is token_texts(tokenizer)  # computed once
    assert texts[tokenizer.mod_id] == "<MOD>"
    for special in (tokenizer.step_id, tokenizer.eos_id, tokenizer.enc_id, tokenizer.fb_open_id, tokenizer.pad_id):
        assert texts[special] is None
    ids = tokenizer.encode('m = generate(e, flair<MOD>, "lesion")')
    assert "".join(texts[i] for i in ids) == 'm = generate(e, flair<MOD>, "lesion")'


# ---- the runtime ----------------------------------------------------------------------------------

def eager_model(random_model, bonus: float = 50.0) -> VoxAgentModel:
    """The random model with a large bonus for <STEP>: unconstrained, every step would be empty."""
    model = VoxAgentModel(random_model.cfg).eval()
    model.load_state_dict(random_model.state_dict())
    plain = model.next_token_logits

    def logits(hidden_last):
        out = plain(hidden_last).clone()
        out[model.cfg.step_id] += bonus
        return out

    model.next_token_logits = logits  # type: ignore[method-assign]
    return model


def test_random_model_with_constraints_writes_only_valid_steps(tokenizer, random_model):
    model = eager_model(random_model)
    executor = RecordingExecutor(default=StepOutcome())  # steps "succeed": their names become defined
    runtime = AgentRuntime(model, tokenizer, executor, limits=RuntimeLimits(max_steps=4, max_step_tokens=96))
    runtime.run("How large is the lesion?", SCANS)
    assert executor.calls, "no step was executed"
    names = {s.name for s in SCANS}
    for code, phis in executor.calls:
        assert code.strip(), "an empty step"
        assert static_problem(code, names) is None, code
        assert len(phis) == code.count("<MOD>")
        names |= assigned(code)

    plain = AgentRuntime(model, tokenizer, RecordingExecutor(default=StepOutcome()), constrained=False,
                         limits=RuntimeLimits(max_steps=2, max_step_tokens=96))
    result = plain.run("How large is the lesion?", SCANS)
    assert result.trace[0].code == ""  # the same model, unconstrained, ends every step at once


def test_no_valid_continuation_ends_the_run_with_a_clear_no_answer(tokenizer, random_model):
    executor = RecordingExecutor(default=StepOutcome())
    runtime = AgentRuntime(random_model, tokenizer, executor, limits=RuntimeLimits(max_steps=2, max_step_tokens=32))
    runtime._token_texts = tuple(None for _ in runtime._token_texts)  # a vocabulary that cannot write code
    result = runtime.run("How large is the lesion?", SCANS)
    assert result.status == "no_answer" and executor.calls == []
    assert "valid code" in result.text and "not executed" in (result.trace[0].error or "")


# ---- numbers come from the request ----------------------------------------------------------------

def test_request_numbers_reads_digits_words_and_centimetres():
    assert request_numbers("crop leaving 10 mm around it") == {"0", "0.0", "10", "10.0"}
    assert request_numbers("dilate the mask by two millimetres") == {"0", "0.0", "2", "2.0"}
    assert request_numbers("a margin of 1.5 cm please") >= {"1.5", "15", "15.0"}
    # digits inside names (scan t1_2020) and dates are not quantities the user gave
    assert request_numbers("compare t1_2020 with t1_2024") == {"0", "0.0"}


@pytest.mark.parametrize("code, ok", [
    ("c = crop(t1, m, 10)", True), ("c = crop(t1, m, 10.0)", True), ("c = crop(t1, m, margin_mm=0)", True),
    ("c = crop(t1, m, 15)", False), ("c = crop(t1, m, 1)", False), ("c = crop(t1, m, 100)", False),
    ("c = crop(t1, m, 1e1)", False), ("c = crop(t1, m, 10.5)", False),
    ('respond("15 mm")', True),  # text is not a number literal
    ("y = [v, m][1]", True),  # constant subscripts are positions, not quantities
])
def test_number_literals_must_be_stated_in_the_request(code, ok):
    c = StepConstraint(NAMES, REGISTRY, TARGETS, numbers=request_numbers("trim t1 leaving 10 mm around it"))
    assert (c.try_feed(code) and c.complete()) is ok
    assert accepted(code)  # ungrounded (numbers=None), every one of them is a valid step


def test_a_grounded_number_is_refused_as_soon_as_no_stated_number_continues_it():
    c = StepConstraint(NAMES, REGISTRY, TARGETS, numbers=request_numbers("with 8 mm of padding"))
    c.feed("c = crop(t1, m, ")
    assert not c.allows("1") and c.allows("8") and c.allows("0")
    c.feed("8")
    assert not c.allows("5") and c.allows(")")


@pytest.mark.parametrize("code, ok", [
    ('m = generate(e, t1<MOD>, "brain")', True), ('m = generate(e, scan=flair<MOD>, target="brain")', True),
    ('m = generate(e, e<MOD>, "brain")', False), ('m = generate(e, scan=e<MOD>, target="brain")', False),
    ('m = generate(e, lesion<MOD>, "brain")', False), ("e2 = encode(t1<MOD>, v<MOD>)", False),
])
def test_volume_arguments_can_be_limited_to_images(code, ok):
    """Seen on a dev request: ``generate(e, scan =e <MOD>, ...)``, an encoding where the scan goes."""
    c = StepConstraint(NAMES, REGISTRY, TARGETS, volumes={"t1", "flair"})
    assert (c.try_feed(code) and c.complete()) is ok
    assert accepted(code)  # without ``volumes`` any defined name may stand there


def test_the_runtime_takes_volumes_from_the_scans_and_the_images_of_the_env(tmp_path):
    from agent.sandbox.sandbox import Sandbox
    from tests.sandbox.conftest import phantom

    sandbox = Sandbox({"t1": phantom("T1")}, client=None, output_dir=tmp_path)
    assert sandbox.execute_step('r = threshold(t1, 100)\nn = 3\n').error is None
    rules = AgentRuntime._step_rules(_bare_runtime(), sandbox,
                                     SCANS, set(), request_numbers("margin 3 mm"))
    assert rules.volumes is not None and "t1" in rules.volumes and "r" not in rules.volumes
    assert rules.numbers == request_numbers("margin 3 mm")
    assert rules.kinds is not None and rules.kinds["r"] == {"mask"} and rules.kinds["n"] == {"number"}
    c = rules.constraint()
    assert not c.allows("c = crop(t1, r, 4") and c.allows("c = crop(t1, r, 3")
    assert not c.allows("c = crop(t1, n, 3")  # the env's number is no mask
    assert c.flat and not c.allows("c = crop(t1, mask=")  # the runtime decodes in the flat style


def _bare_runtime() -> AgentRuntime:
    """An AgentRuntime with only what `_step_rules` reads (no model needed)."""
    rt = object.__new__(AgentRuntime)
    rt._signatures = None
    rt.phi_bank = None
    return rt


V2_BANK_TARGETS = target_strings(PhiBank.default(targets=list(DEFAULT_TARGETS) + list(VISION_TARGETS)))


def v2_accepted(code: str, flat: bool) -> bool:
    c = StepConstraint(NAMES, REGISTRY, V2_BANK_TARGETS, flat=flat)
    return c.try_feed(code) and c.complete()


@pytest.mark.parametrize("code, ok", [
    ('right_lateral_ventricle = generate(e, t1<MOD>, "right lateral ventricle")', True),
    ('right_lateral_ventricle = generate(e, t1<MOD>, "lateral ventricles")', False),
    ('wm = generate(e, t1<MOD>, "white matter")', True),
    ('wm = generate(e, t1<MOD>, "gray matter")', False),
    ('lesion_2 = generate(e, flair<MOD>, "lesion")', True),
    ('lesion_2 = generate(e, flair<MOD>, "brain")', False),
    ('mask = generate(e, t1<MOD>, "gray matter")', True),  # a name that spells no target: any target
])
def test_a_name_that_spells_a_target_draws_that_target(code, ok):
    assert v2_accepted(code, flat=True) is ok
    assert v2_accepted(code, flat=False) is ok


def test_the_name_bound_target_is_refused_at_its_first_wrong_character():
    c = StepConstraint(NAMES, REGISTRY, V2_BANK_TARGETS, flat=True)
    assert c.try_feed('right_hippocampus = generate(e, t1<MOD>, "')
    assert not c.allows("hip")  # the bilateral union would contradict the name
    assert c.allows("right hip")


@pytest.mark.parametrize("code, ok", [
    ('csf = generate(e, t1<MOD>, "csf")\nv = volume(csf)', True),
    ('csf = generate(e, t1<MOD>, "csf")\ncsf = generate(e, t1<MOD>, "csf")', False),  # one name, one value
    ('mask = generate(e, t1<MOD>, "csf")\nother = generate(e, t1<MOD>, "cerebrospinal fluid")', False),  # same pair
    ('mask = generate(e, t1<MOD>, "csf")\nother = generate(e, flair<MOD>, "csf")', True),  # another scan
])
def test_a_flat_program_assigns_each_name_and_draws_each_scan_target_pair_once(code, ok):
    assert v2_accepted(code, flat=True) is ok


def test_pairs_drawn_by_earlier_steps_steer_the_next_generate_to_the_other_scan():
    names = NAMES | {"flair_b", "lesion"}
    c = StepConstraint(names, REGISTRY, V2_BANK_TARGETS, flat=True, generated=[("flair", "lesion")])
    assert c.try_feed("lesion_2 = generate(e, ")
    assert not c.allows("flair<MOD>")  # the name says lesion, and flair's lesion was drawn
    assert c.try_feed("flair_b<MOD>, \"lesion\")")
    assert c.complete()
    free = StepConstraint(names, REGISTRY, V2_BANK_TARGETS, flat=True, generated=[("flair", "lesion")])
    assert free.try_feed('m = generate(e, flair<MOD>, "')
    assert not free.allows('lesion"') and free.allows('brain"')


@pytest.mark.parametrize("code, ok", [
    ("v1 = volume(lesion)\nv2 = volume(m)", True),
    ("v1 = volume(lesion)\nv2 = volume(lesion)", False),  # a two-target answer from one mask measured twice
    ("read(v)\nread(v)", True),  # calls for their effect may repeat
])
def test_a_one_argument_measurement_is_not_repeated_in_a_step(code, ok):
    assert accepted(code, flat=True) is ok


def test_a_refused_repeat_is_refused_while_its_name_is_still_a_prefix():
    """Viability: no prefix leads into the repeat (no dead end at the closing character)."""
    names = NAMES | {"flair_a", "flair_b"}
    c = StepConstraint(names, REGISTRY, V2_BANK_TARGETS, flat=True, generated=[("flair_a", "lesion")])
    assert c.try_feed("lesion_2 = generate(e, flair_")
    assert not c.allows("a") and c.allows("b")
    m = StepConstraint(NAMES | {"lesion_2"}, REGISTRY, V2_BANK_TARGETS, flat=True)
    assert m.try_feed("v1 = volume(lesion)\nv2 = volume(les")
    assert not m.allows("ion)") and m.allows("ion_2)")
