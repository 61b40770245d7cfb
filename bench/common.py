"""Shared benchmark plumbing: timing medians, machine description, table + flat JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Describe where the numbers were taken, so medians from different machines are not compared."""
    info: dict[str, Any] = {
        "machine_cpu_count": os.cpu_count(),
        "machine_platform": platform.platform(),
        "machine_python": platform.python_version(),
    }
    try:
        import torch

        info["machine_torch"] = torch.__version__
        info["machine_torch_threads"] = torch.get_num_threads()
        info["machine_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def time_median(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def report(area: str, results: dict[str, float | int | str], goals: dict[str, str] | None = None) -> Path:
    """Print a markdown table and write ``bench/results/<area>.json`` (flat keys + machine info)."""
    goals = goals or {}
    rows = ["| key | value | goal |", "|---|---|---|"]
    for key, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        rows.append(f"| {key} | {shown} | {goals.get(key, '')} |")
    table = "\n".join(rows)
    print(f"\n## bench.{area}\n\n{table}\n")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{area}.json"
    out.write_text(json.dumps({**results, **machine()}, indent=2, sort_keys=True))
    (RESULTS_DIR / f"{area}.md").write_text(f"## bench.{area}\n\n{table}\n")
    return out
