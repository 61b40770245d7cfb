"""Static checks of one step's code: the language subset, name rules and size limits.

Everything here runs before any evaluation. The subset is an allow-list of `ast` node types; the
classic escapes (dunder and attribute walks, frames, `__import__`, format-string traversal,
comprehension/lambda scopes) need nodes that are simply not on it.
"""
from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Container
from dataclasses import dataclass

from agent.sandbox.errors import SandboxViolation
from agent.sandbox.formatting import spec_allowed
from agent.sandbox.limits import SandboxLimits
from agent.sandbox.markers import Position

ALLOWED_NODES: frozenset[type] = frozenset({
    ast.Module, ast.Assign, ast.Expr, ast.Call, ast.keyword, ast.Name, ast.Load, ast.Store,
    ast.Constant, ast.JoinedStr, ast.FormattedValue, ast.List, ast.Tuple, ast.BinOp, ast.UnaryOp,
    ast.Compare, ast.BoolOp, ast.Subscript, ast.IfExp,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
})

# What to tell the agent when it uses a construct outside the subset.
_REFUSALS: dict[type, str] = {
    ast.Attribute: "attribute access (a.b) is not allowed",
    ast.Import: "imports are not allowed", ast.ImportFrom: "imports are not allowed",
    ast.FunctionDef: "function definitions are not allowed",
    ast.AsyncFunctionDef: "function definitions are not allowed",
    ast.ClassDef: "class definitions are not allowed", ast.Lambda: "lambdas are not allowed",
    ast.For: "loops are not allowed", ast.AsyncFor: "loops are not allowed", ast.While: "loops are not allowed",
    ast.ListComp: "comprehensions are not allowed", ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed", ast.GeneratorExp: "generator expressions are not allowed",
    ast.Starred: "starred arguments (*x) are not allowed", ast.NamedExpr: "the walrus operator (:=) is not allowed",
    ast.Await: "await is not allowed", ast.Yield: "yield is not allowed", ast.YieldFrom: "yield is not allowed",
    ast.Global: "global is not allowed", ast.Nonlocal: "nonlocal is not allowed", ast.Delete: "del is not allowed",
    ast.With: "with is not allowed", ast.AsyncWith: "with is not allowed", ast.Try: "try is not allowed",
    ast.Raise: "raise is not allowed", ast.Assert: "assert is not allowed", ast.If: "if statements are not allowed",
    ast.Dict: "dict literals are not allowed", ast.Set: "set literals are not allowed",
    ast.Slice: "slices are not allowed; use a constant index",
    ast.AugAssign: "augmented assignment (+=) is not allowed",
    ast.AnnAssign: "annotated assignment is not allowed", ast.Return: "return is not allowed",
    ast.Pass: "pass is not allowed", ast.Break: "break is not allowed", ast.Continue: "continue is not allowed",
    ast.Match: "match is not allowed", ast.Is: "'is' is not allowed; use ==",
    ast.IsNot: "'is not' is not allowed; use !=",
    ast.Invert: "the operator ~ is not allowed", ast.MatMult: "the operator @ is not allowed",
    ast.LShift: "the operator << is not allowed", ast.RShift: "the operator >> is not allowed",
    ast.BitOr: "the operator | is not allowed", ast.BitAnd: "the operator & is not allowed",
    ast.BitXor: "the operator ^ is not allowed",
}


@dataclass(frozen=True)
class CheckedStep:
    """A parsed step that passed every static check, and where its <MOD> markers point."""

    tree: ast.Module
    call_count: int
    marked_args: dict[int, int]  # id(arg node) -> index of its phi (textual order)


