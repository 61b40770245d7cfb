"""The language subset: what legitimate task code can do, the metrics rule, <MOD>/phi handling, limits."""
from __future__ import annotations

import numpy as np
import pytest

from agent.functions import Quantity
from agent.phi_bank import PhiBank
from agent.sandbox import SandboxLimits, strip_mod_markers


def run_ok(box, code, phis=None):
    outcome = box.execute_step(code, phis)
    assert outcome.error is None, outcome.error
    return outcome


def texts(outcome):
    return [f.text for f in outcome.feedback]


def test_assignment_arithmetic_and_persistence(make_sandbox):
    box = make_sandbox()
    run_ok(box, "a = 2\nb, c = (3, 4.5)\nd = [a, b][1]")
    out = run_ok(box, "read(a * b + c)\nread(d)\nread(7 // 2)\nread(7 % 3)\nread(2 ** 10)\nread(-a)\nread(1 / 4)")
    assert texts(out) == ["10.500", "3", "3", "1", "1024", "-2", "0.250"]


def test_comparisons_boolean_and_conditional_expressions(make_sandbox):
    box = make_sandbox()
    out = run_ok(box, "read(1 < 2 <= 2)\nread(3 > 4 or 'x' in 'xyz')\nread('big' if 5 > 3 else 'small')\n"
                      "read(not 0)\nread(2 in (1, 2))\nread('a' != 'b' and None)")
    assert texts(out) == ["True", "True", "big", "True", "True", "None"]


def test_fstrings_use_the_safe_formatter(make_sandbox):
    box = make_sandbox()
    out = run_ok(box, "v = 3.14159\nread(f'pi={v:.2f} [{v:>8.1f}] {0.25:.0%} {42:d} {\"x\":>3}')")
    assert texts(out) == ["pi=3.14 [     3.1] 25% 42   x"]


def test_quantity_arithmetic_keeps_units(make_sandbox):
    box = make_sandbox()
    box.env["a"] = Quantity(10.0, "mL", "a volume")
    box.env["b"] = Quantity(4.0, "mL", "b volume")
    box.env["h"] = Quantity(5.0, "mm", "height")
    out = run_ok(box, "read(a + b)\nread(a - b)\nread(a / b)\nread(a * 2)\nread(-a)\nread(a > b)\nread(f'{a:.2f}')")
    assert texts(out) == ["14.0 mL", "6.0 mL", "2.500", "20.0 mL", "-10.0 mL", "True", "10.00 mL"]
    assert "cannot combine mL and mm" in box.execute_step("read(a + h)").error
    assert "cannot apply" in box.execute_step("read(a + 1)").error
    assert "cannot compare mL with mm" in box.execute_step("read(a < h)").error


def test_records_index_and_unpack(make_sandbox):
    box = make_sandbox()
    run_ok(box, "m = threshold(t1, 150)\ne = extents(m)\nlr, ap, si = e")
    out = run_ok(box, "read(e['left_right'] == lr)\nread(e[2] == si)")
    assert texts(out) == ["True", "True"]
    assert "no field 'nope'" in box.execute_step("read(e['nope'])").error


def test_metrics_rule_read_formatted_or_responded_once(make_sandbox):
    box = make_sandbox()
    out = run_ok(box, "m = threshold(t1, 150)\nv = volume(m)\nh = height(m)\nw = width(m)")
    assert out.metrics == []  # computed but not used: not a metric
    out = run_ok(box, "read(v)\nrespond(f'height {h}')\nrespond(w)\nread(v)")
    assert [(m.name, m.unit, m.step) for m in out.metrics] == [
        ("t1 above 150 volume", "mL", 1),
        ("t1 above 150 height", "mm", 1), ("t1 above 150 width", "mm", 1)]
    out = run_ok(box, "respond(f'{v}')")
    assert out.metrics == []  # already recorded
    result = box.result()
    assert [m.name for m in result.metrics] == ["t1 above 150 volume", "t1 above 150 height", "t1 above 150 width"]
    assert result.text.startswith("height ")


def test_errors_become_feedback_and_keep_earlier_effects(make_sandbox):
    box = make_sandbox()
    out = box.execute_step("a = 1\nread(a)\nb = 1 / 0\nc = 3")
    assert out.error == "division by zero"
    assert texts(out) == ["1"]
    assert "a" in box.env and "c" not in box.env
    assert box.trace[-1].error == "division by zero" and box.trace[-1].feedback == ["1"]
    assert run_ok(box, "read(a + 1)").feedback[0].text == "2"


