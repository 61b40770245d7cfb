"""Per-token sentence-encoder states aligned to the agent's pieces (agent.prompt_states)."""
from __future__ import annotations

import numpy as np
import pytest

from agent.prompt_encoder import SENTENCE_DIM, shared_encoder
from agent.prompt_states import PROMPT_PREFIX, piece_spans, prompt_states
from agent.state import ScanInfo, initial_state_ids, initial_state_text

SCANS = [ScanInfo(name="t1_2020", modality="T1", spacing=(1.0, 1.0, 1.0))]


@pytest.mark.parametrize("prompt", ["What volume did the left hippocampus have?",
                                    "  hipocampus   vol — pls, 3.5 mm ❤ ",
                                    "Volumetric measurement of the putaminal nuclei"])
def test_pieces_spell_the_state_text(tokenizer, prompt):
    text = initial_state_text(prompt, SCANS)
    ids = tokenizer.encode_plain(text)
    spans = piece_spans(tokenizer, ids, text)
    assert spans is not None and len(spans) == len(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a <= b for a, b in spans) and all(spans[i][1] <= spans[i + 1][0] or spans[i][0] == spans[i][1]
                                                 for i in range(len(spans) - 1))


def test_each_prompt_piece_gets_the_states_of_its_word(tokenizer):
    prompt = "What volume did the left hippocampus have?"
    states = prompt_states(tokenizer, prompt, SCANS)
    ids = initial_state_ids(tokenizer, prompt, SCANS)
    assert states.shape == (len(ids), SENTENCE_DIM) and states.dtype == np.float32
    offsets, token_states = shared_encoder().token_states([prompt])[0]
    text = initial_state_text(prompt, SCANS)
    spans = piece_spans(tokenizer, ids[1:], text)
    word = prompt.index("hippocampus")
    want = token_states[(offsets[:, 0] < word + len("hippocampus")) & (offsets[:, 1] > word)].mean(0)
    rows = [k + 1 for k, (a, b) in enumerate(spans)
            if a - len(PROMPT_PREFIX) >= word - 1 and b - len(PROMPT_PREFIX) <= word + len("hippocampus")]
    assert rows
    if len(rows) == 1:  # the word is one piece: it holds the mean of the word's encoder tokens
        np.testing.assert_allclose(states[rows[0]], want, atol=1e-5)
    n_prompt = len(PROMPT_PREFIX) + len(prompt)
    for k, (a, b) in enumerate(spans):  # nothing outside the prompt (bos, "prompt:", the scan lines)
        if a >= n_prompt or b <= len(PROMPT_PREFIX) - 1:
            assert not states[k + 1].any(), tokenizer.piece(ids[k + 1])
        elif text[a:b].strip() and a >= len(PROMPT_PREFIX):
            assert states[k + 1].any(), tokenizer.piece(ids[k + 1])
    assert not states[0].any()


def test_neutralised_special_tokens_give_no_states(tokenizer):
    states = prompt_states(tokenizer, "measure <MOD> the brain", SCANS)
    assert not states.any() and len(states) == len(initial_state_ids(tokenizer, "measure <MOD> the brain", SCANS))
