"""Memory budget, cancellation and thread-safe deadlines of the sandbox; finished jobs free their memory.

Issue 23: ``m = threshold(t1, 50)`` then 63 x ``keep(t1, m)`` grew the API by gigabytes; a finished
job's volumes waited for the cyclic gc (Sandbox <-> CallContext.record); cancelling a running job
did not stop it, and the per-call SIGALRM timeout did not apply in thread-pool workers.
"""
from __future__ import annotations

import gc
import threading
import weakref

import pytest

from agent.functions import default_registry
from agent.functions.library import NUMBER
from agent.functions.registry import LibraryFunction, Param, Registry
from agent.sandbox import Sandbox, SandboxLimits
from tests.sandbox.conftest import RecordingClient, phantom

SIXTY_THREE_KEEPS = "m = threshold(t1, 50)\n" + "".join(f"k{i} = keep(t1, m)\n" for i in range(63))


def _busy(ctx, rounds):
    """A long Python-level computation with safe points, as a library function has them."""
    entered.set()
    for _ in range(int(rounds)):
        ctx.checkpoint()
        sum(range(1000))
    return None


entered = threading.Event()


def registry() -> Registry:
    return Registry(list(default_registry().values())
                    + [LibraryFunction("busy", (Param("rounds", NUMBER),), "None", "loop with safe points", _busy)])


def test_sixty_three_keeps_are_refused_at_the_budget_not_grown_without_bound():
    t1 = phantom()
    per_keep = t1.array.nbytes
    budget = 10 * per_keep + t1.array.size  # the mask and ten kept copies fit, the eleventh does not
    box = Sandbox({"t1": t1}, client=RecordingClient(), limits=SandboxLimits(max_memory_bytes=budget))
    out = box.execute_step(SIXTY_THREE_KEEPS)
    assert out.error and "keep(): the analysis would hold" in out.error and "memory budget" in out.error
    assert box.held_bytes() <= budget
    assert "k9" in box.env and "k10" not in box.env  # refused before the eleventh ran
    # the program can go on: a name given a new value frees the old one
    out = box.execute_step("k0 = volume(m)\nk10 = keep(t1, m)\nread(k0)")
    assert out.error is None, out.error


def test_the_default_budget_admits_ordinary_programs():
    box = Sandbox({"t1": phantom()}, client=RecordingClient())
    out = box.execute_step(SIXTY_THREE_KEEPS)  # 63 small phantoms are far below 1 GiB
    assert out.error is None and box.held_bytes() == 63 * phantom().array.nbytes + phantom().array.size


def test_a_result_larger_than_its_estimate_is_dropped_after_the_call():
    t1 = phantom()
    budget = t1.array.size // 2  # below even one mask: the estimate already refuses threshold
    box = Sandbox({"t1": t1}, client=RecordingClient(), limits=SandboxLimits(max_memory_bytes=budget))
    out = box.execute_step("m = threshold(t1, 50)")
    assert "threshold(): the analysis would hold" in out.error and "m" not in box.env
    assert box.held_bytes() == 0


def test_a_finished_sandbox_is_freed_without_the_cyclic_gc():
    gc.collect()
    gc.disable()
    try:
        t1 = phantom()
        box = Sandbox({"t1": t1}, client=RecordingClient(), limits=SandboxLimits(max_memory_bytes=10**9))
        box.execute_step("m = threshold(t1, 50)\nk = keep(t1, m)\nv = volume(m)\nread(v)\nrespond(f'{v}')")
        box.execute_step("x = keep(t1, nothing)")  # a failed step: its exception must not pin the box
        box.execute_step("difference(1e308, -1e308)")
        kept = weakref.ref(box.env["k"])
        freed = weakref.ref(box)
        del box
        assert freed() is None, gc.get_referrers(freed())
        assert kept() is None  # and with it the job's volumes
    finally:
        gc.enable()


def test_the_call_deadline_holds_inside_a_worker_thread():
    box = Sandbox({"t1": phantom()}, client=RecordingClient(), registry=registry(),
                  limits=SandboxLimits(call_timeout_s=0.2))
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(box.execute_step("busy(10**9)\nread(1)")))
    worker.start()
    worker.join(60)  # the loop would take hours: only the deadline at a safe point ends it
    assert not worker.is_alive()
    assert "busy() ran past its time limit" in outcomes[0].error and outcomes[0].feedback == []


def test_cancelling_stops_a_running_call_at_its_next_safe_point():
    cancel = threading.Event()
    entered.clear()
    box = Sandbox({"t1": phantom()}, client=RecordingClient(), registry=registry(), cancelled=cancel.is_set)
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(box.execute_step("busy(10**9)\nread(1)")))
    worker.start()
    assert entered.wait(30)
    cancel.set()
    worker.join(60)
    assert not worker.is_alive()
    (out,) = outcomes
    assert out.error == "the analysis was cancelled" and out.stopped and box.stopped
    assert "no further steps" in box.execute_step("read(2)").error


@pytest.mark.parametrize("code", ["a = 1\nb = 2", "read(1)"])
def test_a_job_cancelled_between_steps_runs_nothing_more(code):
    box = Sandbox({"t1": phantom()}, client=RecordingClient(), cancelled=lambda: True)
    out = box.execute_step(code)
    assert out.error == "the analysis was cancelled" and out.feedback == [] and "a" not in box.env
