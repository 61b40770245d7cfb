"""Limits that need something to push against: OS limits, wall time per call and per job."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

from agent.functions import default_registry
from agent.functions.registry import ArgType, LibraryFunction, Param, Registry
from agent.sandbox import SandboxLimits

NUMBER = ArgType("a number", (int, float), exclude=(bool,))


def _spin(ctx, seconds):
    """Python-level busy work (preemptible by SIGALRM)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _nap(ctx, seconds):
    time.sleep(seconds)


def _allocate(ctx, megabytes):
    return float(np.ones(int(megabytes * 2**20) // 8).sum())


def registry_with_test_functions() -> Registry:
    extra = [LibraryFunction("spin", (Param("seconds", NUMBER),), "None", "busy loop", _spin),
             LibraryFunction("nap", (Param("seconds", NUMBER),), "None", "sleep", _nap),
             LibraryFunction("allocate", (Param("megabytes", NUMBER),), "number", "allocate memory", _allocate)]
    return Registry(list(default_registry().values()) + extra)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_call_wall_time_is_preempted_in_the_main_thread(make_sandbox):
    box = make_sandbox(limits=SandboxLimits(call_timeout_s=0.3), registry=registry_with_test_functions())
    started = time.perf_counter()
    out = box.execute_step("spin(600)\nread(1)")
    assert time.perf_counter() - started < 300  # preempted: a spin that ran its course takes 600 s
    assert "spin() ran past its time limit" in out.error and out.feedback == []
    assert box.execute_step("read(2)").feedback[0].text == "2"


def test_call_wall_time_is_reported_outside_the_main_thread(make_sandbox):
    box = make_sandbox(limits=SandboxLimits(call_timeout_s=0.2), registry=registry_with_test_functions())
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(box.execute_step("nap(0.5)\nread(1)")))
    worker.start()
    worker.join(10)
    assert "nap() ran past its time limit" in outcomes[0].error and outcomes[0].feedback == []


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_job_wall_time(make_sandbox):
    """The job budget adds up across steps; the clock moves only inside the library call, so the
    outcome depends on the budget arithmetic, not on how fast this machine runs the steps."""
    clock = ManualClock()

    def _advance(ctx, seconds):
        clock.now += seconds

    extra = LibraryFunction("advance", (Param("seconds", NUMBER),), "None", "move the clock", _advance)
    registry = Registry(list(registry_with_test_functions().values()) + [extra])
    box = make_sandbox(limits=SandboxLimits(job_timeout_s=60, call_timeout_s=100), registry=registry, clock=clock)
    assert box.execute_step("advance(40)").error is None and box.elapsed_s == 40
    out = box.execute_step("advance(30)")  # within its call budget (100 s) but the job passes 60 s
    assert "time limit" in out.error and box.elapsed_s == 70
    assert "time limit of 60 s" in box.execute_step("read(1)").error  # an exhausted budget refuses further steps


def test_alarm_handler_is_restored(make_sandbox):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        box = make_sandbox(registry=registry_with_test_functions())
        assert box.execute_step("nap(0.01)").error is None
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_address_space_limit_turns_big_allocations_into_feedback():
    result = run_python("""
        import numpy as np
        from agent.sandbox import Sandbox, apply_process_limits
        from tests.sandbox.test_limits import registry_with_test_functions
        from tests.sandbox.conftest import RecordingClient, phantom

        vm_kb = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0])
        apply_process_limits(address_space_mb=vm_kb // 1024 + 300, cpu_seconds=None)
        try:
            np.ones(2 * 2**30 // 8)
            print('allocated beyond the limit')
        except MemoryError:
            print('direct allocation refused')
        box = Sandbox({'t1': phantom()}, client=RecordingClient(), registry=registry_with_test_functions())
        print(box.execute_step('allocate(4096)').error)
        print(box.execute_step('x = allocate(8)\\nread(x > 0)').feedback[0].text)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["direct allocation refused", "allocate(): out of memory", "True"]


def test_cpu_time_limit_kills_a_runaway_worker():
    result = run_python("""
        from agent.sandbox.limits import apply_process_limits
        apply_process_limits(address_space_mb=None, cpu_seconds=1)
        print('limited', flush=True)
        while True:
            pass
    """, timeout=30)
    assert "limited" in result.stdout
    assert result.returncode == -signal.SIGXCPU
