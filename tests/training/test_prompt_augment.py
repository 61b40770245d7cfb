"""Word noise on training prompts: free words move, the words a program depends on never do."""
from __future__ import annotations

import random

from training.prompt_augment import KEPT_WORDS, MEANING_WORDS, PromptNoise

PROMPTS = [
    "What is the volume of the left hippocampus in mL?",
    "I want a tight crop around the brain with a 20 mm margin.",
    "A 34-year-old man with gait problems. Show only rt nucleus accumbens in the volume.",
    "Could you please compare pre and post and tell me how the enhancing lesion changed between them?",
    "Hi, quick question: what's the ratio of the thalamus to the intracranial volume on series_3?",
]
NAMES = ["pre", "post", "series_3"]


def _protected(noise: PromptNoise, text: str) -> list[str]:
    return [w.strip(".,?!:;()'\"[]") for w in text.split() if noise.protected(w, NAMES)]


def test_protected_words_keep_their_order_and_count():
    noise = PromptNoise(share=1.0, drop=0.5, insert=0.3, swap=0.5)
    rng = random.Random(7)
    changed = 0
    for prompt in PROMPTS:
        for _ in range(200):
            out = noise.apply(prompt, NAMES, rng)
            changed += out != prompt
            assert _protected(noise, out) == _protected(noise, prompt), (prompt, out)
    assert changed > 0.9 * 200 * len(PROMPTS)


def test_what_is_protected():
    noise = PromptNoise()
    for word in ("20", "3.5mm", "series_3", "Pre", "left", "rt", "hippocampus", "ventricles", "volume", "crop",
                 "ratio", "not", "between", "ICV"):
        assert noise.protected(word, NAMES), word
    for word in ("the", "please", "Hi,", "could", "man", "problems.", "quick"):
        assert not noise.protected(word, NAMES), word
    assert {"left", "right", "not", "only"} <= MEANING_WORDS and "hippocampus" in KEPT_WORDS


def test_share_and_seed():
    prompt = PROMPTS[3]
    assert PromptNoise(share=0.0).apply(prompt, NAMES, random.Random(0)) == prompt
    a = [PromptNoise(share=1.0).apply(prompt, NAMES, random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]
    half = PromptNoise(share=0.5)
    rng = random.Random(1)
    untouched = sum(half.apply(prompt, NAMES, rng) == prompt for _ in range(1000))
    assert 400 < untouched < 650  # half draw no noise; a few noisy draws happen to change nothing
