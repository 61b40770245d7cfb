"""Training-template requests for the intent index, drawn fresh when a run keeps no episode pool.

Why: ``agent.intent_check`` needs (family, request, program) triples from the training templates,
and an exported run used to take them from its episode pool (``episodes.pt``). The pool is never
committed, so an agent exported from a fresh clone shipped without an index and its intent check
silently did nothing. Drawing the triples again costs a case per few dozen requests: a family's
requests vary in template, wording and target while the case is shared, as in
``training.tasks.sample_task_variants``.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from training.synth.label_case import LabelCaseSource, default_source
from training.tasks import FAMILIES, case_for

SEED_BASE = 7_000_000  # apart from the trainer's seeds (0..) and the held-out ones (10**9..)


def template_requests(per_family: int = 150, per_case: int = 50, seed: int = SEED_BASE,
                      families: Iterable[str] | None = None, source: LabelCaseSource | None = None,
                      progress: bool = True) -> Iterator[tuple[str, str, list[str]]]:
    """``(family, prompt, program steps)`` for ``per_family`` requests of every family (or of
    ``families``), from the training templates only (``Family.template_indices("train")``),
    ``per_case`` per synthesized case; anatomy from ``source`` (default: ``default_source()``)."""
    names = sorted(FAMILIES) if families is None else list(families)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)}")
    source = source or default_source()
    cases_per_family = -(-per_family // per_case)
    bar = tqdm(total=len(names) * cases_per_family, desc="intent requests", disable=not progress)
    order = sorted(FAMILIES)  # a family's seeds depend on its place in the full list, not in ``families``
    for name in names:
        fam = FAMILIES[name]
        f = order.index(name)
        allowed = fam.template_indices("train")
        made = 0
        for c in range(cases_per_family):
            case_seed = seed + 1000 * f + c
            rng = np.random.default_rng([case_seed, zlib.crc32(name.encode())])
            draw = fam.draw_v2(rng)
            case = case_for(draw, case_seed, source)
            for j in range(min(per_case, per_family - made)):
                r = np.random.default_rng([case_seed, zlib.crc32(b"intent"), j])
                ti = int(allowed[int(r.integers(len(allowed)))])
                sample = fam.build(case, draw, r, ti)
                made += 1
                yield name, sample.prompt, list(sample.steps)
            bar.update(1)
    bar.close()
