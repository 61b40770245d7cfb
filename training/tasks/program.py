"""Ground-truth programs: steps of agent code written with the function library.

Conventions (what the agent learns to write):
* step 1 encodes the scans, each volume argument followed by `<MOD>`, and reads the encoding;
* segmentations are generated with `<MOD>` after the scan argument; composed targets (left gray
  matter ...) are intersections of generated masks;
* a step ends where the next code depends on a value read back (`read(x)` is then its last line);
* the final step responds and calls `stop()`.
A sample's `code` joins its steps, each terminated by `<STEP>`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.tasks.targets import TARGETS, TargetDef, var_name

MOD = "<MOD>"
STEP = "<STEP>"

GENERATED_VARS = {"brain": "brain", "gray matter": "gm", "white matter": "wm", "cerebrospinal fluid": "csf",
                  "left hemisphere": "lh", "right hemisphere": "rh", "lesion": "lesion",
                  "enhancing tumor": "enhancing", "edema": "edema", "necrosis": "necrosis"}


@dataclass
class TaskSample:
    """One training/evaluation example: prompt, ground-truth program and the answer it must give."""

    family: str
    prompt: str
    steps: list[str]
    answer: str | None  # exact final response text (numbers as the library formats them)
    expected: dict[str, Any]  # ground truth, flat keys (values in mL, mm, categories ...)
    generate_calls: list[tuple[str, str]]  # (scan name, target) of every generate(), in code order
    outputs: list[str] = field(default_factory=list)  # names passed to output()
    template_index: int = 0
    seed: int = 0

    @property
    def code(self) -> str:
        return "".join(step + STEP for step in self.steps)


class Program:
    """Collects the lines of a ground-truth program, step by step."""

    def __init__(self, table: dict[str, TargetDef] | None = None) -> None:
        self.table = table if table is not None else TARGETS  # v2 tasks pass targets.V2_TARGETS
        self.steps: list[list[str]] = [[]]
        self.generate_calls: list[tuple[str, str]] = []
        self._have: dict[tuple[str, str], str] = {}  # (scan, generated target) -> variable
        self.outputs: list[str] = []

    def line(self, text: str) -> None:
        self.steps[-1].append(text)

    def end_step(self) -> None:
        if self.steps[-1]:
            self.steps.append([])

    def encode(self, scans: list[str], var: str = "e") -> str:
        self.line(f"{var} = encode({', '.join(s + MOD for s in scans)})")
        self.line(f"read({var})")
        self.end_step()
        return var

    def generate(self, scan: str, target: str, enc: str = "e", suffix: str = "") -> str:
        key = (scan + suffix, target)
        if key not in self._have:
            var = GENERATED_VARS.get(target, var_name(target)) + suffix
            self.line(f'{var} = generate({enc}, {scan}{MOD}, "{target}")')
            self.generate_calls.append((scan, target))
            self._have[key] = var
        return self._have[key]

    def segment(self, scan: str, target: str, enc: str = "e", suffix: str = "") -> str:
        """Variable holding `target` on `scan`, generating (and composing) as needed."""
        t = self.table[target]
        if len(t.generated) == 1:
            return self.generate(scan, t.generated[0], enc, suffix)
        parts = [self.generate(scan, g, enc, suffix) for g in t.generated]
        var = t.var + suffix
        self.line(f"{var} = intersection({parts[0]}, {parts[1]})")
        return var

    def output(self, var: str, name: str) -> None:
        self.line(f'output({var}, "{name}")')
        self.outputs.append(name)

    def respond(self, text: str, fstring: bool = False) -> None:
        quoted = text.replace('"', "'")
        self.line(f'respond({"f" if fstring else ""}"{quoted}")')

    def finish(self) -> list[str]:
        self.line("stop()")
        return ["\n".join(lines) for lines in self.steps if lines]
