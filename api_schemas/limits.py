"""Request limits, time limits and reserved names: the one place they are stated.

The API schemas, the sandbox, the agent runtime, the service settings and the CLI all read these
constants, so what the door accepts is what the sandbox runs (tests/sandbox/test_limits_agree.py).
Plain Python, no pydantic: any package may import it.
"""
from __future__ import annotations

import keyword
import re

# ---- sizes of a request ---------------------------------------------------------------------
MAX_PROMPT_CHARS = 4000
# One sandbox step; an API or `voxagent exec` program runs as one step (exec: each step of it), so
# this is also the largest program the API accepts. <MOD> markers count (the sandbox measures the
# step without them, so a program that passes here always passes there).
MAX_CODE_CHARS = 4000
MAX_VOLUMES_PER_ANALYSIS = 8
MAX_SCAN_NAME_CHARS = 32
MAX_BATCH_ITEMS = 500

# ---- time limits (seconds), inner to outer ----------------------------------------------------
CALL_TIMEOUT_S = 300.0  # one library call in the sandbox (a vision call included)
AGENT_MAX_WALL_S = 300.0  # the agent's plan-execute-feedback loop of one job
JOB_TIMEOUT_S = 600.0  # every sandbox step of one job together
TASK_TIME_LIMIT_S = 900  # a worker task, hard (Celery kills it); outlasts the limits above

# ---- names ------------------------------------------------------------------------------------
# Every function of the sandbox's library (agent/functions/library.py). A scan becomes a variable of
# the program, so it may not shadow one; a test asserts this set equals the library's names.
LIBRARY_FUNCTIONS = frozenset({
    "asymmetry", "bbox", "brightest_component", "capabilities", "centroid", "change", "count_components", "crop",
    "depth", "difference", "dilate", "encode", "erode", "extents", "extreme_component", "fill_holes", "generate",
    "height", "hemisphere", "intensity_stats", "intersection", "keep", "largest_component", "mean_intensity",
    "output", "percent_change", "ratio", "read", "remove", "respond", "signal", "snr", "stop", "subtract",
    "threshold", "trend", "union", "volume", "width",
})
# Python keywords (True, False, None, if, for, ...) cannot be assigned in the sandbox's language.
RESERVED_SCAN_NAMES = LIBRARY_FUNCTIONS | frozenset(keyword.kwlist)
_SCAN_NAME = re.compile(rf"^[A-Za-z][A-Za-z0-9_]{{0,{MAX_SCAN_NAME_CHARS - 1}}}$")


def scan_name_problem(name: str, library: frozenset[str] | set[str] = frozenset()) -> str | None:
    """Why ``name`` cannot name a scan (None if it can). ``library``: extra function names of a
    sandbox whose registry has more than the default library."""
    if not isinstance(name, str) or not _SCAN_NAME.fullmatch(name):  # fullmatch: '$' lets "t1\n" through
        return (f"scan name {name!r} must be an identifier of at most {MAX_SCAN_NAME_CHARS} ASCII letters, "
                "digits and '_', starting with a letter")
    if name in RESERVED_SCAN_NAMES or name in library:
        kind = "a Python keyword" if keyword.iskeyword(name) else "a library function"
        return f"scan name {name!r} is {kind}; choose another name"
    return None


def blank_text_problem(field: str, value: str | None) -> str | None:
    """Why ``value`` cannot be a prompt or a program (None if it can): text of only whitespace
    passes a length check, yet the agent would answer it with whatever its prior favours (a
    lesion mask, in the issue that found it), so it is refused at the door instead."""
    if value is not None and not value.strip():
        hint = "; say what to do, in words" if field == "prompt" else ""
        return f"{field} is blank (only whitespace){hint}"
    return None


__all__ = ["AGENT_MAX_WALL_S", "CALL_TIMEOUT_S", "JOB_TIMEOUT_S", "LIBRARY_FUNCTIONS", "MAX_BATCH_ITEMS",
           "MAX_CODE_CHARS", "MAX_PROMPT_CHARS", "MAX_SCAN_NAME_CHARS", "MAX_VOLUMES_PER_ANALYSIS",
           "RESERVED_SCAN_NAMES", "TASK_TIME_LIMIT_S", "blank_text_problem", "scan_name_problem"]
