"""The job's memory budget: bytes of the volumes its library calls created and that are still alive.

Why count live values, not allocations: agent code may reassign names (``a = keep(a, m)``), and the
old volume is then freed; what matters is what the job holds at once. Created volumes are tracked
weakly (a value dropped by the program leaves the count by itself), arrays are counted once per
underlying buffer (views share it), and the input scans are not counted (the service bounds them
at upload). Outputs stay counted as long as the job keeps them for the result.

A call is refused *before* it runs when the estimate of its result would cross the budget, and its
result is dropped right after it returns when the exact count does (the estimate can be low, e.g. a
resample to a larger grid): either way the step ends with an error the agent can read, instead of
the process growing by gigabytes.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from agent.functions.types import ImageValue, Mask, Record
from voxel_ops import Volume

MAX_WALK_DEPTH = 4


def _owner(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _arrays(value: ImageValue) -> Iterator[np.ndarray]:
    yield value.volume.array
    if isinstance(value, Mask) and value.probabilities is not None:
        yield value.probabilities


def image_values(value: Any, depth: int = 0) -> Iterator[ImageValue]:
    """The scans and masks in a call's result (records and sequences walked)."""
    if isinstance(value, ImageValue):
        yield value
    elif depth < MAX_WALK_DEPTH and isinstance(value, Record):
        for item in value.values():
            yield from image_values(item, depth + 1)
    elif depth < MAX_WALK_DEPTH and isinstance(value, (tuple, list)):
        for item in value:
            yield from image_values(item, depth + 1)


class MemoryLedger:
    """Volumes a job created, weakly held, and the bytes they occupy now."""

    def __init__(self, inputs: Iterable[Volume], budget: int) -> None:
        self.budget = int(budget)
        self._inputs = [_owner(v.array) for v in inputs]  # kept: their ids must stay theirs
        self._created: weakref.WeakSet[ImageValue] = weakref.WeakSet()

    def track(self, result: Any) -> None:
        for value in image_values(result):
            self._created.add(value)

    def held_bytes(self, outputs: Iterable[Volume] = ()) -> int:
        seen = {id(a) for a in self._inputs}
        total = 0
        arrays = [a for value in list(self._created) for a in _arrays(value)] + [v.array for v in outputs]
        for array in arrays:
            owner = _owner(array)
            if id(owner) not in seen:
                seen.add(id(owner))
                total += owner.nbytes
        return total


def estimate_result_bytes(name: str, returns: str, args: Iterable[Any]) -> int:
    """A cheap guess of what a call will allocate for its result, from its volume arguments.

    Functions return at most a volume on the grid of their largest argument: a mask is one byte per
    voxel (``generate`` also keeps its float32 probabilities), a scan keeps its argument's dtype.
    """
    images = [a for a in args if isinstance(a, ImageValue)]
    if not images:
        return 0
    voxels = max(int(a.volume.array.size) for a in images)
    if returns == "mask":
        return voxels * (5 if name == "generate" else 1)
    if "scan" in returns:
        return max(int(a.volume.array.nbytes) for a in images)
    return 0
