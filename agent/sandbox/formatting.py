"""Our own text formatting of values: f-string fields and read(). Never str.format on user templates.

Format specs are checked against a small allow-list (alignment, sign, width, precision, one of
f/e/g/d/%) before anything formats, and only numbers and strings ever reach Python's `format()`;
our own objects are rendered by the functions here, so no format spec can walk their attributes.
"""
from __future__ import annotations

import re
from typing import Any

from agent.functions.types import Encoding, ImageValue, Quantity, Record, number_text

FORMAT_SPEC = re.compile(r"^[<>^]?[+-]?(\d{0,3})(\.\d{1,2})?[fegd%]?$")


def spec_allowed(spec: str, max_width: int) -> bool:
    match = FORMAT_SPEC.match(spec)
    return bool(match) and (not match.group(1) or int(match.group(1)) <= max_width)


def format_value(value: Any, spec: str = "") -> str:
    """Text of a value for an f-string field (with an allow-listed spec) or for read()."""
    if isinstance(value, Quantity):
        if not spec:
            return value.text
        return value.render(format(value.value, spec))
    if isinstance(value, bool) or value is None:
        return format(str(value), spec) if spec else str(value)
    if isinstance(value, (int, float)):
        return format(value, spec) if spec else number_text(value)
    if isinstance(value, str):
        return format(value, spec) if spec else value
    if spec:
        raise ValueError(f"a format spec applies to numbers, quantities and text, not to {_kind(value)}")
    return describe(value)


def describe(value: Any) -> str:
    """The read() text of any value the environment can hold."""
    if isinstance(value, Record):
        return ", ".join(f"{k}={describe(v)}" for k, v in value.fields)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, ImageValue):
        vol = value.volume
        spacing = "x".join(f"{s:.2g}" for s in vol.spacing)
        if value.kind == "mask":
            return f"<mask {value.name}: {int(vol.array.sum())} voxels, {spacing} mm>"
        return f"<{value.kind} {value.name}: {'x'.join(map(str, vol.shape))}, {spacing} mm>"
    if isinstance(value, Encoding):
        return f"<encoding of {', '.join(s.name for s in value.scans)}>"
    return format_value(value)


def _kind(value: Any) -> str:
    from agent.functions.types import type_name

    return type_name(value)
