"""Progress of a running prompt analysis ("step k of n", issue 22): the sandbox wrapper reports each
executed step, forwards everything else, and a failing report never fails the analysis."""
from __future__ import annotations

from service.tasks.engines import _StepProgress


class FakeSandbox:
    env = {"t1": object()}

    def __init__(self) -> None:
        self.ran: list[str] = []

    def execute_step(self, code, phis=None):
        self.ran.append(code)
        return f"outcome {len(self.ran)}"


def test_each_step_reports_the_next_and_attributes_pass_through():
    seen: list[tuple[int, int]] = []
    box = FakeSandbox()
    wrapped = _StepProgress(box, lambda k, n: seen.append((k, n)), max_steps=3)
    assert wrapped.env is box.env
    assert [wrapped.execute_step(c) for c in ("a", "b", "c")] == ["outcome 1", "outcome 2", "outcome 3"]
    assert seen == [(2, 3), (3, 3), (3, 3)] and box.ran == ["a", "b", "c"]


def test_a_failing_report_does_not_fail_the_step():
    def broken(k, n):
        raise RuntimeError("store down")

    assert _StepProgress(FakeSandbox(), broken, max_steps=2).execute_step("x") == "outcome 1"
