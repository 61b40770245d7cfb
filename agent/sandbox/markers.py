"""`<MOD>` markers: where the agent put a latent instruction (phi) for a volume argument.

The rule is textual so it does not depend on how the tokenizer split the code: every occurrence of
``<MOD>`` is removed together with the whitespace right before it, and its position in the stripped
code is remembered. A marker belongs to the call argument whose source text ends exactly there.
Positions are (line, UTF-8 byte column) because that is how `ast` reports node ends.
"""
from __future__ import annotations

import re

MOD_TOKEN = "<MOD>"
_MARKER = re.compile(r"\s*<MOD>")

Position = tuple[int, int]


def strip_mod_markers(code: str) -> tuple[str, list[Position]]:
    """Code without markers, and each marker's (line, byte column) in it, in textual order."""
    if MOD_TOKEN not in code:
        return code, []
    pieces: list[str] = []
    positions: list[Position] = []
    last = 0
    kept = 0  # characters of stripped code emitted so far
    for match in _MARKER.finditer(code):
        piece = code[last:match.start()]
        pieces.append(piece)
        kept += len(piece)
        positions.append(kept)  # type: ignore[arg-type]  # an offset now, a Position below
        last = match.end()
    pieces.append(code[last:])
    stripped = "".join(pieces)
    return stripped, [_line_col(stripped, offset) for offset in positions]  # type: ignore[arg-type]  # offsets


def _line_col(text: str, offset: int) -> Position:
    line_start = text.rfind("\n", 0, offset) + 1
    line = text.count("\n", 0, offset) + 1
    return line, len(text[line_start:offset].encode("utf-8"))
