"""A small, deterministic seed corpus for training a tokenizer before the full task corpus exists.

The training package later supplies the real corpus (every task family's prompts, ground-truth code
and read values) to ``agent.tokenizer.train_tokenizer``; this one only has to cover the same kinds
of text so a tokenizer trained on it is usable for tests and benchmarks.
"""
from __future__ import annotations

import random
from collections.abc import Iterator

from agent.state import ScanInfo, initial_state_text

MODALITIES = ("T1", "T2", "FLAIR", "T1c", "DWI", "ADC", "CT", "SWI")
TARGETS = (
    "gray matter", "white matter", "left hippocampus", "right hippocampus", "brain", "ventricles",
    "lesion", "edema", "enhancing tissue", "thalamus", "caudate", "putamen", "cerebellum", "skull",
)
MEASURES = ("volume", "height", "width", "depth", "extents", "centroid", "count_components", "hemisphere")
UNITS = ("mL", "mm", "mm3", "%", "")
PROMPTS = (
    "What is the volume of the {t} in {s}?",
    "Segment the {t} on the {m} scan.",
    "How large is the {t}? Report it in mL.",
    "Is the {t} hyperintense on {s}?",
    "Compare the {t} between {s} and {s2}: did it grow?",
    "Which hemisphere is the {t} in?",
    "Measure the height and width of the {t}.",
    "Compute the asymmetry of the left and right hippocampus on {s}.",
    "How many separate {t} components are there?",
    "Give me the mean intensity of the {t} on the {m} image.",
)


def _scans(rng: random.Random) -> list[ScanInfo]:
    n = rng.randint(1, 3)
    names = rng.sample(["t1", "t2", "flair", "ct", "dwi", "adc", "t1c", "scan_a", "scan_b"], n)
    return [
        ScanInfo(
            name=name,
            modality=rng.choice(MODALITIES),
            date=f"20{rng.randint(10, 25):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            spacing=(rng.choice([0.5, 0.8, 1.0, 1.2]),) * 2 + (rng.choice([1.0, 3.0, 5.0, 6.5]),),
        )
        for name in names
    ]


def _code_step(rng: random.Random, scans: list[ScanInfo]) -> str:
    names = [s.name for s in scans]
    target = rng.choice(TARGETS)
    lines = [
        "e = encode(" + ", ".join(f"{n}<MOD>" for n in names) + ")",
        f'm = generate(e, {rng.choice(names)}<MOD>, "{target}")',
        f"v = {rng.choice(MEASURES)}(m)",
        "read(v)",
    ]
    extra = rng.choice([
        "read(e)",
        'output(m, "' + target.replace(" ", "_") + '")',
        f"r = ratio(v, {rng.randint(1, 999)}.{rng.randint(0, 9)})",
        f'respond(f"The {target} measures {{v}}.")',
        "stop()",
        f"d = dilate(m, {rng.randint(1, 5)})",
        f"s = signal({names[0]}, m, generate(e, {names[0]}<MOD>, \"white matter\"))",
    ])
    lines.append(extra)
    k = rng.randint(1, len(lines))
    return "\n".join(lines[:k]) + "\n"


def _value_text(rng: random.Random) -> str:
    unit = rng.choice(UNITS)
    value = f"{rng.uniform(0, 5000):.{rng.randint(0, 3)}f}"
    if rng.random() < 0.7:
        return f"{value} {unit}".strip()
    return rng.choice(["left", "right", "bilateral", "hyperintense", "hypointense", "isointense", "True", "False"])


def seed_corpus(n: int = 2000, seed: int = 0) -> Iterator[str]:
    """Deterministic mixture of initial states, code steps, read values and error lines."""
    rng = random.Random(seed)
    for _ in range(n):
        scans = _scans(rng)
        kind = rng.random()
        if kind < 0.3:
            t = rng.choice(TARGETS)
            s = scans[0].name
            prompt = rng.choice(PROMPTS).format(t=t, s=s, s2=scans[-1].name, m=scans[0].modality)
            yield initial_state_text(prompt, scans)
        elif kind < 0.8:
            yield _code_step(rng, scans)
        elif kind < 0.95:
            yield _value_text(rng) + "\n"
        else:
            yield rng.choice([
                "error: name 'x' is not defined\n",
                "error: generate() target must be one of the supported targets\n",
                "error: 2 <MOD> markers but 3 phi vectors\n",
                "error: syntax error at line 1\n",
            ])
