"""Flat style argument kinds: a name or literal is an argument only where its value's kind fits."""
from __future__ import annotations

import pytest

from agent.constrained import ANY_KIND, StepConstraint, returned_kinds, target_strings, value_kinds
from agent.functions import default_registry
from agent.functions.types import Quantity
from agent.phi_bank import PhiBank
from vision.targets import TARGETS

GEN = 'm = generate(e, t1<MOD>, "lesion")\n'


@pytest.fixture(scope="module")
def constraint():
    targets = target_strings(PhiBank.default(targets=list(TARGETS)))

    def make(kinds=None) -> StepConstraint:
        kinds = {"t1": frozenset({"scan"}), "e": frozenset({"encoding"})} if kinds is None else kinds
        return StepConstraint({"t1", "e", "q"}, default_registry(), targets, flat=True, kinds=kinds)

    return make


@pytest.mark.parametrize("code", [
    GEN + "v = volume(m)\nx = volume(v)",  # a quantity where a mask goes
    "v = volume(e)",  # an encoding where a mask goes
    GEN + 'a = asymmetry(m, "lesion")',  # a mask and a string where quantities go
    "v = volume(3)",  # a number literal where a mask goes
    GEN + "v = volume(m)\noutput(v, \"v\")",  # a quantity where an image goes
    GEN + 'respond(f"The lesion is {m}.")',  # a mask shown as text
    GEN + "respond(m)",
])
def test_values_of_the_wrong_kind_are_refused(constraint, code):
    assert not constraint().allows(code)


@pytest.mark.parametrize("code", [
    GEN + "v = volume(m)\nrespond(f\"The lesion measures {v}.\")\nstop()",
    GEN + "c = crop(t1, m, 3)\noutput(c, \"cropped\")",
    GEN + "v = volume(m)\nw = v\nr = ratio(w, 2)\nread(r)",  # an alias keeps its kind; a number is a quantity
    GEN + "side = hemisphere(m)\nrespond(side)",
    "respond(capabilities())",
])
def test_values_of_the_right_kind_are_accepted(constraint, code):
    c = constraint()
    assert c.try_feed(code) and c.complete()


def test_names_of_unknown_kind_fit_everywhere(constraint):
    assert constraint().allows("v = volume(q)")  # q: defined, kind unknown (an executor without env)
    assert not constraint({"q": frozenset({"quantity"})}).allows("v = volume(q)")


def test_partial_names_are_viable_only_toward_a_fitting_value(constraint):
    c = constraint()
    c.feed(GEN + "v = volume(m)\nr = height(")
    assert c.allows("m") and not c.allows("v")


def test_kinds_of_values_and_returns():
    assert value_kinds(Quantity(1.0, "mL", "x")) == {"quantity"}
    assert value_kinds(3) == {"number"} and value_kinds(2.5) == {"number"} and value_kinds("a") == {"text"}
    assert value_kinds(True) == ANY_KIND
    assert returned_kinds("scan or mask") == {"scan", "mask"}
    assert returned_kinds("quantity [mL]") == {"quantity"} and returned_kinds("None") == {"none"}


def test_constants_go_only_where_any_value_goes(constraint):
    c = constraint()
    assert not c.allows("v = volume(None") and not c.allows("a = asymmetry(True")
    assert c.allows("read(None)")


def test_a_name_of_a_target_drawn_on_every_scan_is_refused():
    targets = target_strings(PhiBank.default(targets=list(TARGETS)))
    c = StepConstraint({"t1", "e"}, default_registry(), targets, flat=True, volumes={"t1"})
    c.feed('csf = generate(e, t1<MOD>, "csf")\n')
    assert not c.allows("csf_2 = ") and not c.allows("csf_225_1 = ") and c.allows("v = volume(csf)")
    two = StepConstraint({"a", "b", "e"}, default_registry(), targets, flat=True, volumes={"a", "b"})
    two.feed('lesion = generate(e, a<MOD>, "lesion")\n')
    assert two.allows('lesion_2 = generate(e, b<MOD>, "lesion")')  # the follow-up scan is still to draw
