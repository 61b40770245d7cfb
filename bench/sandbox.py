"""Sandbox interpreter overhead for a 10-call step, excluding the called functions' own time.

The step calls ten trivial registered functions (plus arithmetic, an f-string, tuple unpacking, a
Quantity and read), so nearly all measured time is the interpreter's: marker stripping, parsing,
static checks, evaluation, argument binding and type checks, the per-call alarm, metrics and trace.
The functions' own time is measured separately and subtracted. `step_overhead_ms` is for new code
(parse + checks every time); `step_overhead_cached_ms` for code seen before (replays, training).

Run: .venv/bin/python -m bench.sandbox
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from agent.functions import Quantity, default_registry
from agent.functions.registry import ArgType, LibraryFunction, Param, Registry
from agent.sandbox import Sandbox
from bench.common import report
from voxel_ops import Volume

ANY = ArgType("any", (object,))


def _nop(ctx, x):
    return x


def _mm(ctx, x):
    return Quantity(float(x), "mm", "length")


STEP = """a = nop(1)
b = nop(a + 2)
c, d = nop((b, 3.5))
e = nop(c * d)
f = nop(f"{e:.1f} units")
g = length(e)
h = nop(g + g)
i = nop(h > g)
j = nop('x' if i else 'y')
read(h)"""


class _NoVision:
    def encode(self, volumes, phis, job_id):
        raise NotImplementedError

    def generate(self, handle, stream, phi):
        raise NotImplementedError

    def release(self, job_id):
        return None


def main(repeats: int = 2000) -> None:
    registry = Registry(list(default_registry().values()) + [
        LibraryFunction("nop", (Param("x", ANY),), "any", "identity", _nop),
        LibraryFunction("length", (Param("x", ANY),), "quantity", "a length", _mm)])
    scan = Volume(np.zeros((8, 8, 8), np.float32), np.eye(4))
    assert sum(STEP.count(f"{name}(") for name in ("nop", "length", "read")) == 10

    def fresh_sandbox() -> Sandbox:
        from agent.sandbox.limits import SandboxLimits

        return Sandbox({"t1": scan}, client=_NoVision(), registry=registry,
                       limits=SandboxLimits(max_steps=repeats + 10))

    # the functions' own time: the same ten calls made directly
    own: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in (1, 3, (3, 3.5), 10.5, "10.5 units", 10.5, 21.0, True, "x"):
            _nop(None, x)
        _mm(None, 10.5)
        own.append(time.perf_counter() - t0)
    own_ms = statistics.median(own) * 1e3

    results = {}
    for label, unique in (("step_overhead_ms", True), ("step_overhead_cached_ms", False)):
        box = fresh_sandbox()
        samples = []
        for n in range(repeats):
            code = f"{STEP}\n# run {n}" if unique else STEP
            t0 = time.perf_counter()
            outcome = box.execute_step(code)
            samples.append(time.perf_counter() - t0)
            assert outcome.error is None, outcome.error
        results[label] = round(max(statistics.median(samples[10:]) * 1e3 - own_ms, 0.0), 4)
    results["called_functions_ms"] = round(own_ms, 4)
    results["calls_per_step"] = 10
    results["repeats"] = repeats
    report("sandbox", results, goals={"step_overhead_ms": "<= 1 ms median", "step_overhead_cached_ms": "<= 1 ms"})


if __name__ == "__main__":
    main()
