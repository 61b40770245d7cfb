"""Neutral scan names for a share of training tasks, so the agent learns to copy names from the scan list.

Every family names its scans after their sequence (``t1``, ``flair``, ``ct`` ...), so a model can
get the name right from the prompt's wording alone and never learn to read the ``scan <name>:``
lines of its initial state. A 2-hour run did exactly that and then wrote ``encode(t2<MOD>)`` for the
real MNI T1 whatever the scan was called; users name their uploads as they like (``t1=...``,
``img=...``, ``series_3=...``). Renaming after the task is built keeps every family's program and
ground truth as written: only the scan identifiers change, in the case and in the code.
"""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from training.synth import Case
from training.tasks.program import TaskSample

NEUTRAL_NAMES = ("img", "image", "vol", "volume_a", "volume_b", "series_1", "series_2", "series_3", "input_1",
                 "input_2", "mprage", "acq_1", "acq_2", "exam", "study", "seq_a", "seq_b", "seq_c", "s1", "s2",
                 "x1", "x2", "data", "upload", "nifti")

_STRING = re.compile(r"""[fFrRbB]{0,2}("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""")


def _identifiers(names) -> re.Pattern[str]:
    """Any of ``names`` as a whole identifier, not an attribute after a dot."""
    return re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, names)) + r")(?!\w)")


def _rename_code(code: str, mapping: dict[str, str]) -> str:
    """Rename identifiers outside string literals (attribute names after a dot are left alone)."""
    pattern = _identifiers(mapping)
    out, last = [], 0
    for m in _STRING.finditer(code):
        out.append(pattern.sub(lambda n: mapping[n.group(1)], code[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(pattern.sub(lambda n: mapping[n.group(1)], code[last:]))
    return "".join(out)


def rename_scans(sample: TaskSample, case: Case, rng: np.random.Generator) -> tuple[TaskSample, Case]:
    """The same task with every scan given a distinct neutral name not already used in its code."""
    code = "\n".join(sample.steps)
    used = set(_identifiers(NEUTRAL_NAMES).findall(code))
    free = [n for n in NEUTRAL_NAMES if n not in used]
    names = list(case.scans)
    picked = rng.choice(len(free), size=len(names), replace=False)
    mapping = {old: free[int(i)] for old, i in zip(names, picked)}
    steps = [_rename_code(step, mapping) for step in sample.steps]
    spec = replace(case.spec, scans=tuple(replace(s, name=mapping.get(s.name, s.name)) for s in case.spec.scans))
    scans = {mapping[k]: v.with_array(v.array, source_name=mapping[k]) for k, v in case.scans.items()}
    labels = {mapping[k]: v.with_array(v.array, source_name=mapping[k]) for k, v in case.labels.items()}
    lesions = [replace(t, volume_ml={mapping.get(k, k): v for k, v in t.volume_ml.items()},
                       centroid_mm={mapping.get(k, k): v for k, v in t.centroid_mm.items()}) for t in case.lesions]
    new_case = replace(case, spec=spec, scans=scans, labels=labels, lesions=lesions)
    new_sample = replace(sample, steps=steps,
                         generate_calls=[(mapping.get(s, s), t) for s, t in sample.generate_calls])
    return new_sample, new_case
