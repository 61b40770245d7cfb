"""The function library as data: name, signature text, one-line description, checks, callable.

The same records drive three things: the interpreter (which names may be called and how arguments
bind and are type-checked), `voxagent functions` and the API listing, and the agent's prompt.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.functions.types import type_name
from agent.sandbox.errors import SandboxRuntimeError

REQUIRED: Any = object()  # marks a parameter without default


@dataclass(frozen=True)
class ArgType:
    """An accepted argument type: its short label (signatures), the Python classes, and the phrase for errors."""

    label: str
    classes: tuple[type, ...]
    exclude: tuple[type, ...] = ()
    phrase: str = ""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.classes) and not isinstance(value, self.exclude)


@dataclass(frozen=True)
class Param:
    name: str
    type: ArgType
    default: Any = REQUIRED
    variadic: bool = False  # *scans: takes every remaining positional argument

    def text(self) -> str:
        if self.variadic:
            return f"*{self.name}: {self.type.label}"
        if self.default is REQUIRED:
            return f"{self.name}: {self.type.label}"
        return f"{self.name}: {self.type.label} = {self.default!r}"


@dataclass(frozen=True)
class LibraryFunction:
    """One function the agent may call. `fn(ctx, *args)` receives arguments in parameter order."""

    name: str
    params: tuple[Param, ...]
    returns: str
    description: str
    fn: Callable[..., Any]

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(p.text() for p in self.params)}) -> {self.returns}"

    def bind(self, args: list[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        """Match call arguments to parameters and check their types; errors are for the agent."""
        unknown = set(kwargs) - {p.name for p in self.params}
        if unknown:
            raise SandboxRuntimeError(f"{self.name}() has no argument '{sorted(unknown)[0]}'; "
                                      f"signature: {self.signature}")
        bound: list[Any] = []
        positional = list(args)
        for param in self.params:
            if param.variadic:
                if kwargs.get(param.name) is not None:
                    raise SandboxRuntimeError(f"{self.name}(): pass {param.name} positionally")
                values, positional = positional, []
                if not values:
                    raise SandboxRuntimeError(f"{self.name}() needs at least one argument ({param.type.label})")
                for i, value in enumerate(values):
                    self._check(param, value, f"{param.name}[{i}]")
                bound.extend(values)
                continue
            if positional:
                value = positional.pop(0)
                if param.name in kwargs:
                    raise SandboxRuntimeError(f"{self.name}() got '{param.name}' twice")
            elif param.name in kwargs:
                value = kwargs[param.name]
            elif param.default is not REQUIRED:
                value = param.default
            else:
                raise SandboxRuntimeError(f"{self.name}() is missing '{param.name}'; signature: {self.signature}")
            self._check(param, value, param.name)
            bound.append(value)
        if positional:
            raise SandboxRuntimeError(f"{self.name}() takes {len(self.params)} argument(s), got {len(args)}; "
                                      f"signature: {self.signature}")
        return bound

    def _check(self, param: Param, value: Any, label: str) -> None:
        if not param.type.accepts(value):
            raise SandboxRuntimeError(f"{self.name}(): '{label}' must be {param.type.phrase or param.type.label}, "
                                      f"got {type_name(value)}")

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "signature": self.signature, "description": self.description}


class Registry(Mapping[str, LibraryFunction]):
    """Name -> function, in the order the functions were added (the listing order)."""

    def __init__(self, functions: list[LibraryFunction]) -> None:
        self._functions = {f.name: f for f in functions}
        if len(self._functions) != len(functions):
            raise ValueError("duplicate function names in the library")

    def __getitem__(self, name: str) -> LibraryFunction:
        return self._functions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)

    def describe(self) -> list[dict[str, str]]:
        return [f.describe() for f in self._functions.values()]
