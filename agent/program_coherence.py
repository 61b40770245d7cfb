"""Whether a decoded program hangs together: the check that catches fluent programs no task teaches.

Why: on freely worded requests the commonest dishonest result was a program that ran, answered and
was wrong in a way its own code shows. Seen on dev requests: ``output(hippocampus, "left
hippocampus")`` (a mask shipped under another structure's name), ``output(t1post, "left
hippocampus")`` (an input scan shipped as a segmentation), ``csf0hippocampus = generate(...)`` drawn
and never used, ``ratio(volume(icv), volume(icv))``, ``percent_change(v1, v1)`` and a "change" from
the brain's volume to the lesion's on one scan. No program of the task families does any of
these (``tests/agent/test_program_coherence.py`` checks every family's gold programs), so a run
whose code does is reported ``no_answer`` with the reason instead of ``succeeded``.

Only decoded programs are held to this: a user's own script may draw a mask it does not use.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence

from vision.targets import UnknownTargetError, canonical_target

_MOD = "<MOD>"


def _parse(steps: Iterable[str]) -> list[ast.Module]:
    """Each step as Python (``scan<MOD>`` read as ``scan``); a step that does not parse is skipped:
    the sandbox has already said why it failed."""
    trees = []
    for code in steps:
        try:
            trees.append(ast.parse(code.replace(_MOD, "")))
        except SyntaxError:
            continue
    return trees


def _call_name(node: ast.AST) -> str | None:
    return node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None


def _target(raw: object) -> str | None:
    """The table's name for ``raw``; None for a non-string or a name the table does not list (a
    lesion alias of the phi bank, an output label such as "cropped"): those are not compared."""
    if not isinstance(raw, str):
        return None
    try:
        return canonical_target(raw)
    except UnknownTargetError:
        return None


def _string_arg(call: ast.Call, index: int) -> str | None:
    if len(call.args) > index and isinstance(call.args[index], ast.Constant):
        value = call.args[index].value
        return value if isinstance(value, str) else None
    return None


def coherence_problems(steps: Sequence[str]) -> list[str]:
    """What in ``steps`` no task program does (empty when nothing): a drawn mask never used, an
    output named for another target than the mask it ships, an input scan output as a mask, a
    ratio of a volume to itself, a percent change of a value against itself or between two
    structures of one scan."""
    trees = _parse(steps)
    drawn: dict[str, str | None] = {}  # variable -> target of the generate() that assigned it
    drawn_on: dict[str, str | None] = {}  # variable -> the scan its generate() drew on
    volumes: dict[str, str | None] = {}  # variable -> target whose volume() it holds
    volume_scans: dict[str, str | None] = {}  # variable -> scan of that volume's mask
    assigned: set[str] = set()
    used: set[str] = set()
    problems: list[str] = []
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                used.add(node.id)
        for stmt in tree.body:
            value = stmt.value if isinstance(stmt, (ast.Assign, ast.Expr)) else None
            func = _call_name(value) if value is not None else None
            if isinstance(stmt, ast.Assign):
                names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
                assigned.update(names)
                if func == "generate" and isinstance(value, ast.Call):
                    raw = _string_arg(value, 2)
                    scan = value.args[1].id if len(value.args) > 1 and isinstance(value.args[1], ast.Name) else None
                    for n in names:
                        drawn[n] = _target(raw) or raw
                        drawn_on[n] = scan
                elif func == "volume" and isinstance(value, ast.Call) and value.args \
                        and isinstance(value.args[0], ast.Name) and value.args[0].id in drawn:
                    for n in names:
                        volumes[n] = drawn[value.args[0].id]
                        volume_scans[n] = drawn_on[value.args[0].id]
            if func == "output" and isinstance(value, ast.Call) and value.args:
                problems += _output_problems(value, drawn, assigned)
            if func == "ratio" and isinstance(value, ast.Call) and len(value.args) == 2:
                a, b = value.args
                if isinstance(a, ast.Name) and isinstance(b, ast.Name):
                    ta, tb = volumes.get(a.id), volumes.get(b.id)
                    if ta is not None and ta == tb:
                        problems.append(f"the program divides the volume of {ta} by itself")
            if func == "percent_change" and isinstance(value, ast.Call) and len(value.args) == 2:
                problems += _change_problems(value.args, volumes, volume_scans)
    # a mask read again after its own step counts as used; one never named again does not
    for name, target in drawn.items():
        if name not in used:
            problems.append(f"the program segments {target or name} and never uses it")
    return list(dict.fromkeys(problems))


def _sides_of_one(a: str, b: str) -> bool:
    """"left putamen" and "right putamen" (or a side and its union): one structure, two parts."""
    def strip(t: str) -> str:
        return t.removeprefix("left ").removeprefix("right ")
    return strip(a) == strip(b)


def _change_problems(args: Sequence[ast.expr], volumes: dict[str, str | None],
                     volume_scans: dict[str, str | None]) -> list[str]:
    """A percent change compares one quantity at two times (or two sides): not a value with itself,
    not two different structures measured on the same scan."""
    a, b = args
    if not (isinstance(a, ast.Name) and isinstance(b, ast.Name)):
        return []
    if a.id == b.id:
        return [f"the program computes the percent change of {a.id} against itself"]
    ta, tb = volumes.get(a.id), volumes.get(b.id)
    sa, sb = volume_scans.get(a.id), volume_scans.get(b.id)
    if ta and tb and ta != tb and sa is not None and sa == sb and not _sides_of_one(ta, tb):
        return [f"the program computes a percent change from the {ta} volume to the {tb} volume of one scan"]
    return []


def _output_problems(call: ast.Call, drawn: dict[str, str | None], assigned: set[str]) -> list[str]:
    first = call.args[0]
    if not isinstance(first, ast.Name):
        return []
    label = _string_arg(call, 1)
    if first.id not in assigned:
        return [f"the program outputs the input scan {first.id} as {label or 'a result'}"]
    target = _target(drawn.get(first.id))
    named = _target(label)
    if target is not None and named is not None and named != target:
        return [f"the program outputs its {target} mask under the name {label!r}"]
    return []


def coherence_problem(steps: Sequence[str]) -> str | None:
    """The problems of ``steps`` as one reason for ``no_answer`` (None when the program hangs together)."""
    problems = coherence_problems(steps)
    return "; ".join(problems) if problems else None


__all__ = ["coherence_problem", "coherence_problems"]