def test_stop_ends_the_step_and_the_job(make_sandbox):
    box = make_sandbox()
    out = box.execute_step("respond('done')\nstop()\nrespond('not reached')")
    assert out.stopped and out.error is None and out.responses == ["done"]
    assert "stopped" in box.execute_step("read(1)").error


def test_step_call_and_size_limits(make_sandbox):
    box = make_sandbox(limits=SandboxLimits(max_steps=3, max_calls_per_step=4, max_code_chars=100))
    assert "more than 4 calls" in box.execute_step("read(1)\n" * 5).error
    assert "limit is 100" in box.execute_step("x = 1\n" * 30).error
    run_ok(box, "read(1)")
    assert "step limit reached" in box.execute_step("read(1)").error
    assert len(box.trace) == 4


def test_scan_names_must_be_identifiers(make_sandbox, t1):
    with pytest.raises(ValueError):
        make_sandbox(scans={"read": t1})
    with pytest.raises(ValueError):
        make_sandbox(scans={"__x": t1})


def test_strip_mod_markers_is_textual():
    code, markers = strip_mod_markers("e = encode(t1 <MOD>, flair<MOD>)\nm = generate(e, t1<MOD>, 'x')")
    assert code == "e = encode(t1, flair)\nm = generate(e, t1, 'x')"
    assert markers == [(1, 13), (1, 20), (2, 18)]


def test_phis_are_assigned_in_textual_order(make_sandbox, t1):
    box = make_sandbox(scans={"t1": t1, "flair": t1.with_array(t1.array, modality="FLAIR")})
    phis = [np.full(32, float(i), dtype=np.float32) for i in range(3)]
    out = run_ok(box, "e = encode(t1<MOD>, flair<MOD>)\nm = generate(e, flair<MOD>, 'lesion')", phis)
    assert out.phis_used == 3 and box.trace[-1].phi_count == 3
    encode_call, generate_call = box.ctx.client.calls[0], box.ctx.client.calls[1]
    assert [p[0] for p in encode_call[2]] == [0.0, 1.0] and encode_call[3] == box.job_id
    assert generate_call[1] == 1 and generate_call[2][0] == 2.0


def test_phi_bank_supplies_missing_phis(make_sandbox, t1):
    box = make_sandbox(scans={"t1": t1, "flair": t1.with_array(t1.array, modality="FLAIR")})
    out = run_ok(box, "e = encode(t1<MOD>, flair)\nm = generate(e, t1, 'Grey  Matter')")  # phis=None: bank
    assert out.phis_used == 0
    bank = PhiBank.default()
    calls = box.ctx.client.calls
    np.testing.assert_array_equal(calls[0][2][0], bank.encode_phi("T1"))
    np.testing.assert_array_equal(calls[0][2][1], bank.encode_phi("FLAIR"))
    np.testing.assert_array_equal(calls[1][2], bank.generate_phi("gray matter"))


def test_phi_count_mismatch_and_misplaced_markers(make_sandbox):
    box = make_sandbox()
    phi = np.zeros(32, dtype=np.float32)
    assert "1 volume argument(s)" in box.execute_step("e = encode(t1<MOD>)", [phi, phi]).error
    assert "<MOD>" in box.execute_step("read(t1<MOD>)", [phi]).error
    assert "<MOD>" in box.execute_step("e = encode(t1)\nm = generate(e<MOD>, t1, 'brain')", [phi]).error
    assert box.ctx.client.calls == []  # refused before anything ran


def test_bracket_precheck_ignores_strings_and_comments(make_sandbox):
    from agent.sandbox import SandboxLimits
    from agent.sandbox.errors import SandboxViolation
    from agent.sandbox.validator import parse_step

    limits = SandboxLimits()
    many = "(" * (limits.max_bracket_depth + 8)
    for code in [f'respond("{many}")', f"respond('{many}')  # {many}", f"# {many}\nrespond('x')",
                 f'respond("""{many}\n{many}""")', f"respond(r'{many}')", 'respond(")")\nrespond("(")']:
        parse_step(code, limits)  # not refused by the pre-check
    box = make_sandbox()
    out = box.execute_step(f'respond("(")\nrespond("{many}")  # ((((')
    assert out.error is None, out.error
    assert box.responses[-1] == many
    too_deep = "y = " + "(" * (limits.max_bracket_depth + 1) + "1" + ")" * (limits.max_bracket_depth + 1)
    for code in [too_deep, 'y = f"{' + too_deep[4:] + '}"', "y = '(' + " + too_deep[4:], too_deep + "  # ))))"]:
        with pytest.raises(SandboxViolation, match="brackets nest"):
            parse_step(code, limits)
