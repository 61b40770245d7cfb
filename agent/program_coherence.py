"""Whether a decoded program hangs together: the check that catches fluent programs no task teaches.

Why: on freely worded requests the commonest dishonest result was a program that ran, answered and
was wrong in a way its own code shows. Seen on dev requests: ``output(hippocampus, "left
hippocampus")`` (a mask shipped under another structure's name), ``output(t1post, "left
hippocampus")`` (an input scan shipped as a segmentation), ``csf0hippocampus = generate(...)`` drawn
and never used, and ``ratio(volume(icv), volume(icv))``. No program of the task families does any of
these (``tests/sandbox/test_program_coherence.py`` checks every family's gold programs), so a run
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
    ratio of a volume to itself."""
    trees = _parse(steps)
    drawn: dict[str, str | None] = {}  # variable -> target of the generate() that assigned it
    volumes: dict[str, str | None] = {}  # variable -> target whose volume() it holds
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
                    for n in names:
                        drawn[n] = _target(raw) or raw
                elif func == "volume" and isinstance(value, ast.Call) and value.args \
                        and isinstance(value.args[0], ast.Name) and value.args[0].id in drawn:
                    for n in names:
                        volumes[n] = drawn[value.args[0].id]
            if func == "output" and isinstance(value, ast.Call) and value.args:
                problems += _output_problems(value, drawn, assigned)
            if func == "ratio" and isinstance(value, ast.Call) and len(value.args) == 2:
                a, b = value.args
                if isinstance(a, ast.Name) and isinstance(b, ast.Name):
                    ta, tb = volumes.get(a.id), volumes.get(b.id)
                    if ta is not None and ta == tb:
                        problems.append(f"the program divides the volume of {ta} by itself")
    # a mask read again after its own step counts as used; one never named again does not
    for name, target in drawn.items():
        if name not in used:
            problems.append(f"the program segments {target or name} and never uses it")
    return list(dict.fromkeys(problems))


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
