"""The escape corpus: every attempt is refused as feedback, fast, and the sandbox keeps working."""
from __future__ import annotations

import time

import pytest

from tests.sandbox.escape_corpus import CORPUS

LEAK_MARKERS = ("<class", "<function", "<built-in", "<module", "Traceback", "object at 0x")


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 80


@pytest.fixture(scope="module")
def sandbox():
    from agent.sandbox import Sandbox, SandboxLimits
    from tests.sandbox.conftest import RecordingClient, phantom

    client = RecordingClient()
    client.volumes_for_generate = phantom()
    box = Sandbox({"t1": phantom()}, client=client, limits=SandboxLimits(max_steps=10_000))
    assert box.execute_step("x = 1").error is None
    return box


@pytest.mark.parametrize("name,code", CORPUS, ids=[c[0] for c in CORPUS])
def test_attempt_is_refused_and_sandbox_survives(sandbox, name, code):
    env_before = dict(sandbox.env)
    started = time.perf_counter()
    outcome = sandbox.execute_step(code)
    elapsed = time.perf_counter() - started
    assert outcome.error, f"{name} was not refused"
    assert sandbox.trace[-1].error == outcome.error  # the refusal is in the trace as well
    assert "time limit" not in outcome.error  # refused by a rule, not stopped after running
    assert elapsed < 60, f"{name} took {elapsed:.2f} s"  # a hang guard only: refusals take milliseconds
    for leak in LEAK_MARKERS:
        assert leak not in outcome.error
        assert all(leak not in (f.text or "") for f in outcome.feedback)
    assert all("__" not in (f.text or "") for f in outcome.feedback)
    # no new names, no rebinding of the scan or the library; later steps keep working
    assert set(sandbox.env) <= set(env_before) | {"y", "a", "b", "f"}
    assert sandbox.env["t1"] is env_before["t1"]
    after = sandbox.execute_step("z = x + 1\nread(z)")
    assert after.error is None and after.feedback[0].text == "2"
    assert not sandbox.stopped


def test_refusal_is_phrased_for_the_agent(make_sandbox):
    box = make_sandbox()
    assert "attribute access" in box.execute_step("read(t1.volume)").error
    assert "not defined" in box.execute_step("read(nothing)").error
    assert "unknown function 'eval'" in box.execute_step("eval('1')").error
    assert "larger than 128 bits" in box.execute_step("y = 10**10**8").error
    assert "ASCII" in box.execute_step("\uff45val('1')").error