def parse_step(code: str, limits: SandboxLimits) -> ast.Module:
    """Parse after cheap pre-checks that keep `ast.parse` itself from deep recursion or huge input."""
    if len(code) > limits.max_code_chars:
        raise SandboxViolation(f"the step has {len(code)} characters; the limit is {limits.max_code_chars}")
    max_bracket_depth = _bracket_depth(code)
    if max_bracket_depth > limits.max_bracket_depth:
        raise SandboxViolation(f"brackets nest {max_bracket_depth} deep; the limit is {limits.max_bracket_depth}")
    if "\x00" in code:
        raise SandboxViolation("the code contains a NUL character")
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise SandboxViolation(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        raise SandboxViolation("the code is too deeply nested or too large to parse") from None
    if not code.isascii():
        _check_ascii_names(code)
    return tree


def _max_depth(text: str, depth: int = 0) -> tuple[int, int]:
    """(deepest nesting, final depth) of the brackets in ``text``, starting at ``depth``."""
    deepest = depth
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest, depth


def _string_prefix(literal: str) -> str:
    return literal[:len(literal) - len(literal.lstrip("rRbBuUfF"))]


def _bracket_depth(code: str) -> int:
    """How deep the code's brackets nest, not counting those inside strings and comments
    (``respond("(((")`` nests one deep). An f-string's text counts whole, since its
    replacement fields are code; code that does not tokenize counts every character."""
    deepest = depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.OP and tok.string in "([{)]}":
                d, depth = _max_depth(tok.string, depth)
            elif tok.type == tokenize.STRING and "f" in _string_prefix(tok.string).lower():
                d, _ = _max_depth(tok.string, depth)  # Python 3.11: an f-string is one STRING token
            else:
                continue
            deepest = max(deepest, d)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return _max_depth(code)[0]
    return deepest


def _check_ascii_names(code: str) -> None:
    """Python folds look-alike identifiers (NFKC: 'ｅval' -> 'eval'); we refuse them instead."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.NAME and not tok.string.isascii():
                raise SandboxViolation(f"names must be plain ASCII; {tok.string!r} is not")
            if tok.type == tokenize.ERRORTOKEN and not tok.string.isspace():
                raise SandboxViolation(f"unexpected character {tok.string!r}")
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise SandboxViolation("the code could not be tokenized") from None


def check_step(tree: ast.Module, limits: SandboxLimits, library: Container[str],
               vision_calls: Container[str], markers: list[Position]) -> CheckedStep:
    """Walk the tree once (iteratively, so depth cannot overflow our stack) and apply every rule."""
    nodes = 0
    calls = 0
    callee_ids: set[int] = set()
    marker_index = {pos: i for i, pos in enumerate(markers)}
    marked: dict[int, int] = {}
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise SandboxViolation(f"the step is too long: more than {limits.max_nodes} syntax nodes")
        if depth > limits.max_expr_depth:
            raise SandboxViolation(f"expressions nest more than {limits.max_expr_depth} deep")
        kind = type(node)
        if kind not in ALLOWED_NODES:
            raise SandboxViolation(_refusal(node))
        line = getattr(node, "lineno", None)
        where = f" (line {line})" if line else ""
        if kind is ast.Name:
            _check_name(node.id, where)
            if isinstance(node.ctx, ast.Store) and node.id in library:
                raise SandboxViolation(f"'{node.id}' is a library function and cannot be assigned{where}")
            if isinstance(node.ctx, ast.Load) and node.id in library and id(node) not in callee_ids:
                raise SandboxViolation(f"'{node.id}' is a function: call it, e.g. {node.id}(...){where}")
        elif kind is ast.Assign:
            if len(node.targets) != 1:
                raise SandboxViolation(f"assign to one target at a time{where}")
            _check_target(node.targets[0], where)
        elif kind is ast.Expr:
            if not isinstance(node.value, ast.Call):
                raise SandboxViolation(f"a statement must be an assignment or a function call{where}")
        elif kind is ast.Call:
            calls += 1
            if calls > limits.max_calls_per_step:
                raise SandboxViolation(f"more than {limits.max_calls_per_step} calls in one step")
            if not isinstance(node.func, ast.Name):
                raise SandboxViolation(f"only library functions can be called, by name{where}")
            if node.func.id not in library:
                _check_name(node.func.id, where)
                raise SandboxViolation(f"unknown function '{node.func.id}'{where}; see the function library")
            callee_ids.add(id(node.func))
            for kw in node.keywords:
                if kw.arg is None:
                    raise SandboxViolation(f"** arguments are not allowed{where}")
                _check_name(kw.arg, where)
            if markers:
                _collect_markers(node, vision_calls, marker_index, marked)
        elif kind is ast.Constant:
            _check_constant(node.value, limits, where)
        elif kind is ast.FormattedValue:
            if node.conversion != -1:
                raise SandboxViolation(f"f-string conversions (!r, !s, !a) are not allowed{where}")
            spec = node.format_spec
            if spec is not None:
                if not (len(spec.values) == 1 and isinstance(spec.values[0], ast.Constant)
                        and isinstance(spec.values[0].value, str)):
                    raise SandboxViolation(f"f-string format specs must be constant{where}")
                if not spec_allowed(spec.values[0].value, limits.max_format_width):
                    raise SandboxViolation(f"format spec {spec.values[0].value!r} is not allowed; "
                                           f"use e.g. '.1f', '>8.2f', '.0%'{where}")
        elif kind is ast.Subscript:
            if not isinstance(node.ctx, ast.Load):
                raise SandboxViolation(f"assignment to an item is not allowed{where}")
            if not _constant_index(node.slice):
                raise SandboxViolation(f"an index must be a constant integer or field name{where}")
        elif kind in (ast.List, ast.Tuple):
            if len(node.elts) > limits.max_seq_len:
                raise SandboxViolation(f"a list or tuple may hold at most {limits.max_seq_len} items{where}")
        for field in node._fields:  # inline ast.iter_child_nodes (hot path); ctx is checked via Assign/Subscript
            if field == "ctx":
                continue
            child = getattr(node, field, None)
            if isinstance(child, list):
                stack.extend((item, depth + 1) for item in child if isinstance(item, ast.AST))
            elif isinstance(child, ast.AST):
                stack.append((child, depth + 1))
    if len(marked) != len(markers):
        raise SandboxViolation("<MOD> must directly follow a volume argument of encode() or generate()")
    return CheckedStep(tree=tree, call_count=calls, marked_args=marked)


def _refusal(node: ast.AST) -> str:
    message = _REFUSALS.get(type(node), f"'{type(node).__name__}' is not allowed in agent code")
    line = getattr(node, "lineno", None)
    return f"{message} (line {line})" if line else message


def _check_name(name: str, where: str) -> None:
    if not name.isascii() or not name.isidentifier():
        raise SandboxViolation(f"names must be plain ASCII identifiers{where}")
    if name.startswith("_"):
        raise SandboxViolation(f"names starting with '_' are not allowed: '{name}'{where}")


def _check_target(target: ast.AST, where: str) -> None:
    if isinstance(target, ast.Name):
        return
    if isinstance(target, (ast.Tuple, ast.List)) and target.elts and all(isinstance(e, ast.Name) for e in target.elts):
        return
    raise SandboxViolation(f"assign only to names or a tuple of names{where}")


def _check_constant(value: object, limits: SandboxLimits, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if value.bit_length() > limits.max_int_bits:
            raise SandboxViolation(f"integer literal larger than {limits.max_int_bits} bits{where}")
    elif isinstance(value, float):
        return
    elif isinstance(value, str):
        if len(value) > limits.max_str_len:
            raise SandboxViolation(f"string literal longer than {limits.max_str_len} characters{where}")
    else:
        raise SandboxViolation(f"{type(value).__name__} literals are not allowed{where}")


def _constant_index(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, str)
    return (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) is int)


def _collect_markers(call: ast.Call, vision_calls: Container[str], marker_index: dict[Position, int],
                     marked: dict[int, int]) -> None:
    """Attach each <MOD> marker to the argument it follows; only volume arguments of vision calls."""
    name = call.func.id  # type: ignore[attr-defined]  # calls by name only (checked before)
    args: list[ast.AST] = list(call.args) + [kw.value for kw in call.keywords]
    for position, arg in enumerate(args):
        end = (getattr(arg, "end_lineno", None), getattr(arg, "end_col_offset", None))
        if end in marker_index:
            volume_arg = name == "encode" or (name == "generate" and (
                position == 1 if position < len(call.args) else call.keywords[position - len(call.args)].arg == "scan"))
            if name not in vision_calls or not volume_arg:
                raise SandboxViolation(f"<MOD> after an argument of {name}() that is not a volume to encode "
                                       "or generate")
            marked[id(arg)] = marker_index[end]
