"""Synthesis speed: median seconds per case for a few kinds of case, one core, working resolution.

Run: `.venv/bin/python -m bench.synth`  (writes bench/results/synth.json)
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench.common import report, time_median  # noqa: E402 - after OMP_NUM_THREADS
from training.synth import CaseSpec, LesionSpec, ScanSpec, synthesize_case  # noqa: E402 - after OMP_NUM_THREADS
from training.synth.anatomy import load_anatomy  # noqa: E402 - after OMP_NUM_THREADS
from training.synth.fields import _noise_pool  # noqa: E402 - after OMP_NUM_THREADS

KINDS: dict[str, CaseSpec] = {
    "t1": CaseSpec(),
    "flair_lesions": CaseSpec(scans=(ScanSpec("flair", "FLAIR"),), lesions=LesionSpec(count=(1, 3))),
    "pre_post": CaseSpec(scans=(ScanSpec("t1", "T1"), ScanSpec("t1c", "T1C")), lesions=LesionSpec(count=(1, 2))),
    "dwi_adc": CaseSpec(scans=(ScanSpec("dwi", "DWI"), ScanSpec("adc", "ADC")), lesions=LesionSpec(count=(1, 1))),
    "longitudinal": CaseSpec(scans=(ScanSpec("a", "FLAIR", 0), ScanSpec("b", "FLAIR", 1)),
                             lesions=LesionSpec(count=(1, 2))),
}


def main() -> None:
    load_anatomy(2.0)
    _noise_pool()
    results: dict[str, float | int | str] = {}
    medians = []
    for name, spec in KINDS.items():
        seeds = iter(range(10_000))
        median, _ = time_median(lambda seeds=seeds, spec=spec: synthesize_case(next(seeds), spec), repeats=15, warmup=2)
        scans = len(spec.scans)
        results[f"{name}_case_s"] = round(median, 4)
        results[f"{name}_per_scan_s"] = round(median / scans, 4)
        medians.append(median)
    results["case_s"] = round(sorted(medians)[len(medians) // 2], 4)  # median over the kinds
    results["case_s_max"] = round(max(medians), 4)
    report("synth", results, goals={"case_s": "<= 0.3"})


if __name__ == "__main__":
    main()
