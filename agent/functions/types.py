"""The values agent code handles: scans, masks, encodings, quantities with units, named records.

They are plain holders with no methods the agent could reach (the language subset has no attribute
access); their text forms are short and stable because `read()` turns them into the agent's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxel_ops import Volume

# Decimals shown for a quantity in its text form, per unit; unitless floats get three.
UNIT_DECIMALS = {"mL": 1, "mm": 1, "mm3": 1, "%": 1, "HU": 1, "cm": 1}
UNITLESS_DECIMALS = 3
MAX_NAME_CHARS = 160  # derived names (e.g. "union of a and b") are cut here so they cannot grow without bound


def short_name(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 3] + "..."


def number_text(value: float | int, unit: str | None = None) -> str:
    """Stable short text of a number: integers as is, floats with a unit-dependent precision."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    decimals = UNIT_DECIMALS.get(unit or "", UNITLESS_DECIMALS) if unit else UNITLESS_DECIMALS
    return f"{value:.{decimals}f}"


@dataclass(frozen=True, eq=False)
class Quantity:
    """A number with its unit and what it measures, e.g. Quantity(1234.5, "mL", "lesion volume")."""

    value: float | int
    unit: str | None
    name: str
    # what the number's sign or size means, in words shown after it ("left larger"); no digits, so
    # the numbers of an answer stay the measured values
    meaning: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", short_name(self.name))

    @property
    def text(self) -> str:
        return self.render(number_text(self.value, self.unit))

    def render(self, number: str) -> str:
        """``number`` (this value already formatted) with the unit and the meaning."""
        out = f"{number} {self.unit}" if self.unit else number
        return f"{out} ({self.meaning})" if self.meaning else out


def asymmetry_meaning(index: float) -> str:
    """The sign of an asymmetry index 2(L - R)/(L + R) in words, judged at the precision it is shown."""
    shown = float(number_text(float(index)))
    return "left larger" if shown > 0 else "right larger" if shown < 0 else "no asymmetry"


@dataclass(frozen=True, eq=False)
class Record:
    """Several named results of one measurement (extents, statistics); indexable by field name."""

    name: str
    fields: tuple[tuple[str, Any], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", short_name(self.name))

    def get(self, key: str) -> Any:
        for field_name, value in self.fields:
            if field_name == key:
                return value
        raise KeyError(key)

    def __getitem__(self, key: str | int) -> Any:  # for Python callers; agent code is indexed by the evaluator
        return self.values()[key] if isinstance(key, int) else self.get(key)

    def keys(self) -> list[str]:
        return [k for k, _ in self.fields]

    def values(self) -> list[Any]:
        return [v for _, v in self.fields]


@dataclass(eq=False)
class ImageValue:
    """A volume the agent can name. `source` is the input scan whose grid it lies on (if any)."""

    volume: Volume
    name: str
    source: str | None = None

    def __post_init__(self) -> None:
        self.name = short_name(self.name)

    @property
    def kind(self) -> str:
        return "image"


@dataclass(eq=False)
class Scan(ImageValue):
    """An intensity image: an input scan or an image derived from one (crop, keep, remove)."""

    @property
    def kind(self) -> str:
        return "scan"


@dataclass(eq=False)
class Mask(ImageValue):
    """A binary (0/1, uint8) segmentation."""

    probabilities: np.ndarray | None = field(default=None, repr=False)  # generator output, if any

    def __post_init__(self) -> None:
        super().__post_init__()
        arr = self.volume.array
        if arr.dtype != np.uint8:
            self.volume = self.volume.with_array((arr > 0.5).astype(np.uint8) if arr.dtype.kind == "f"
                                                 else (arr != 0).astype(np.uint8))

    @property
    def kind(self) -> str:
        return "mask"


@dataclass(eq=False)
class Encoding:
    """A handle to encoded volumes held by the vision service, and which scans went in (in order)."""

    handle: Any  # vision.engine.EncodingHandle
    scans: tuple[ImageValue, ...]

    def stream_of(self, image: ImageValue) -> int | None:
        for index, scan in enumerate(self.scans):
            if scan is image:
                return index
        return None


def type_name(value: Any) -> str:
    """The name of a value's type as the agent knows it (used in error feedback)."""
    if isinstance(value, Mask):
        return "mask"
    if isinstance(value, Scan):
        return "scan"
    if isinstance(value, ImageValue):
        return "image"
    if isinstance(value, Encoding):
        return "encoding"
    if isinstance(value, Quantity):
        return "quantity"
    if isinstance(value, Record):
        return "record"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "None"
    if isinstance(value, tuple):
        return "tuple"
    if isinstance(value, list):
        return "list"
    return "value"
