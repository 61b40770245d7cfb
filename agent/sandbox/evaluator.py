"""Evaluation of a checked step: a tree walk over the allowed node types, with bounded values.

Only the node types the validator lets through have handlers. Every operation that could grow a
value (power, multiplication, concatenation) is checked before it computes, so no `10**10**8`,
`'a'*10**10` or `[0]*10**9` is ever materialized.
"""
from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from agent.functions.types import Quantity, Record, type_name
from agent.sandbox.errors import SandboxRuntimeError
from agent.sandbox.formatting import format_value
from agent.sandbox.limits import SandboxLimits

CallHook = Callable[[str, list[Any], dict[str, Any], dict[int | str, int]], Any]

_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_NUMBER_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool included: it is an int


class Evaluator:
    """Runs the statements of one step against the persistent environment `env`."""

    def __init__(self, env: dict[str, Any], limits: SandboxLimits, call: CallHook,
                 marked_args: dict[int, int], on_format: Callable[[Any], None],
                 checkpoint: Callable[[], None] | None = None) -> None:
        self.env = env
        self.limits = limits
        self.call = call
        self.marked_args = marked_args
        self.on_format = on_format
        self.checkpoint = checkpoint  # raises to end the step (cancelled, past its time): before each statement

    # ------------------------------------------------------------ statements

    def run(self, tree: ast.Module) -> None:
        for statement in tree.body:
            if self.checkpoint is not None:
                self.checkpoint()
            if isinstance(statement, ast.Assign):
                self._assign(statement.targets[0], self.eval(statement.value))
            else:  # ast.Expr holding a call (validated)
                self.eval(statement.value)

    def _assign(self, target: ast.AST, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = value
            return
        names = [elt.id for elt in target.elts]  # type: ignore[attr-defined]  # validator: a tuple of names
        items = value.values() if isinstance(value, Record) else value
        if not isinstance(items, (tuple, list)):
            raise SandboxRuntimeError(f"cannot unpack {type_name(value)} into {len(names)} names")
        if len(items) != len(names):
            raise SandboxRuntimeError(f"cannot unpack {len(items)} values into {len(names)} names")
        for name, item in zip(names, items):
            self.env[name] = item

    # ------------------------------------------------------------ expressions

    def eval(self, node: ast.AST) -> Any:
        # handlers looked up on the class: a per-instance dict of bound methods would be a reference
        # cycle keeping the evaluator, and through it the job's whole environment, alive until a gc run
        return _HANDLERS[type(node)](self, node)

    def _constant(self, node: ast.Constant) -> Any:
        return node.value

    def _name(self, node: ast.Name) -> Any:
        try:
            return self.env[node.id]
        except KeyError:
            raise SandboxRuntimeError(f"name '{node.id}' is not defined") from None

    def _call(self, node: ast.Call) -> Any:
        args = [self.eval(a) for a in node.args]
        kwargs = {kw.arg: self.eval(kw.value) for kw in node.keywords}
        phis: dict[int | str, int] = {}
        if self.marked_args:
            for i, a in enumerate(node.args):
                if id(a) in self.marked_args:
                    phis[i] = self.marked_args[id(a)]
            for kw in node.keywords:
                if id(kw.value) in self.marked_args:
                    phis[kw.arg] = self.marked_args[id(kw.value)]  # type: ignore[index]  # no **kwargs: arg is str
        return self.call(node.func.id, args, kwargs, phis)  # type: ignore[attr-defined]  # calls by name only

    def _list(self, node: ast.List) -> list[Any]:
        return self._bounded_seq([self.eval(e) for e in node.elts])

    def _tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return self._bounded_seq(tuple(self.eval(e) for e in node.elts))

    def _bounded_seq(self, seq: Any) -> Any:
        budget = self.limits.max_seq_len
        if _flat_size(seq, budget) > budget:
            raise SandboxRuntimeError(f"a list or tuple may hold at most {budget} items (nested items count)")
        return seq

    def _bounded_str(self, text: str) -> str:
        if len(text) > self.limits.max_str_len:
            raise SandboxRuntimeError(f"text longer than {self.limits.max_str_len} characters")
        return text

    def _bounded_int(self, value: Any) -> Any:
        if isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise SandboxRuntimeError(f"integer larger than {self.limits.max_int_bits} bits")
        if isinstance(value, complex):
            raise SandboxRuntimeError("the result is not a real number")
        return value

    def _subscript(self, node: ast.Subscript) -> Any:
        container = self.eval(node.value)
        index = self.eval(node.slice)
        if isinstance(container, Record):
            try:
                return container.get(index) if isinstance(index, str) else container.values()[index]
            except (KeyError, IndexError):
                raise SandboxRuntimeError(f"no field {index!r} in {container.name}; fields: "
                                          f"{', '.join(container.keys())}") from None
        if isinstance(container, (tuple, list)) and type(index) is int:
            try:
                return container[index]
            except IndexError:
                raise SandboxRuntimeError(f"index {index} is out of range for {len(container)} items") from None
        raise SandboxRuntimeError(f"cannot index {type_name(container)} with {type_name(index)}")

    def _joinedstr(self, node: ast.JoinedStr) -> str:
        parts: list[str] = []
        total = 0
        for value in node.values:
            if isinstance(value, ast.Constant):
                text = value.value
            else:
                field = self.eval(value.value)  # type: ignore[attr-defined]  # a FormattedValue part
                # a FormattedValue whose spec the validator allowed only as one constant
                spec = value.format_spec.values[0].value if value.format_spec else ""  # type: ignore[attr-defined]
                self.on_format(field)
                try:
                    text = format_value(field, spec)
                except (ValueError, TypeError) as exc:
                    raise SandboxRuntimeError(f"cannot format {type_name(field)} with {spec!r}: {exc}") from None
            total += len(text)
            if total > self.limits.max_str_len:
                raise SandboxRuntimeError(f"text longer than {self.limits.max_str_len} characters")
            parts.append(text)
        return "".join(parts)

    def _unaryop(self, node: ast.UnaryOp) -> Any:
        value = self.eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not _truth(value)
        if isinstance(value, Quantity):
            sign = -1 if isinstance(node.op, ast.USub) else 1
            return Quantity(sign * value.value, value.unit, value.name if sign > 0 else f"-{value.name}")
        if not _is_number(value):
            raise SandboxRuntimeError(f"unary minus/plus needs a number, got {type_name(value)}")
        return -value if isinstance(node.op, ast.USub) else +value

    def _boolop(self, node: ast.BoolOp) -> Any:
        is_and = isinstance(node.op, ast.And)
        value: Any = None
        for operand in node.values:
            value = self.eval(operand)
            if _truth(value) != is_and:
                return value
        return value

    def _ifexp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if _truth(self.eval(node.test)) else self.eval(node.orelse)

    def _compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = self.eval(comparator)
            if not self._compare_pair(op, left, right):
                return False
            left = right
        return True

    def _compare_pair(self, op: ast.cmpop, a: Any, b: Any) -> bool:
        if isinstance(op, (ast.In, ast.NotIn)):
            if isinstance(b, str) and isinstance(a, str):
                found = a in b
            elif isinstance(b, (tuple, list)):
                found = any(_plain(x) == _plain(a) for x in b)
            else:
                raise SandboxRuntimeError(f"'in' needs text in text or a value in a list, got {type_name(b)}")
            return found if isinstance(op, ast.In) else not found
        if isinstance(a, Quantity) and isinstance(b, Quantity) and a.unit != b.unit:
            raise SandboxRuntimeError(f"cannot compare {a.unit} with {b.unit}")
        a, b = _plain(a), _plain(b)
        if isinstance(op, (ast.Eq, ast.NotEq)):
            return _COMPARE[type(op)](a, b)
        if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return _COMPARE[type(op)](a, b)
        raise SandboxRuntimeError(f"cannot order {type_name(a)} and {type_name(b)}")

    def _binop(self, node: ast.BinOp) -> Any:
        a = self.eval(node.left)
        b = self.eval(node.right)
        op = type(node.op)
        if isinstance(a, Quantity) or isinstance(b, Quantity):
            return self._quantity_op(op, a, b)
        if _is_number(a) and _is_number(b):
            return self._number_op(op, a, b)
        if op is ast.Add and type(a) is type(b) and isinstance(a, (str, list, tuple)):
            if isinstance(a, str):
                if len(a) + len(b) > self.limits.max_str_len:
                    raise SandboxRuntimeError(f"text longer than {self.limits.max_str_len} characters")
                return a + b
            return self._bounded_seq(a + b)
        if op is ast.Mult and (isinstance(a, (str, list, tuple)) or isinstance(b, (str, list, tuple))):
            seq, count = (a, b) if isinstance(a, (str, list, tuple)) else (b, a)
            if type(count) is not int:
                raise SandboxRuntimeError(f"can only repeat {type_name(seq)} an integer number of times")
            count = max(count, 0)
            limit = self.limits.max_str_len if isinstance(seq, str) else self.limits.max_seq_len
            if len(seq) * count > limit:
                unit = "characters" if isinstance(seq, str) else "items"
                raise SandboxRuntimeError(f"the result would exceed {limit} {unit}")
            return seq * count if isinstance(seq, str) else self._bounded_seq(seq * count)
        raise SandboxRuntimeError(f"cannot apply {_SYMBOL[op]} to {type_name(a)} and {type_name(b)}")

    def _number_op(self, op: type, a: Any, b: Any) -> Any:
        if op is ast.Pow:
            self._check_power(a, b)
        elif op is ast.Mult and isinstance(a, int) and isinstance(b, int):
            if a.bit_length() + b.bit_length() > self.limits.max_int_bits + 1:
                raise SandboxRuntimeError(f"integer larger than {self.limits.max_int_bits} bits")
        try:
            result = _NUMBER_OPS[op](a, b)
        except ZeroDivisionError:
            raise SandboxRuntimeError("division by zero") from None
        except OverflowError:
            raise SandboxRuntimeError("numeric overflow") from None
        if isinstance(result, float) and not math.isfinite(result):  # 1e308 * 10: inf, no OverflowError
            raise SandboxRuntimeError("numeric overflow: the result is not a finite number")
        return self._bounded_int(result)

    def _check_power(self, base: Any, exponent: Any) -> None:
        if isinstance(exponent, int) and isinstance(base, int):
            if exponent > 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > self.limits.max_int_bits:
                raise SandboxRuntimeError(f"integer larger than {self.limits.max_int_bits} bits")
        elif abs(exponent) > 1e6 and base not in (0, 1, -1):
            raise SandboxRuntimeError("exponent too large")

    def _quantity_op(self, op: type, a: Any, b: Any) -> Any:
        """Arithmetic with units: sums of like units, scaling by plain numbers, ratios of like units."""
        qa, qb = isinstance(a, Quantity), isinstance(b, Quantity)
        if (qa and a.unit is None) or (qb and b.unit is None):  # unitless quantities are numbers
            return self._binop_values(op, a.value if qa else a, b.value if qb else b)
        if qa and qb:
            if a.unit != b.unit:
                raise SandboxRuntimeError(f"cannot combine {a.unit} and {b.unit}")
            if op in (ast.Add, ast.Sub):
                return Quantity(self._number_op(op, a.value, b.value), a.unit, f"{a.name} {_SYMBOL[op]} {b.name}")
            if op is ast.Div:
                return self._number_op(op, a.value, b.value)
        elif qa and _is_number(b) and op in (ast.Mult, ast.Div):
            return Quantity(self._number_op(op, a.value, b), a.unit, a.name)
        elif qb and _is_number(a) and op is ast.Mult:
            return Quantity(self._number_op(op, a, b.value), b.unit, b.name)
        raise SandboxRuntimeError(f"cannot apply {_SYMBOL[op]} to {type_name(a)} and {type_name(b)}"
                                  " (quantities add to like units and scale by numbers)")

    def _binop_values(self, op: type, a: Any, b: Any) -> Any:
        if _is_number(a) and _is_number(b):
            return self._number_op(op, a, b)
        raise SandboxRuntimeError(f"cannot apply {_SYMBOL[op]} to {type_name(a)} and {type_name(b)}")


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Quantity) else value


def _truth(value: Any) -> bool:
    value = _plain(value)
    if value is None or isinstance(value, (bool, int, float, str, tuple, list)):
        return bool(value)
    return True


def _flat_size(value: Any, budget: int) -> int:
    """Items of a (nested) sequence, nested sequences counting themselves too; stops past the budget."""
    if not isinstance(value, (tuple, list)):
        return 1
    total = 0
    for item in value:
        total += 1 + _flat_size(item, budget) if isinstance(item, (tuple, list)) else 1
        if total > budget:
            break
    return total


_HANDLERS: dict[type, Callable[[Evaluator, Any], Any]] = {
    ast.Constant: Evaluator._constant, ast.Name: Evaluator._name, ast.Call: Evaluator._call,
    ast.BinOp: Evaluator._binop, ast.UnaryOp: Evaluator._unaryop, ast.Compare: Evaluator._compare,
    ast.BoolOp: Evaluator._boolop, ast.IfExp: Evaluator._ifexp, ast.JoinedStr: Evaluator._joinedstr,
    ast.List: Evaluator._list, ast.Tuple: Evaluator._tuple, ast.Subscript: Evaluator._subscript,
}
